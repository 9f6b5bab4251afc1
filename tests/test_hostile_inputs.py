"""Hostile inputs, one table per command: each row is an argv (with placeholders filled from a prepared folder) and
the phrases the refusal must hold. Every command is run in-process through its console-script function
(``timm_mlit.cli``), as ``mlit-...`` runs it: the refusal must exit 2 with one ``PROG: error: ...`` line that names
the input and what was expected or the fix, and no traceback. A new hostile case is one line in a table.

The loader table does the same for ``timm.create_model`` (a Python API: the refusal is a
:class:`~timm_mlit.errors.UserInputError` whose message names the input and the fix), and the publish table checks
that staging's verification refuses what ``pretrained=True`` would refuse.
"""
import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

import timm_mlit  # noqa: F401  registers the models
from timm_mlit import cli
from timm_mlit.errors import UserInputError
from timm_mlit.hub.push import verify_staged
from timm_mlit.models import verify_hub_folder

from conftest import write_image_folder

REPO = 'timm-mlit/mlit_xxs.c10'


def _card(repo: str = REPO) -> str:
    return f"# mlit_xxs.c10\n\n```python\nmodel = timm.create_model('hf-hub:{repo}', pretrained=True).eval()\n```\n"


@pytest.fixture(scope='module')
def staged(tmp_path_factory) -> Path:
    """A valid staged folder of mlit_xxs.c10 (what staging writes: save_for_hf's two files and a card)."""
    folder = tmp_path_factory.mktemp('stage') / 'mlit_xxs.c10'
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs.c10', num_classes=10)
    save_for_hf(model, str(folder), safe_serialization=True)
    (folder / 'README.md').write_text(_card())
    return folder


def _variant(staged: Path, tmp: Path, weights=None, config=None, card=None) -> Path:
    """A copy of the staged folder with its weights / config.json / card changed."""
    folder = tmp / 'mlit_xxs.c10'
    shutil.copytree(staged, folder)
    if weights is not None:
        state = load_file(str(folder / 'model.safetensors'))
        save_file(weights(state), str(folder / 'model.safetensors'))
    if config is not None:
        cfg = json.loads((folder / 'config.json').read_text())
        (folder / 'config.json').write_text(json.dumps(config(cfg)))
    if card is not None:
        (folder / 'README.md').write_text(card)
    return folder


def _set(d, key, value):
    d = dict(d)
    d[key] = value
    return d


def _set_pcfg(d, key, value):
    return dict(d, pretrained_cfg=_set(d['pretrained_cfg'], key, value))


def _nan(state):
    state['blocks.2.norm1.weight'][0] = math.nan
    return state


def _int8(state):
    return {k: (v.to(torch.int8) if k == 'norm.weight' else v) for k, v in state.items()}


def _fill(argv, tmp_path: Path, staged: Path):
    return [a.replace('{tmp}', str(tmp_path)).replace('{staged}', str(staged)) for a in argv]


def _refused(command, argv, capsys, expected):
    with pytest.raises(SystemExit) as e:
        command(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (e.value.code, err)
    assert 'Traceback' not in err, err
    line = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert len(line) == 1, err
    for phrase in expected:
        assert phrase in line[0], (phrase, line[0])
    return line[0]


# --- mlit-push: arguments and crafted staged folders -------------------------------------------------------------
PUSH_ARGS = [
    (['--staged', '{staged}', '--repo-id', '../evil'], ["--repo-id", "'../evil' is not a valid Hub repo id",
                                                        'expected ORG/NAME']),
    (['--staged', '{staged}', '--repo-id', 'a/b/c'], ['--repo-id', "'a/b/c'", 'expected ORG/NAME']),
    (['--staged', '{staged}', '--repo-id', 'noorg'], ['--repo-id', 'has no organisation', 'ORG/NAME']),
    (['--model', 'mlit_xxs', '--checkpoint', 'x.pth', '--dry-run', '{tmp}/d', '--num-classes', '-1'],
     ['--num-classes', "'-1'", '0 (no classifier) to 100000']),
    (['--model', 'mlit_xxs', '--checkpoint', 'x.pth', '--dry-run', '{tmp}/d', '--num-classes', 'ten'],
     ['--num-classes', "'ten' is not an integer"]),
    (['--model', 'mlit_xxs.nope', '--checkpoint', '{tmp}/x.pth', '--dry-run', '{tmp}/d'],
     ["Unknown tag 'nope'", 'expected one of', 'c10']),
    (['--staged', '{tmp}/nowhere'], ['No staged folder at', 'stage one with']),
]


@pytest.mark.parametrize('argv, expected', PUSH_ARGS)
def test_push_refuses_bad_arguments(argv, expected, tmp_path, staged, capsys):
    _refused(cli.push, _fill(argv, tmp_path, staged), capsys, expected)
    assert not (tmp_path / 'd').exists()


# each row: how the staged folder is spoilt (weights, config.json, card), extra argv, phrases of the refusal
STAGED_FOLDERS = [
    (dict(weights=_nan), [], ['NaN or infinite', 'blocks.2.norm1.weight', 'diverged']),
    (dict(weights=_int8), [], ['not floating point', 'norm.weight (torch.int8)']),
    (dict(weights=lambda s: {k: v for k, v in s.items() if k != 'norm.bias'}), [], ['lacks 1 of', 'norm.bias']),
    (dict(weights=lambda s: _set(s, 'head.weight', torch.zeros(7, 108))), [], ['7-class classifier', 'num_classes 10']),
    (dict(weights=lambda s: {k: v for k, v in s.items() if not k.startswith('head.')}), [],
     ['holds no classifier', 'num_classes 10', 'random']),
    (dict(config=lambda c: _set_pcfg(c, 'std', [0.5, 0.0, 0.5])), [], ['std', 'not > 0', 'Fix these fields']),
    (dict(config=lambda c: _set_pcfg(c, 'mean', [0.5, 0.5])), [], ['mean [0.5, 0.5]', '3 finite numbers']),
    (dict(config=lambda c: _set_pcfg(c, 'input_size', [3, 36])), [], ['input_size', 'three positive integers']),
    (dict(config=lambda c: _set(c, 'num_classes', -3)), [], ['num_classes -3', 'from 0 (no classifier)']),
    (dict(config=lambda c: _set(c, 'num_classes', 10 ** 9)), [], ['num_classes 1000000000']),
    (dict(config=lambda c: _set(c, 'num_classes', True)), [], ['num_classes True']),
    (dict(config=lambda c: {k: v for k, v in c.items() if k != 'architecture'}), [],
     ['has no "architecture"', '"architecture": "mlit_xxs"']),
    (dict(config=lambda c: _set(c, 'architecture', 'resnet18')), [], ["'resnet18'", 'holds an mLiT']),
    (dict(config=lambda c: _set(c, 'architecture', 'nosuch_model')), [], ["'nosuch_model'", 'not a registered']),
    (dict(config=lambda c: _set(c, 'architecture', 'mlit_xs')), [], ['named mlit_xxs.c10', 'of mlit_xs']),
    (dict(card=_card('someone/else')), [], ['names someone/else, not timm-mlit/mlit_xxs.c10', 'drop --repo-id']),
    (dict(), ['--repo-id', 'me/mine'], ['names timm-mlit/mlit_xxs.c10, not me/mine', 'drop --repo-id']),
]


@pytest.mark.parametrize('spoil, extra, expected', STAGED_FOLDERS)
def test_publishing_refuses_what_would_not_load(spoil, extra, expected, tmp_path, staged, capsys):
    folder = _variant(staged, tmp_path, **spoil)
    # an endpoint nobody listens on: a folder that passed verification would fail on the network, not here
    _refused(cli.push, ['--staged', str(folder), '--endpoint', 'http://127.0.0.1:9', '--token', 'x', *extra],
             capsys, ['mlit-push: error:', *expected])
    assert not (tmp_path / 'mlit_xxs.c10.md').exists()


def test_the_unspoilt_folder_passes_and_loads_the_same(staged):
    """The control: the folder the table spoils passes verification, which loads it as local-dir: does."""
    name, config = verify_staged(staged)
    assert name == 'mlit_xxs.c10' and config['num_classes'] == 10
    arch, _, model = verify_hub_folder(staged)
    state = load_file(str(staged / 'model.safetensors'))
    assert arch == 'mlit_xxs' and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# --- mlit-pretrain ------------------------------------------------------------------------------------------------
PRETRAIN_ARGS = [
    (['--lr', 'nan'], ['--lr', "'nan' is not a finite number", '> 0']),
    (['--lr', '-1'], ['--lr', "'-1' is out of range", '> 0']),
    (['--lr-base', 'inf'], ['--lr-base', "'inf' is not a finite number"]),
    (['--epochs', '0'], ['--epochs', 'a positive integer']),
    (['--epochs', '2.5'], ['--epochs', "'2.5' is not an integer"]),
    (['--warmup-epochs', '10', '--epochs', '5'], ['--warmup-epochs 10', "longer than the run's 5 epochs",
                                                 'at most 5']),
    (['--warmup-epochs', '9000', '--model', 'mlit_xxs'], ['--warmup-epochs 9000', '8000 epochs']),
    (['--weight-decay', '-0.1'], ['--weight-decay', '>= 0']),
    (['--min-lr', 'nan'], ['--min-lr', 'not a finite number']),
    (['--mask-ratio', '1'], ['--mask-ratio', 'strictly between 0 and 1']),
    (['--hflip', '2'], ['--hflip', 'a probability in [0, 1]']),
    (['--std', '0', '0.5', '0.5'], ['--std', "'0' is out of range", '> 0']),
    (['--scale', '0.9', '0.5'], ['--scale 0.9 0.5', 'MIN <= MAX']),
    (['--scale', '0', '1'], ['--scale', "'0' is out of range"]),
    (['--opt-betas', '0.9', '1.0'], ['--opt-betas', '< 1']),
    (['--batch-size', '-4'], ['--batch-size', 'a positive integer']),
    (['--workers', '-1'], ['--workers', '>= 0']),
    (['--model-kwargs', '{drop_path_rate: 1.5}'], ['--model-kwargs', 'drop_path_rate=1.5', '[0, 1)']),
    (['--model-kwargs', '{expert_drop_rate: .nan}'], ['--model-kwargs', 'expert_drop_rate=nan']),
    (['--model-kwargs', '{img_size: 37, patch_size: 3}'], ['--model-kwargs', 'not a multiple of the patch size 3',
                                                          'divisible by 3']),
    (['--model-kwargs', '[1'], ['--model-kwargs', 'is not YAML']),
    (['--config', '{tmp}/nan.yaml'], ['--config', 'lr: nan', 'fix the value in the file']),
    (['--config', '{tmp}/warm.yaml'], ["longer than the run's 3 epochs"]),
    (['--config', '{tmp}/nope.yaml'], ['--config', 'no such file']),
]


@pytest.mark.parametrize('argv, expected', PRETRAIN_ARGS)
def test_pretrain_refuses_bad_arguments(argv, expected, tmp_path, staged, capsys):
    (tmp_path / 'nan.yaml').write_text('lr: .nan\n')
    (tmp_path / 'warm.yaml').write_text('epochs: 3\nwarmup_epochs: 4\n')
    _refused(cli.pretrain, _fill(argv, tmp_path, staged) + ['--output', str(tmp_path / 'out')], capsys, expected)
    assert not (tmp_path / 'out').exists()


def test_pretrain_refuses_a_model_size_the_patch_does_not_divide(tmp_path, capsys):
    data = write_image_folder(tmp_path / 'data')
    argv = ['--model', 'mlit_xxs', '--data-dir', str(data), '--workers', '0', '--device', 'cpu', '--no-progress',
            '--epochs', '1', '--batch-size', '8', '--output', str(tmp_path / 'out'), '--model-kwargs', '{img_size: 37}']
    _refused(cli.pretrain, argv, capsys, ['image size 37 is not a multiple of the patch size 3', 'divisible by 3'])
    assert not (tmp_path / 'out').exists()


# --- mlit-run-info, mlit-config, mlit-prepare-data, mlit-derive-superclasses, mlit-demo, mlit-run -----------------
RUN_INFO_ARGS = [
    (['{tmp}', '--wall-time-s', 'nan'], ['--wall-time-s', "'nan' is not a finite number"]),
    (['{tmp}', '--wall-time-s', '-5'], ['--wall-time-s', "'-5' is out of range"]),
    (['{tmp}', '--wall-time-s', 'inf'], ['--wall-time-s', 'not a finite number']),
    (['{tmp}/nowhere', '--wall-time-s', '5'], ['nowhere: no such folder', "run's output folder"]),
    (['{tmp}', '--wall-time-s', '5', '--hardware', ' '], ['--hardware is empty', 'e.g. --hardware']),
    (['{tmp}', '--wall-time-s', '5', '--dataset', 'imagenet9'], ['--dataset', "'imagenet9'"]),
]

CONFIG_ARGS = [
    (['nope'], ["recipe 'nope'", 'mlit-config --list']),
    (['{tmp}/bad.yaml'], ['not valid YAML', 'Fix the file']),
    (['{tmp}/list.yaml'], ['holds a list', 'mapping of train.py']),
    (['{tmp}/empty.yaml'], ['holds nothing']),
    (['{tmp}/unknown.yaml'], ["['learning_rate'] are not train.py arguments", 'Fix or remove them']),
    (['{tmp}/lr.yaml'], ['lr:', "'-0.1' is out of range", 'Fix the value in the file']),
    (['{tmp}/drop.yaml'], ['drop:', "'1.0' is out of range", 'drop rate in [0, 1)']),
    (['{tmp}/warm.yaml'], ['warmup_epochs 50', "longer than the run's 10 epochs"]),
    (['{tmp}/kwargs.yaml'], ['model_kwargs', 'expert_drop_rate=2']),
    (['{tmp}/classes.yaml'], ['num_classes', "'-10' is out of range"]),
]
RECIPES = {'bad.yaml': 'a: [1\n', 'list.yaml': '- 1\n', 'empty.yaml': '', 'unknown.yaml': 'learning_rate: 0.1\n',
           'lr.yaml': 'lr: -0.1\n', 'drop.yaml': 'drop: 1.0\n', 'warm.yaml': 'epochs: 10\nwarmup_epochs: 50\n',
           'kwargs.yaml': 'model_kwargs: {expert_drop_rate: 2}\n', 'classes.yaml': 'num_classes: -10\n'}

PREPARE_ARGS = [
    (['flowers102', '--root', '{tmp}', '--out', '{tmp}/o', '--size', '0'], ['--size', "'0' is out of range"]),
    (['flowers102', '--root', '{tmp}', '--out', '{tmp}/o', '--size', 'big'], ['--size', "'big' is not an integer"]),
    (['svhn', '--root', '{tmp}/nope', '--out', '{tmp}/o'], ['nope', 'no such folder']),
    (['cifar10', '--npz-dir', '{tmp}/nope', '--out', '{tmp}/o'], ['nope', 'no such folder']),
]

DERIVE_ARGS = [
    (['--num-superclasses', '1'], ['--num-superclasses', 'an integer >= 2']),
    (['--num-classes', '-2'], ['--num-classes', "'-2' is out of range"]),
    (['--batch-size', '0'], ['--batch-size', 'a positive integer']),
    (['--workers', 'many'], ['--workers', "'many' is not an integer"]),
    (['--model', 'nosuch'], ['--model nosuch', 'not a registered timm model']),
    (['--checkpoint', '{tmp}/none.pth'], ['No checkpoint at', 'none.pth']),
]
DERIVE_BASE = ['--model', 'maevit_c100', '--checkpoint', '{tmp}/c.safetensors', '--data-dir', '{tmp}',
               '--output', '{tmp}/map.json']

DEMO_ARGS = [
    (['--lr', 'nan'], ['--lr', 'not a finite number']),
    (['--epochs', '0'], ['--epochs', 'a positive integer']),
    (['--batch-size', '-1'], ['--batch-size', 'a positive integer']),
    (['--mae-epochs', '1e3'], ['--mae-epochs', "'1e3' is not an integer"]),
    (['--workers', '-3'], ['--workers', '>= 0']),
]


@pytest.mark.parametrize('argv, expected', RUN_INFO_ARGS)
def test_run_info_refuses_bad_arguments(argv, expected, tmp_path, staged, capsys):
    _refused(cli.run_info, _fill(argv, tmp_path, staged), capsys, expected)
    assert not (tmp_path / 'run_info.json').exists()


@pytest.mark.parametrize('argv, expected', CONFIG_ARGS)
def test_config_refuses_what_is_not_a_train_py_recipe(argv, expected, tmp_path, staged, capsys):
    for name, text in RECIPES.items():
        (tmp_path / name).write_text(text)
    _refused(cli.config, _fill(argv, tmp_path, staged), capsys, expected)


@pytest.mark.parametrize('argv, expected', PREPARE_ARGS)
def test_prepare_data_refuses_bad_arguments(argv, expected, tmp_path, staged, capsys):
    _refused(cli.prepare_data, _fill(argv, tmp_path, staged), capsys, expected)
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('argv, expected', DERIVE_ARGS)
def test_derive_superclasses_refuses_bad_arguments(argv, expected, tmp_path, staged, capsys):
    (tmp_path / 'validation').mkdir()
    argv = _fill(DERIVE_BASE + argv, tmp_path, staged)
    _refused(cli.derive_superclasses, argv, capsys, expected)
    assert not (tmp_path / 'map.json').exists()


@pytest.mark.parametrize('argv, expected', DEMO_ARGS)
def test_demo_refuses_bad_arguments(argv, expected, tmp_path, capsys):
    _refused(cli.demo, argv + ['--output', str(tmp_path / 'demo')], capsys, expected)
    assert not (tmp_path / 'demo').exists()


def test_run_refuses_a_missing_script(tmp_path, capsys):
    _refused(cli.run, [str(tmp_path / 'nope.py')], capsys, ['nope.py', 'not found', 'git clone'])


# --- the loader: timm.create_model ------------------------------------------------------------------------------
LOADER = [
    (lambda tmp, staged: timm.create_model('mlit_xxs.nope'), ['mlit_xxs.nope', "no pretrained tag 'nope'",
                                                             'its tags are', 'c10', 'Use one of them']),
    (lambda tmp, staged: timm.create_model('mlit_xxs.nope', pretrained=True), ['its tags are', 'c10']),
    (lambda tmp, staged: timm.create_model(f'local-dir:{tmp}/nowhere', pretrained=True),
     ['local-dir:', 'nowhere does not exist', 'config.json and model.safetensors', 'Fix the path']),
    (lambda tmp, staged: timm.create_model(f'local-dir:{staged}/model.safetensors', pretrained=True),
     ['is a file, not a folder', 'Fix the path']),
    (lambda tmp, staged: timm.create_model(f'local-dir:{tmp}', pretrained=True), ['has no config.json',
                                                                                 'pretrained_cfg_overlay']),
    (lambda tmp, staged: timm.create_model('hf-hub:../evil', pretrained=True),
     ["hf-hub:../evil: '../evil' is not a valid Hub repo id", 'hf-hub:ORG/NAME', 'Fix the name']),
    (lambda tmp, staged: timm.create_model('hf-hub:a/b/c', pretrained=True), ["'a/b/c' is not a valid Hub repo id"]),
]


@pytest.mark.parametrize('load, expected', LOADER)
def test_the_loader_refuses_with_the_input_and_the_fix(load, expected, tmp_path, staged):
    with pytest.raises(UserInputError) as e:
        load(tmp_path, staged)
    for phrase in expected:
        assert phrase in str(e.value), (phrase, str(e.value))


LOADED_FOLDERS = [  # a spoilt folder (as in STAGED_FOLDERS) refused by local-dir: loading itself
    (dict(config=lambda c: {k: v for k, v in c.items() if k != 'architecture'}), ['has no "architecture"']),
    (dict(config=lambda c: _set(c, 'architecture', 'resnet18')), ["names architecture 'resnet18'", 'holds an mLiT',
                                                                  'Set "architecture"']),
    (dict(config=lambda c: _set_pcfg(c, 'std', [0.5, 0.0, 0.5])), ['std', 'not > 0']),
    (dict(config=lambda c: _set(c, 'num_classes', -1)), ['num_classes -1']),
    (dict(weights=_nan), ['NaN or infinite']),
    (dict(weights=_int8), ['not floating point']),
]


@pytest.mark.parametrize('spoil, expected', LOADED_FOLDERS)
def test_local_dir_refuses_a_spoilt_folder(spoil, expected, tmp_path, staged):
    folder = _variant(staged, tmp_path, **spoil)
    with pytest.raises(UserInputError) as e:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    for phrase in expected:
        assert phrase in str(e.value), (phrase, str(e.value))


# --- loading through num_classes -----------------------------------------------------------------------------------
def test_a_file_head_of_the_asked_for_classes_is_kept(staged, tmp_path, caplog):
    """cfg num_classes is 100 for the default tag; a 10-class file asked for with num_classes=10 keeps its head."""
    file = staged / 'model.safetensors'
    state = load_file(str(file))
    model = timm.create_model('mlit_xxs', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(file)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # the head included
    assert model.pretrained_cfg['num_classes'] == 100  # the cfg's own record is left as it was
    with caplog.at_level('WARNING'):
        other = timm.create_model('mlit_xxs', pretrained=True, num_classes=5,
                                  pretrained_cfg_overlay=dict(file=str(file)))
    assert other.head.weight.shape == (5, 108)
    assert torch.equal(other.norm.weight, state['norm.weight'])  # the body loads
    assert any(r.levelname == 'WARNING' and '10-class' in r.getMessage() and '5 classes' in r.getMessage()
               for r in caplog.records), caplog.text
    with caplog.at_level('WARNING'):
        caplog.clear()
        default = timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    assert default.head.weight.shape == (100, 108)
    assert any('10-class' in r.getMessage() and '100 classes' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('make', [
    lambda: timm.create_model('mlit_xxs', img_size=37),
    lambda: timm.create_model('mlit_xxs', drop_rate=float('nan')),
    lambda: timm.create_model('mlit_xxs', drop_path_rate=1.0),
    lambda: timm.create_model('maevit_c100', img_size=(36, 35)),
])
def test_model_arguments_are_checked_when_the_model_is_built(make):
    with pytest.raises(UserInputError, match=r'expected|Use an image size'):
        make()


def test_a_padded_model_takes_any_image_size():
    model = timm.create_model('mlit_xxs', img_size=37, dynamic_img_size=True, dynamic_img_pad=True).eval()
    assert model(torch.randn(1, 3, 37, 37)).shape == (1, 100)
