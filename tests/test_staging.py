"""Staging a trained run as a Hub repo folder (``mlit-push --stage-dir``), loading it with ``local-dir:``, publishing
it (``--staged``), and the push command's refusals of runs and checkpoints that do not fit the tag.

The run is real and short: an ImageFolder this test writes, mlit-xxs trained a few steps, and the records exactly as
timm's train.py writes them: args.yaml (train.py's defaults + the tag's config + the command line, dumped as
train.py dumps them), summary.csv through timm's ``update_summary`` and checkpoints through timm's
``CheckpointSaver`` (last.pth.tar, model_best.pth.tar). The tag's recipe is shortened to the test's epochs and batch
(a copy of its config), which is the one thing that differs from a GPU run."""
import argparse
import csv
import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file
from timm.utils import CheckpointSaver, accuracy, update_summary

import timm_mlit  # noqa: F401
from timm_mlit.hub import tag_info
from timm_mlit.models import PretrainedWeightsError, _pretrained_tags, verify_hub_folder
from timm_mlit.models.mlit import TAGS
from timm_mlit.testing.local_hub import LocalHubServer
from timm_mlit.testing.tag_states import tag_states
from timm_mlit.hub.push import PushError, main as push_main, publish_staged, stage
from timm_mlit.hub.records import RunRecordError, check_against_tag, read_run
from timm_mlit.hub.run_info import write_run_info
from train_py_args import TRAIN_PY_DEFAULTS
from conftest import write_image_folder
from helpers import Exploit

ROOT = Path(__file__).resolve().parents[1]
TOKEN = 'hf_local_test_token'
EPOCHS, BATCH = 2, 16


def _train_py_run(out: Path, data: Path, model_name='mlit_xxs', config='table6_scratch_cifar10', epochs=EPOCHS,
                  **overrides) -> Path:
    """Train ``model_name`` on the ImageFolder ``data`` and leave ``out`` as train.py leaves its output folder."""
    cfg = yaml.safe_load((ROOT / 'timm_mlit' / 'configs' / f'{config}.yaml').read_text())
    args = dict(TRAIN_PY_DEFAULTS, **cfg)
    args.update(model=model_name, dataset='', data_dir=str(data), epochs=epochs, batch_size=BATCH, device='cpu',
                workers=0, output=str(out.parent), experiment=out.name, amp=False, **overrides)
    out.mkdir(parents=True)
    (out / 'args.yaml').write_text(yaml.safe_dump(args, default_flow_style=False))  # as train.py's _parse_args

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=args['num_classes'])
    data_cfg = timm.data.resolve_data_config({}, model=model)
    loaders = {split: torch.utils.data.DataLoader(
        timm.data.create_dataset('', root=str(data), split=split),
        batch_size=BATCH, shuffle=split == 'train') for split in ('train', 'validation')}
    for split, loader in loaders.items():
        loader.dataset.transform = timm.data.create_transform(**data_cfg, is_training=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    saver = CheckpointSaver(model, optimizer, args=argparse.Namespace(**args), checkpoint_dir=str(out),
                            recovery_dir=str(out), decreasing=False, max_history=2)
    for epoch in range(epochs):
        model.train()
        for x, y in loaders['train']:
            loss = torch.nn.functional.cross_entropy(model(x), y) + model.moe_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            outputs = [(model(x), y) for x, y in loaders['validation']]
        logits, target = torch.cat([o for o, _ in outputs]), torch.cat([t for _, t in outputs])
        top1, top5 = accuracy(logits, target, topk=(1, 5))
        metrics = {'loss': float(torch.nn.functional.cross_entropy(logits, target)), 'top1': float(top1),
                   'top5': float(top5)}
        update_summary(epoch, {'loss': loss.item()}, metrics, str(out / 'summary.csv'), lr=1e-3)
        saver.save_checkpoint(epoch, metric=metrics['top1'])
    return out


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('data') / 'cifar10_jpeg', num_classes=10, n_train=48, n_val=32)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data):
    run = _train_py_run(tmp_path_factory.mktemp('train') / 'mlit_xxs_c10', data)
    write_run_info(run, 12.5, hardware='test CPU (2 cores)', dataset='cifar10', jpeg_copy=True)
    return run


@pytest.fixture
def short_recipe(tmp_path, monkeypatch):
    """The c10 tag with its recipe shortened to this test's epochs and batch (its config copied and edited)."""
    configs = tmp_path / 'configs'
    configs.mkdir()
    text = (ROOT / 'timm_mlit' / 'configs' / 'table6_scratch_cifar10.yaml').read_text()
    text = re.sub(r'(?m)^epochs: 100', f'epochs: {EPOCHS}', text)
    text = re.sub(r'(?m)^batch_size: 256', f'batch_size: {BATCH}', text)
    (configs / 'table6_scratch_cifar10.yaml').write_text(text)
    monkeypatch.setattr(tag_info, '_CONFIG_DIR', configs)
    monkeypatch.setitem(TAGS, 'c10', dataclasses.replace(TAGS['c10'], epochs=EPOCHS))


def _card_meta(card: str):
    return yaml.safe_load(re.match(r'^---\n(.*?)\n---', card, re.S)[1])


def test_stage_a_finished_run(finished_run, short_recipe, tmp_path):
    folder = push_main(['--model', 'mlit_xxs.c10', '--run-dir', str(finished_run), '--stage-dir', str(tmp_path)])
    assert folder == tmp_path / 'mlit_xxs.c10'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['configs', 'mlit_xxs.c10']  # no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']

    # the final epoch's weights (not the best-on-test), as timm's save_for_hf writes them
    with torch.serialization.safe_globals([argparse.Namespace]):
        last = torch.load(finished_run / 'last.pth.tar', weights_only=True)
    assert last['epoch'] == EPOCHS - 1
    staged = load_file(str(folder / 'model.safetensors'))
    assert set(staged) == set(last['state_dict'])
    assert all(torch.equal(staged[k], v) for k, v in last['state_dict'].items())
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'mlit_xxs' and config['num_classes'] == 10

    # the card's numbers are the run's
    with open(finished_run / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    final, best = rows[-1], max(rows, key=lambda r: float(r['eval_top1']))
    card = (folder / 'README.md').read_text()
    meta = _card_meta(card)
    assert meta['datasets'] == ['uoft-cs/cifar10']
    # CIFAR-10 has no validation split: train.py's 'validation' folder is its test split, and the card names it so
    assert meta['model-index'][0]['results'][0]['dataset']['split'] == 'test'
    assert 'evaluated on its test split (train.py\'s `validation` split' in card
    assert '| CIFAR-10 | test |' in card
    # the run's amp: false against the recipe's amp: true
    assert ('- **Precision:** float32 throughout (no autocast; the recipe\'s float16 autocast (`amp: true`) was '
            'turned off for this run)') in card
    assert meta['model-index'][0]['results'][0]['metrics'][0]['value'] == round(float(final['eval_top1']), 3)
    # epochs as train.py numbers them (from 0), the numbers summary.csv holds
    assert f'| final ({int(final["epoch"])}) | {round(float(final["eval_top1"]), 3)} |' in card
    assert f'| best on the test split ({int(best["epoch"])}) | {round(float(best["eval_top1"]), 3)} |' in card
    assert (f'epoch {EPOCHS - 1}, the last of {EPOCHS} (train.py numbers epochs from 0): the final epoch\'s weights, '
            'not the best-on-test') in card
    assert 'The paper reports 80.78% top-1 for this setting (Table 8, 100 epochs).' in card
    assert 'JPEG copy of CIFAR-10 (PSNR about 28-35 dB' in card
    assert "Trained on test CPU (2 cores) in 0.2 min wall time (the run's run_info.json)" in card
    assert '**Parameters:** 652,463 (0.65M), 10-class head' in card and '**MACs per image:** 131.0M' in card
    assert 'Not the tag' not in card

    # a clone loads the staged folder with timm's local-dir: (after import timm_mlit, which registers mlit_xxs)
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in staged.items())


def test_staging_refuses_runs_that_are_not_the_tag(finished_run, data, short_recipe, tmp_path):
    def refused(run, match, model='mlit_xxs.c10', **kwargs):
        with pytest.raises((PushError, RunRecordError), match=match):
            stage(model, run, tmp_path / 'stage', **kwargs)
        assert not (tmp_path / 'stage' / model).exists()

    def copy(name, edit_args=None, run_info=None):
        run = tmp_path / name
        shutil.copytree(finished_run, run)
        if edit_args:
            args = yaml.safe_load((run / 'args.yaml').read_text())
            args.update(edit_args)
            (run / 'args.yaml').write_text(yaml.safe_dump(args))
        if run_info is not None:
            (run / 'run_info.json').write_text(json.dumps(run_info))
        return run

    refused(finished_run, r'trained on cifar10, the tag is CIFAR-100', model='mlit_xxs.c100')
    refused(copy('c100', {'dataset': 'torch/cifar100'}), r'trained on cifar100, the tag is CIFAR-10')
    refused(copy('s', {'model': 'mlit_s'}), r'the run trained mlit_s, not mlit_xxs')
    refused(copy('lr', {'lr_base': 0.01}), r'lr_base \(the tag: 0\.001; the run: 0\.01\)')
    refused(copy('ft', {'pretrained_path': 'enc.safetensors'}), r'trained from scratch, the run started from')
    refused(copy('info', run_info={'dataset': 'cifar10'}), r'does not record hardware and wall_time_s')
    refused(copy('badinfo', run_info={'hardware': 'x', 'wall_time_s': -3}), r'"wall_time_s" must be')
    (copy('nojson') / 'run_info.json').write_text('{not json')
    refused(tmp_path / 'nojson', r'run_info\.json is not JSON')
    refused(copy('nodata', run_info={'hardware': 'x', 'wall_time_s': 3}), r'record which dataset it is')
    unfinished = copy('unfinished', {'epochs': EPOCHS + 1})
    refused(unfinished, r'logged 2 of its 3 epochs|epochs trained')
    real_tag = dataclasses.replace(TAGS['c10'], epochs=100)  # the tag as published: 100 epochs
    with pytest.raises(RunRecordError, match=r'epochs trained 2 \(the tag: 100\)'):
        check_against_tag(read_run(finished_run), 'mlit_xxs.c10', real_tag, finished_run)
    torch.save({'epoch': 0, 'state_dict': {}}, tmp_path / 'first.pth.tar')
    refused(finished_run, r'is epoch 0, not the run\'s final epoch 1', checkpoint=tmp_path / 'first.pth.tar')
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    refused(finished_run, r'is empty \(0 bytes\)', checkpoint=tmp_path / 'empty.pth.tar')


def test_staging_is_atomic_and_does_not_overwrite(finished_run, short_recipe, tmp_path, monkeypatch):
    from timm_mlit.hub import push as push_module
    stage_dir = tmp_path / 'stage'
    real_write = push_module.write_repo_files

    def dies_half_way(model, model_name, repo_id, run, folder, **kwargs):
        real_write(model, model_name, repo_id, run, folder, **kwargs)
        (Path(folder) / 'README.md').unlink()
        raise KeyboardInterrupt  # killed after the weights, before the card

    monkeypatch.setattr(push_module, 'write_repo_files', dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        stage('mlit_xxs.c10', finished_run, stage_dir)
    assert list(stage_dir.iterdir()) == []
    monkeypatch.setattr(push_module, 'write_repo_files', real_write)
    folder = stage('mlit_xxs.c10', finished_run, stage_dir)
    before = (folder / 'model.safetensors').read_bytes()
    with pytest.raises(PushError, match='exists already. Pass --overwrite'):
        stage('mlit_xxs.c10', finished_run, stage_dir)
    assert stage('mlit_xxs.c10', finished_run, stage_dir, overwrite=True) == folder
    assert (folder / 'model.safetensors').read_bytes() == before
    assert sorted(p.name for p in stage_dir.iterdir()) == ['mlit_xxs.c10']


def test_publish_a_staged_folder_then_pretrained_loads_it(finished_run, short_recipe, tmp_path):
    folder = stage('mlit_xxs.c10', finished_run, tmp_path / 'stage')
    with LocalHubServer(token=TOKEN) as hub:
        repo_id, _ = publish_staged(folder, endpoint=hub.endpoint, token=TOKEN)
        assert repo_id == 'timm-mlit/mlit_xxs.c10'
        files = hub.files(repo_id)
        assert set(files) == {'model.safetensors', 'config.json', 'README.md'}
        assert all(files[name] == (folder / name).read_bytes() for name in files)
        assert (folder.parent / 'mlit_xxs.c10.md').read_bytes() == files['README.md']  # the published record
        env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / 'home'), HF_TOKEN=TOKEN)
        code = (f"import torch, timm, timm_mlit\nfrom safetensors.torch import load_file\n"
                f"from timm_mlit.testing.tag_states import tag_states\n"
                f"staged = load_file({str(folder / 'model.safetensors')!r})\n"
                f"with tag_states(published={{'mlit_xxs.c10'}}):  # the package once the tag is in PUBLISHED\n"
                f"    for how in ('mlit_xxs.c10', 'hf-hub:{repo_id}'):\n"
                f"        m = timm.create_model(how, pretrained=True)\n"
                f"        assert all(torch.equal(m.state_dict()[k], v) for k, v in staged.items()), how\n"
                f"print('identical')")
        result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and 'identical' in result.stdout, result.stderr[-2000:]


def test_publishing_refuses_a_broken_staged_folder(finished_run, short_recipe, tmp_path):
    folder = stage('mlit_xxs.c10', finished_run, tmp_path / 'stage')
    (folder / 'config.json').write_text('not json {')
    with pytest.raises(PushError, match=r'config\.json is not JSON'):
        publish_staged(folder, endpoint='http://127.0.0.1:9', token=TOKEN)
    (folder / 'config.json').unlink()
    with pytest.raises(PushError, match=r'lacks config\.json: it is not a complete staged folder'):
        publish_staged(folder, endpoint='http://127.0.0.1:9', token=TOKEN)


def test_a_staged_tag_loads_by_its_name_from_a_clone(finished_run, short_recipe, tmp_path):
    """A run staged into the clone's stage folder (here a temporary one) and named in STAGED: timm lists the tag as
    pretrained and pretrained=True loads the staged weights, without publishing; the bare name keeps its default."""
    folder = stage('mlit_xxs.c10', finished_run, tmp_path / 'hub_cards')
    staged = load_file(str(folder / 'model.safetensors'))
    before = timm.list_models('mlit*', pretrained=True)
    with tag_states(published=(), staged={'mlit_xxs.c10'}, stage_root=tmp_path / 'hub_cards'):
        assert timm.list_models('mlit*', pretrained=True) == ['mlit_xxs.c10']
        model = timm.create_model('mlit_xxs.c10', pretrained=True)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in staged.items())
        assert model.pretrained_cfg['file'] == str(folder / 'model.safetensors')
        assert timm.create_model('mlit_xxs').num_classes == 100  # the default tag is still the bare name's
    assert timm.list_models('mlit*', pretrained=True) == before  # the package's own states, registered again


def test_a_staged_tag_without_its_folder_says_how_to_get_it(tmp_path):
    """An installed package has no hub_cards/: the staged tag is not listed, and pretrained=True says where it is."""
    with tag_states(staged={'mlit_xxs.c10'}, stage_root=tmp_path / 'hub_cards'):
        assert 'mlit_xxs.c10' not in timm.list_models('mlit*', pretrained=True)
        with pytest.raises(PretrainedWeightsError) as e:
            timm.create_model('mlit_xxs.c10', pretrained=True)
    message = str(e.value)
    assert 'staged in the timm-mlit repository (hub_cards/mlit_xxs.c10/) but not published' in message
    assert 'this installation has no copy of that folder' in message
    assert "timm.create_model('local-dir:hub_cards/mlit_xxs.c10', pretrained=True)" in message
    assert 'mlit-push --staged hub_cards/mlit_xxs.c10 (from a clone: python train_scripts/push_to_hub.py' in message
    assert "pretrained=False" in message


def test_the_registry_lists_what_is_staged_and_published():
    """STAGED names exactly the staged folders in hub_cards/, each complete and of its tag."""
    folders = {p.name for p in (ROOT / 'hub_cards').iterdir() if p.is_dir()}
    assert folders == set(_pretrained_tags.STAGED)
    for name in folders:
        assert {p.name for p in (ROOT / 'hub_cards' / name).iterdir()} == {'README.md', 'config.json',
                                                                           'model.safetensors'}
        assert _pretrained_tags.find_tag(name) is not None
        verify_hub_folder(ROOT / 'hub_cards' / name, name)  # what pretrained=True loads, checked as publishing does


# --- the push command: the checkpoint must fit the tag, the card comes from the run ----------------------------


def test_push_loads_any_family_through_timm_with_its_own_filter(tmp_path):
    """load_for_push reads through timm's load_checkpoint with the model family's checkpoint_filter_fn (not mLiT's):
    a Mae-ViT train.py checkpoint loads exactly, an mLiT one is refused as not a dense Mae-ViT."""
    from timm_mlit.hub.push import load_for_push
    src = timm.create_model('maevit_c100', num_classes=10)
    torch.save({'epoch': 1, 'state_dict': src.state_dict(), 'args': argparse.Namespace(model='maevit_c100')},
               tmp_path / 'last.pth.tar')
    model = load_for_push('maevit_c100', tmp_path / 'last.pth.tar')
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    torch.save({'state_dict': timm.create_model('mlit_xxs', num_classes=10).state_dict()}, tmp_path / 'mlit.pth.tar')
    with pytest.raises(PushError, match=r'mlit\.pth\.tar does not hold maevit_c100 weights: .*not a dense Mae-ViT'):
        load_for_push('maevit_c100', tmp_path / 'mlit.pth.tar')


def test_push_refuses_a_headless_encoder_under_a_classifier_tag(tmp_path):
    encoder = timm.create_model('mlit_xxs', num_classes=0)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / 'encoder.safetensors'))
    with pytest.raises(PushError, match=r'holds no classifier head .* 10-class classifier: publishing it would '
                                        r'publish a random head'):
        from timm_mlit.hub.push import load_for_push
        load_for_push('mlit_xxs.c10', tmp_path / 'encoder.safetensors')


def test_push_takes_the_dataset_from_the_run_and_refuses_a_contradiction(finished_run, tmp_path, capsys):
    # a CIFAR-10 run pushed under the CIFAR-100 tag: refused (it used to be carded CIFAR-100)
    with pytest.raises(SystemExit) as e:
        push_main(['--model', 'mlit_xxs.c100', '--checkpoint', str(finished_run / 'last.pth.tar'),
                   '--repo-id', 'me/x', '--dry-run', str(tmp_path / 'out')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'has a 10-class head, but mlit_xxs.c100 classifies 100 classes' in err
    # the tag's epochs and recipe: refused unless --off-recipe, and then the card says so
    with pytest.raises(SystemExit):
        push_main(['--model', 'mlit_xxs.c10', '--checkpoint', str(finished_run / 'last.pth.tar'),
                   '--repo-id', 'me/x', '--dry-run', str(tmp_path / 'out')])
    assert 'epochs trained 2 (the tag: 100)' in capsys.readouterr().err
    push_main(['--model', 'mlit_xxs.c10', '--checkpoint', str(finished_run / 'last.pth.tar'), '--repo-id', 'me/x',
               '--dry-run', str(tmp_path / 'out'), '--off-recipe'])
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert "**Not the tag's recipe.**" in card and 'epochs trained 2 (the tag: 100)' in card
    assert _card_meta(card)['datasets'] == ['uoft-cs/cifar10']


def test_push_of_a_zero_byte_checkpoint_names_it(tmp_path, capsys):
    (tmp_path / 'last.pth.tar').write_bytes(b'')
    with pytest.raises(SystemExit):
        push_main(['--model', 'mlit_xxs.c10', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--repo-id', 'me/x'])
    assert f'{tmp_path / "last.pth.tar"} is empty (0 bytes)' in capsys.readouterr().err


def test_no_run_record_is_unpickled_beyond_tensors(tmp_path, monkeypatch):
    """A crafted last.pth beside the file given to the push command must not run code (card.py unpickled it)."""
    mark = tmp_path / 'pwned'
    monkeypatch.setenv('EXPLOIT_MARK', str(mark))
    run = tmp_path / 'mae'
    run.mkdir()
    (run / 'log.jsonl').write_text(json.dumps({'epoch': 0, 'loss': 0.5, 'mse_masked': 0.4}) + '\n')
    with open(run / 'last.pth', 'wb') as f:
        pickle.dump({'args': Exploit()}, f)
    with pytest.raises(RunRecordError, match='not unpickled beyond tensors'):
        read_run(run)
    torch.save({'args': Exploit(), 'state_dict': {}}, run / 'last.pth.tar')
    with pytest.raises(PushError, match='could run code'):
        from timm_mlit.hub.push import read_checkpoint
        read_checkpoint(run / 'last.pth.tar')
    assert not mark.exists()
    # the pattern is split so that a repository-wide grep for it finds only real calls, not this test
    hits = subprocess.run(['grep', '-rn', '--include=*.py', 'weights_only=' + 'False', 'timm_mlit',
                           'train_scripts'], cwd=ROOT, capture_output=True, text=True).stdout
    assert hits == ''


def test_the_commands_print_their_help():
    for module in ('timm_mlit.hub.push', 'timm_mlit.hub.run_info'):
        result = subprocess.run([sys.executable, '-m', module, '--help'], capture_output=True, text=True, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert result.returncode == 0 and result.stdout.startswith('usage:'), result.stderr
        assert ('--stage-dir' if module.endswith('push') else '--wall-time-s') in result.stdout


def test_a_card_never_names_data_the_run_did_not_record():
    from timm_mlit.hub.card import card_metadata, render_card
    from timm_mlit.hub.records import RunInfo
    run = RunInfo('mae', '', 'train', 1, {'mae_loss': 0.5, 'mse_masked': 0.4}, data_dir='/data/mine')
    meta = card_metadata('mlit_xxs.mae_c100', 'me/x', 'apache-2.0', run)
    assert 'datasets' not in meta
    card = render_card('mlit_xxs.mae_c100', timm.create_model('mlit_xxs.mae_c100'), 'me/x', run)
    assert "**Data:** an ImageFolder the run's records do not name (/data/mine)" in card
    assert 'CIFAR-100' not in card.split('## Training')[1]


def test_run_info_times_the_training_command(tmp_path):
    from timm_mlit.hub.run_info import main as run_info
    run = tmp_path / 'run'
    code = f"import pathlib, time; time.sleep(0.2); p = pathlib.Path({str(run)!r}); p.mkdir(); " \
           f"(p / 'summary.csv').write_text('epoch,eval_top1\\n0,1.0\\n')"
    assert run_info([str(run), '--dataset', 'cifar10', '--jpeg-copy', '--', sys.executable, '-c', code]) == 0
    info = json.loads((run / 'run_info.json').read_text())
    assert info['wall_time_s'] >= 0.2 and info['hardware'] and info['dataset'] == 'cifar10' and info['jpeg_copy']
    assert info['command'][:2] == [sys.executable, '-c']
    failed = tmp_path / 'failed'
    failed.mkdir()
    with pytest.raises(SystemExit) as e:
        run_info([str(failed), '--', sys.executable, '-c', 'raise SystemExit(3)'])
    assert e.value.code == 3 and not (failed / 'run_info.json').exists()
    with pytest.raises(SystemExit):
        run_info([str(failed), '--wall-time-s', '-5'])
    assert not (failed / 'run_info.json').exists()


def test_staging_reads_a_resumed_runs_summary(finished_run, short_recipe, tmp_path):
    """train.py --resume appends a second header line to summary.csv; an epoch whose row was written before a stop
    but whose checkpoint was not appears twice, and its later row is the one the weights continue from."""
    run = tmp_path / 'resumed'
    shutil.copytree(finished_run, run)
    lines = (finished_run / 'summary.csv').read_text().splitlines()
    header, rows = lines[0], lines[1:]
    first = rows[0].split(',')
    first[header.split(',').index('eval_top1')] = '0.5'  # the lost attempt of epoch 0, listed before the resume
    (run / 'summary.csv').write_text('\n'.join([header, ','.join(first), header, *rows]) + '\n')
    info = read_run(run)
    assert [h['epoch'] for h in info.history] == list(range(EPOCHS))
    with open(finished_run / 'summary.csv') as f:
        final = list(csv.DictReader(f))[-1]
    assert info.final['top1'] == round(float(final['eval_top1']), 3) and info.epochs == EPOCHS
    assert 0.5 not in [h['top1'] for h in info.history]
    folder = push_main(['--model', 'mlit_xxs.c10', '--run-dir', str(run), '--stage-dir', str(tmp_path / 'staged')])
    assert f'| final ({EPOCHS - 1}) | {round(float(final["eval_top1"]), 3)} |' in (folder / 'README.md').read_text()

    (run / 'summary.csv').write_text('\n'.join([header, rows[0], 'epoch,eval_top1', rows[1]]) + '\n')
    with pytest.raises(RunRecordError, match='header line whose columns differ'):
        read_run(run)


def test_the_card_says_how_the_wall_time_was_measured(finished_run, short_recipe, tmp_path, capsys):
    from timm_mlit.hub.run_info import main as run_info_main
    run = tmp_path / 'paused'
    shutil.copytree(finished_run, run)
    how = "the epochs' own durations, pauses left out"
    assert run_info_main([str(run), '--wall-time-s', '4000', '--hardware', 'test CPU (2 cores)', '--dataset',
                          'cifar10', '--jpeg-copy', '--wall-time-how', how]) == 0
    assert json.loads((run / 'run_info.json').read_text())['wall_time_how'] == how
    folder = push_main(['--model', 'mlit_xxs.c10', '--run-dir', str(run), '--stage-dir', str(tmp_path / 'staged')])
    assert f"Trained on test CPU (2 cores) in 1 h 07 min wall time ({how}) (the run's run_info.json)." in (
        folder / 'README.md').read_text()

    with pytest.raises(SystemExit):  # it describes --wall-time-s; a timed command records its own
        run_info_main([str(run), '--wall-time-how', how, '--', sys.executable, '-c', 'pass'])
    assert '--wall-time-how describes --wall-time-s' in capsys.readouterr().err
    before = (run / 'run_info.json').read_text()
    for bad in ('two\nlines', ' ', 'x' * 301):  # the card quotes it: one line of text
        with pytest.raises(SystemExit):
            run_info_main([str(run), '--wall-time-s', '10', '--wall-time-how', bad])
        assert '"wall_time_how" must be one line of text' in capsys.readouterr().err
    assert (run / 'run_info.json').read_text() == before  # a refused record never replaces a good one
