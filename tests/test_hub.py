"""Weights on the Hub, proven against a Hub-protocol server on 127.0.0.1 with the real huggingface_hub client:
push with the push command, load with ``pretrained=True`` and ``hf-hub:``, offline from the cache, and every
error a user meets. huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported, so each
client runs in a fresh process, as a user's would."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import timm
import yaml
from huggingface_hub import HfApi
from safetensors.torch import save_file

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.models._pretrained_tags import PUBLISHED, STAGED, hub_repo_id
from timm_mlit.models.mlit import TAGS
from timm_mlit.testing.local_hub import LocalHubServer
from timm_mlit.models.mlit import default_cfgs

ROOT = Path(__file__).resolve().parents[1]
TOKEN = 'hf_local_test_token'


@pytest.fixture
def hub():
    with LocalHubServer(token=TOKEN) as server:
        yield server


def _client(hub, home, code, offline=False, token=True):
    """Run ``code`` in a fresh Python with huggingface_hub pointed at the local server (or offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY='1')
    if token:
        env['HF_TOKEN'] = TOKEN
    if offline:
        env['HF_HUB_OFFLINE'] = '1'
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=ROOT)


def _train_py_run(folder: Path, model_name='mlit_xxs', num_classes=10, top1=(41.5, 57.25)) -> Path:
    """A folder as timm's train.py leaves it: model_best.pth.tar, args.yaml, summary.csv."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=num_classes)
    torch.save({'epoch': 1, 'arch': model_name, 'state_dict': model.state_dict()}, folder / 'model_best.pth.tar')
    (folder / 'args.yaml').write_text(yaml.safe_dump({
        'model': model_name, 'dataset': 'torch/cifar10', 'val_split': 'validation', 'epochs': 2, 'batch_size': 256,
        'opt': 'adamw', 'lr_base': 0.001, 'lr_base_scale': 'linear', 'weight_decay': 0.05, 'aa': 'cifar10',
        'model_ema': False}))
    with open(folder / 'summary.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'])
        for epoch, t1 in enumerate(top1):
            w.writerow([epoch, 2.0, 1.9, t1, 90.0 + epoch, 0.001])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / 'expected.safetensors'))
    return folder


def _push(hub, home, args, token=True):
    code = f'import sys; from timm_mlit.hub.push import main; main({args!r})'
    return _client(hub, home, code, token=token)


COMPARE = '''
import sys, torch, timm, timm_mlit
from safetensors.torch import load_file
from timm_mlit.testing.tag_states import tag_states
expected = load_file({expected!r})
with tag_states(published={published!r}):  # the package as it is once the tag is published (PUBLISHED)
    assert timm.is_model_pretrained('mlit_xxs.c10') == bool({published!r})
    for how in {hows!r}:
        model = timm.create_model(how, pretrained=True)
        state = model.state_dict()
        assert set(state) == set(expected), how
        assert all(torch.equal(state[k], expected[k]) for k in expected), how
        print('identical', how)
'''


def test_push_then_load_bit_for_bit_online_and_offline(hub, tmp_path):
    run = _train_py_run(tmp_path / 'run')
    repo = hub_repo_id('mlit_xxs', 'c10')  # the tag's own repo id: pretrained=True finds it
    home = tmp_path / 'hf_home'
    result = _push(hub, home, ['--model', 'mlit_xxs.c10', '--checkpoint', str(run / 'model_best.pth.tar'),
                               '--repo-id', repo, '--card-out', str(tmp_path / 'cards'), '--off-recipe'])
    assert result.returncode == 0, result.stderr
    files = hub.files(repo)
    assert set(files) == {'model.safetensors', 'config.json', 'README.md'}
    config = json.loads(files['config.json'])
    assert config['architecture'] == 'mlit_xxs' and config['num_classes'] == 10
    assert files['README.md'].decode() == (tmp_path / 'cards' / 'mlit_xxs.c10.md').read_text()

    code = COMPARE.format(expected=str(run / 'expected.safetensors'), hows=['mlit_xxs.c10', f'hf-hub:{repo}'],
                          published=['mlit_xxs.c10'])
    online = _client(hub, home, code)
    assert online.returncode == 0, online.stderr
    assert online.stdout.count('identical') == 2
    hub.stop()  # nothing to talk to any more: the cache alone must do
    offline = _client(hub, home, code, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.count('identical') == 2


def test_the_card_states_what_the_run_measured(hub, tmp_path):
    run = _train_py_run(tmp_path / 'run', top1=(30.0, 45.5, 44.0))
    out = tmp_path / 'files'
    result = _push(hub, tmp_path / 'home', ['--model', 'mlit_xxs.c10', '--checkpoint',
                                            str(run / 'model_best.pth.tar'), '--repo-id', 'me/x', '--dry-run', str(out),
                                            '--off-recipe'])
    assert result.returncode == 0, result.stderr
    card = (out / 'README.md').read_text()
    meta = yaml.safe_load(re.match(r'^---\n(.*?)\n---', card, re.S)[1])
    cfg = default_cfgs['mlit_xxs'].cfgs['c10']
    assert meta['library_name'] == 'timm' and meta['license'] == cfg.license
    assert meta['datasets'] == ['uoft-cs/cifar10'] and meta['pipeline_tag'] == 'image-classification'
    metrics = meta['model-index'][0]['results'][0]['metrics']
    assert metrics[0]['value'] == 45.5 and metrics[1]['value'] == 91.0  # the best epoch of summary.csv
    assert "timm.create_model('hf-hub:me/x', pretrained=True)" in card and 'import timm_mlit' in card
    assert '**Parameters:** 652,463 (0.65M), 10-class head' in card  # 651,373 + a 108 x 10 head
    assert '**MACs per image:** 131.0M' in card and '| aa | cifar10 |' in card and '3 epochs' in card
    assert 'The paper reports 80.78% top-1' in card  # Table 8, mLiT-XXS from scratch on CIFAR-10


def test_push_without_a_token_is_refused(hub, tmp_path):
    run = _train_py_run(tmp_path / 'run')
    result = _push(hub, tmp_path / 'home', ['--model', 'mlit_xxs.c10', '--checkpoint',
                                            str(run / 'model_best.pth.tar'), '--repo-id', 'me/m', '--off-recipe'],
                   token=False)
    assert result.returncode != 0 and '401' in result.stderr
    assert not hub.repos


def test_encoder_push_and_load_with_a_new_head(hub, tmp_path, image_folder):
    from timm_mlit.mae.pretrain import main as pretrain
    run = pretrain(['--model', 'mlit_xxs', '--dataset', '', '--workers', '0', '--device', 'cpu', '--no-progress',
                    '--data-dir', str(image_folder), '--batch-size', '32', '--epochs', '1',
                    '--output', str(tmp_path), '--experiment', 'mae', '--recon-interval', '9'])
    repo = hub_repo_id('mlit_xxs', 'mae_c100')
    result = _push(hub, tmp_path / 'home', ['--model', 'mlit_xxs.mae_c100', '--checkpoint',
                                            str(run / 'encoder.safetensors'), '--repo-id', repo])
    assert result.returncode == 0, result.stderr
    assert json.loads(hub.files(repo)['config.json'])['num_classes'] == 0
    code = (f"import torch, timm, timm_mlit\nfrom safetensors.torch import load_file\n"
            f"enc = load_file({str(run / 'encoder.safetensors')!r})\n"
            f"m = timm.create_model('hf-hub:{repo}', pretrained=True, num_classes=100)\n"
            f"assert m.head.out_features == 100\n"
            f"assert all(torch.equal(m.state_dict()[k], v) for k, v in enc.items())\nprint('ok')")
    loaded = _client(hub, tmp_path / 'home', code)
    assert loaded.returncode == 0 and 'ok' in loaded.stdout, loaded.stderr


def _upload(hub, repo, files):
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo(repo, exist_ok=True)
    from huggingface_hub import CommitOperationAdd
    api.create_commit(repo, [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()],
                      commit_message='test')


def _config(arch='mlit_xxs', num_classes=10):
    return json.dumps({'architecture': arch, 'num_classes': num_classes, 'pretrained_cfg': {
        'input_size': [3, 36, 36], 'mean': [0.5] * 3, 'std': [0.5] * 3, 'num_classes': num_classes,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'first_conv': 'patch_embed.proj', 'classifier': 'head'}}).encode()


def _weights(arch, tmp_path, num_classes=10):
    path = tmp_path / f'{arch}.safetensors'
    save_file({k: v.contiguous() for k, v in timm.create_model(arch, num_classes=num_classes).state_dict().items()},
              str(path))
    return path.read_bytes()


LOAD = "import timm, timm_mlit\ntimm.create_model({name!r}, pretrained=True{extra})"
# the same with the package's tag states as they are once ``published`` is in PUBLISHED
LOAD_PUBLISHED = ("import timm, timm_mlit\nfrom timm_mlit.testing.tag_states import tag_states\n"
                  "with tag_states(published={published!r}):\n    timm.create_model({name!r}, pretrained=True)")


@pytest.mark.parametrize('case', ['missing_repo', 'missing_file', 'truncated', 'other_architecture',
                                  'unpublished', 'offline_uncached'])
def test_load_errors_name_the_repo_and_the_fix(hub, tmp_path, case):
    name, extra, offline = 'hf-hub:me/model', '', False
    if case == 'missing_repo':
        name, extra = 'mlit_xxs', ", pretrained_cfg_overlay=dict(hf_hub_id='me/nothing-here')"
        expect = [r'Hub repo me/nothing-here .* does not exist', 'HF_ENDPOINT']
    elif case == 'missing_file':
        _upload(hub, 'me/model', {'config.json': _config()})
        expect = [r'Hub repo me/model .* has no weights file for mlit_xxs', 'push_to_hub.py']
    elif case == 'truncated':
        _upload(hub, 'me/model', {'config.json': _config(), 'model.safetensors': _weights('mlit_xxs', tmp_path)[:5000]})
        expect = [r'The weights file of mlit_xxs from Hub repo me/model .* is corrupt or truncated', 'Delete .*models--me--model']
    elif case == 'other_architecture':
        _upload(hub, 'me/model', {'config.json': _config(), 'model.safetensors': _weights('mlit_s', tmp_path)})
        expect = [r'Hub repo me/model .* does not hold mlit_xxs weights', 'embed_dim=144 and 15 blocks']
    elif case == 'unpublished':
        name = 'mlit_xxs.svhn'
        expect = ['No weights exist for mlit_xxs.svhn', 'pretrained=False', 'mlit-config table6_scratch_svhn',
                  'push_to_hub.py']
    else:  # a published tag, offline and never downloaded
        name, offline = 'mlit_xxs.c100', True
        expect = ['mlit_xxs.c100 .* not in the local cache', 'HF_HUB_OFFLINE']
    code = LOAD_PUBLISHED.format(name=name, published=[name]) if offline else LOAD.format(name=name, extra=extra)
    result = _client(hub, tmp_path / 'home', code, offline=offline)
    assert result.returncode != 0
    assert 'PretrainedWeightsError' in result.stderr, result.stderr[-2000:]
    message = result.stderr[result.stderr.index('PretrainedWeightsError'):]
    for pattern in expect:
        assert re.search(pattern, message, re.S), (pattern, message)


def test_missing_repo_by_hf_hub_name_names_the_repo(hub, tmp_path):
    """timm resolves hf-hub: names before the model family is reached: huggingface_hub's own error, which names
    the repo and the fix."""
    result = _client(hub, tmp_path / 'home', LOAD.format(name='hf-hub:me/absent', extra=''))
    assert result.returncode != 0
    message = result.stderr[result.stderr.index('RepositoryNotFoundError:'):]
    assert 'me/absent' in message and 'make sure you specified the correct `repo_id`' in message


def test_published_tags_cfgs_and_cards_agree():
    """Every published model.tag has a card in hub_cards/ and every card is of a published tag; the card's repo,
    licence and metrics are the cfg's and the run's."""
    cards = {p.stem: p.read_text() for p in (ROOT / 'hub_cards').glob('*.md') if p.name != 'README.md'}
    assert set(cards) == set(PUBLISHED)
    for name, card in cards.items():
        model, tag = name.split('.', 1)
        cfg = default_cfgs[model].cfgs[tag]
        meta = yaml.safe_load(re.match(r'^---\n(.*?)\n---', card, re.S)[1])
        assert f"hf-hub:{cfg.hf_hub_id}'" in card and cfg.hf_hub_id == hub_repo_id(model, tag)
        assert meta['license'] == cfg.license and meta['library_name'] == 'timm'
        if TAGS[tag].num_classes:
            assert meta['model-index'][0]['results'][0]['metrics'][0]['type'] == 'accuracy'


def test_every_tag_has_a_cfg_with_weights_only_where_they_load():
    """Each tag's cfg names its Hub repo only once the tag is published, and no weights at all for a recipe: timm
    lists a model as pretrained when its cfg has weights (hf_hub_id, url or file)."""
    for model in ('mlit_s', 'mlit_xs', 'mlit_xxs'):
        default = default_cfgs[model]
        assert default.tags[0] == 'mae_c100_ft_c100_300e'  # the default tag
        for tag, record in TAGS.items():
            cfg = default.cfgs[tag]
            assert cfg.num_classes == record.num_classes
            if f'{model}.{tag}' in PUBLISHED:
                assert cfg.hf_hub_id == f'timm-mlit/{model}.{tag}'
            else:
                assert not cfg.hf_hub_id and not cfg.url and (not cfg.file or f'{model}.{tag}' in STAGED)
            assert cfg.input_size == (3, 36, 36) and cfg.mean == (0.5,) * 3 and cfg.crop_pct == 1.0
            assert cfg.license == 'apache-2.0'
    assert timm.create_model('mlit_xs.c10').num_classes == 10
    assert timm.create_model('mlit_xs.mae_c100').num_classes == 0
