"""Training on an ImageFolder of your own with timm's train.py: the documented command

    mlit-config own_data --data-dir FOLDER --epochs 2 --out FOLDER.yaml
    python train.py --config FOLDER.yaml

on small folders of the tests' own. CI has no train.py (it is not in the timm wheel), so the tests check the
contract train.py relies on: the fitted copy holds only train.py's arguments, its batch fits the folder, its warm-up
fits its epochs, num_classes is the folder's, and timm's create_dataset / create_loader / create_scheduler_v2 with
those values (train.py's calls, tests/test_train_configs.py) give an epoch of at least one update. Where train.py is
found ($TIMM_SCRIPTS, ./timm-scripts; timm_mlit.run.find_script) the command itself runs.
"""
import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.data import create_dataset

from test_train_configs import _setup_like_train_py
from timm_mlit import cli, recipes
from timm_mlit.configs import TRAIN_PY_KEYS, list_recipes, recipe_dataset
from timm_mlit.data.folder import inspect_image_folder
from train_py_args import TRAIN_PY_DEFAULTS


def write_folder(root: Path, n_train: int, n_val: int, classes: int = 3, size: int = 36, val_name='validation'):
    """``classes`` class folders, image i in class i % classes (a colour per class on noise)."""
    rng = np.random.RandomState(0)
    for split, n in (('train', n_train), (val_name, n_val)):
        for i in range(n):
            c = i % classes
            folder = root / split / f'class_{c}'
            folder.mkdir(parents=True, exist_ok=True)
            img = rng.randint(0, 80, (size, size, 3)).astype(np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(folder / f'{i:04d}.png')
    return root


def fit(capsys, *argv):
    """mlit-config as the console script runs it: (the printed path, what it said on stderr)."""
    assert cli.config(list(argv)) == 0
    out, err = capsys.readouterr()
    return Path(out.strip()), err


def train_py_args(path):
    """train.py's args for `train.py --config PATH` and nothing else on the command line."""
    args = argparse.Namespace(**TRAIN_PY_DEFAULTS)
    vars(args).update(yaml.safe_load(Path(path).read_text()))
    return args


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.mark.parametrize('recipe, n_train, n_val', [
    ('own_data', 60, 15),  # the README's tiny folder
    ('own_data', 3, 3),  # one image per class: batch 1
    ('own_data', 600, 30),  # 4 batches of the recipe's 128: kept
    ('table6_scratch_cifar10', 60, 15),  # batch 256 > 60 images: "updates_per_epoch must be set" before
    ('table6_scratch_cifar100', 60, 15),  # dataset torch/cifar100: "Dataset not found or corrupted" before
])
def test_fitted_recipe_trains_on_the_folder(recipe, n_train, n_val, tmp_path, capsys, cpu_only):
    data = write_folder(tmp_path / 'myfolder', n_train, n_val)
    path, said = fit(capsys, recipe, '--data-dir', str(data), '--epochs', '2', '--out', str(tmp_path / 'my.yaml'))
    assert path == tmp_path / 'my.yaml'
    cfg = yaml.safe_load(path.read_text())
    assert set(cfg) <= TRAIN_PY_KEYS and set(cfg) <= set(TRAIN_PY_DEFAULTS)  # train.py's arguments only
    args = train_py_args(path)
    assert args.dataset == '' and Path(args.data_dir) == data.resolve() and args.num_classes == 3
    assert args.batch_size <= n_train and n_train // args.batch_size >= min(4, n_train)
    assert args.epochs == 2 and 0 <= args.warmup_epochs <= args.epochs
    assert args.device == 'cpu' and args.amp is False  # the command works as written on a CPU
    shipped = yaml.safe_load(recipes.recipe_path(recipe).read_text())
    changed = {k for k in cfg if shipped.get(k, '(unset)') != cfg[k]}
    assert {'num_classes', 'epochs', 'device', 'data_dir'} <= changed
    assert ('batch_size' in changed) == (n_train < 4 * shipped['batch_size'])
    for key in changed:  # each change said on stderr, and marked in the file
        assert f'\n  {key}: ' in said
        assert next(l for l in path.read_text().splitlines() if l.startswith(f'{key}:')).find('# fitted') > 0
    # train.py's library calls with these values: at least one update an epoch, and a step that trains
    model, data_config, loader, optimizer, scheduler, _, task = _setup_like_train_py(args, args.data_dir)
    assert len(loader) >= 1 and model.num_classes == 3
    val = create_dataset(args.dataset, root=args.data_dir, split=args.val_split)
    assert len(val) == n_val and val.reader.class_to_idx == loader.dataset.reader.class_to_idx
    x, y = next(iter(loader))
    result = task(x, y)
    optimizer.zero_grad()
    result['loss'].backward()
    optimizer.step()
    assert torch.isfinite(result['loss'])


def test_the_recipes_as_shipped_give_no_update_on_a_small_folder(tmp_path, cpu_only):
    """What the fitting fixes: train.py's loader drops the last partial batch, so batch 256 on 60 images is an epoch
    of no updates (timm: 'updates_per_epoch must be set')."""
    data = write_folder(tmp_path / 'myfolder', 60, 15)
    args = train_py_args(recipes.recipe_path('table6_scratch_cifar10'))
    vars(args).update(amp=False)
    with pytest.raises(AssertionError, match='updates_per_epoch'):
        _setup_like_train_py(args, data)


def test_fitting_for_a_gpu_keeps_float16_amp(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    data = write_folder(tmp_path / 'myfolder', 60, 15)
    path, said = fit(capsys, 'own_data', '--data-dir', str(data), '--out', str(tmp_path / 'gpu.yaml'))
    args = train_py_args(path)
    assert args.device == 'cuda' and args.amp is True and args.amp_dtype == 'float16'
    assert args.epochs == 100 and args.warmup_epochs == 5 and 'workers' not in yaml.safe_load(path.read_text())
    path, said = fit(capsys, 'own_data', '--data-dir', str(data), '--device', 'cpu', '--out', str(tmp_path / 'c.yaml'))
    assert train_py_args(path).device == 'cpu' and train_py_args(path).amp is False


def test_warmup_keeps_its_share_of_the_epochs(tmp_path, capsys, cpu_only):
    data = write_folder(tmp_path / 'myfolder', 60, 15)
    for epochs, warm in ((100, 5), (40, 2), (30, 2), (10, 0), (1, 0)):
        path, _ = fit(capsys, 'own_data', '--data-dir', str(data), '--epochs', str(epochs), '--out',
                      str(tmp_path / 'r.yaml'), '--overwrite')
        args = train_py_args(path)
        assert (args.epochs, args.warmup_epochs) == (epochs, warm)


def test_a_folder_without_validation_trains_without_evaluating(tmp_path, capsys, cpu_only):
    data = write_folder(tmp_path / 'myfolder', 12, 0)
    path, said = fit(capsys, 'own_data', '--data-dir', str(data), '--out', str(tmp_path / 'r.yaml'))
    assert train_py_args(path).val_split == '' and 'no validation/ or val/ folder' in said
    data = write_folder(tmp_path / 'other', 12, 6, val_name='val')  # timm finds val/ for 'validation'
    path, _ = fit(capsys, 'own_data', '--data-dir', str(data), '--out', str(tmp_path / 'v.yaml'))
    args = train_py_args(path)
    assert args.val_split == 'validation' and len(create_dataset('', root=args.data_dir, split=args.val_split)) == 6


def _refused(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.config(list(argv))
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]  # argparse's usage line, then the one-line error
    assert e.value.code == 2 and message.startswith('mlit-config: error: '), err
    return message


def test_trees_train_py_would_misread_are_refused(tmp_path, capsys, cpu_only):
    out = str(tmp_path / 'r.yaml')
    flat = tmp_path / 'flat'
    for c in ('cat', 'dog'):  # class folders directly in FOLDER: train.py would read FOLDER for both splits
        (flat / c).mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(flat / c / 'a.png')
    assert 'no train/ folder (it holds cat, dog)' in _refused(capsys, 'own_data', '--data-dir', str(flat), '--out', out)
    mismatch = write_folder(tmp_path / 'mismatch', 6, 2)  # validation has classes 0 and 1 only: labels would shift
    assert "validation/ lacks ['class_2']" in _refused(capsys, 'own_data', '--data-dir', str(mismatch), '--out', out)
    one = write_folder(tmp_path / 'one', 4, 2, classes=1)
    assert 'at least 2' in _refused(capsys, 'own_data', '--data-dir', str(one), '--out', out)
    empty = tmp_path / 'empty' / 'train'
    empty.mkdir(parents=True)
    assert 'holds no images' in _refused(capsys, 'own_data', '--data-dir', str(empty.parent), '--out', out)
    assert 'no such folder' in _refused(capsys, 'own_data', '--data-dir', str(tmp_path / 'nope'), '--out', out)
    assert not Path(out).exists()


def test_recipes_that_cannot_be_fitted_say_why(tmp_path, capsys, cpu_only):
    data = write_folder(tmp_path / 'myfolder', 12, 6)
    out = str(tmp_path / 'r.yaml')
    assert 'pass --out FILE' in _refused(capsys, 'own_data', '--data-dir', str(data))
    assert '--data-dir FOLDER' in _refused(capsys, 'own_data', '--epochs', '3')
    assert 'mlit-pretrain' in _refused(capsys, 'maevit_c100_pretrain_mae', '--data-dir', str(data), '--out', out)
    err = _refused(capsys, 'mobile_vmoe_superclass_cifar100', '--data-dir', str(data), '--out', out)
    assert "super-class map 'cifar100' of 100 classes" in err and 'has 3' in err


def test_every_recipe_names_its_data(capsys):
    for name in list_recipes():
        data = recipe_dataset(name)
        assert data, f'{name}: no "# Dataset:" line in its header'
        cfg = yaml.safe_load(recipes.recipe_path(name).read_text())
        fixed = cfg.get('dataset', '')
        assert (fixed in data) if fixed else ('ImageFolder' in data), (name, data)
    assert cli.config(['--list']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[0] for l in lines] == list_recipes()
    assert all(len(l.split(None, 1)) == 2 for l in lines)  # each with its data
    listed = dict(l.split(None, 1) for l in lines)
    assert listed['table6_scratch_cifar100'].startswith('CIFAR-100 through torchvision (dataset: torch/cifar100)')
    assert listed['own_data'].startswith('your own ImageFolder')


def test_inspect_image_folder_counts_as_timm_reads(tmp_path):
    data = write_folder(tmp_path / 'f', 10, 4, classes=2)
    info = inspect_image_folder(data)
    assert (info.num_train, info.num_val, info.num_classes) == (10, 4, 2)
    assert info.classes == ['class_0', 'class_1'] and info.train_per_class == {'class_0': 5, 'class_1': 5}
    assert len(create_dataset('', root=str(data), split='train')) == info.num_train


@pytest.mark.slow
def test_the_documented_command_runs_train_py(tmp_path, capsys):
    """The command itself, where timm's train.py is found: 2 epochs of mlit_xxs on 60 images of 3 classes."""
    from timm_mlit.run import find_script
    try:
        train_py = find_script('train.py')
    except FileNotFoundError:
        pytest.skip("timm's train.py is not here (set TIMM_SCRIPTS to a pytorch-image-models clone)")
    data = write_folder(tmp_path / 'myfolder', 60, 15)
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    mlit_config = [sys.executable, '-m', 'timm_mlit.recipes']  # the console script mlit-config
    fitted = subprocess.run(mlit_config + ['own_data', '--data-dir', 'myfolder', '--epochs', '2', '--out',
                                           'myfolder.yaml'], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert fitted.returncode == 0, fitted.stderr
    assert fitted.stdout.strip() == 'myfolder.yaml'
    run = subprocess.run([sys.executable, str(train_py.resolve()), '--config', 'myfolder.yaml'], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = next((tmp_path / 'output' / 'train').glob('*/summary.csv'))
    rows = list(csv.DictReader(summary.open()))
    assert [r['epoch'] for r in rows] == ['0', '1'] and all(float(r['eval_top1']) >= 0 for r in rows)


def test_a_device_torch_cannot_name_is_refused(tmp_path, capsys, cpu_only):
    """--device goes into the copy as train.py's device: one torch cannot parse would fail only when train.py
    starts, after a copy that calls it float32 'on gpu' was written."""
    data = write_folder(tmp_path / 'myfolder', 12, 6)
    out = tmp_path / 'r.yaml'
    err = _refused(capsys, 'own_data', '--data-dir', str(data), '--device', 'gpu', '--out', str(out))
    assert "--device gpu" in err and 'cuda' in err and 'cpu' in err
    assert not out.exists()
    path, _ = fit(capsys, 'own_data', '--data-dir', str(data), '--device', 'cuda:1', '--out', str(out))
    assert train_py_args(path).device == 'cuda:1' and train_py_args(path).amp is True


def test_a_class_folder_without_images_is_refused(tmp_path, capsys, cpu_only):
    """timm reads a class folder without images as no class at all: the fitted copy would have said 'num_classes 2:
    the class folders of train/' for three folders, and train.py would build a 2-class head."""
    data = write_folder(tmp_path / 'myfolder', 12, 6, classes=2)
    (data / 'train' / 'class_2').mkdir()
    (data / 'train' / 'class_2' / 'notes.txt').write_text('images to come')
    (data / 'train' / '.ipynb_checkpoints').mkdir()  # a hidden folder is not a class folder
    out = tmp_path / 'r.yaml'
    err = _refused(capsys, 'own_data', '--data-dir', str(data), '--out', str(out))
    assert 'class_2' in err and 'no images' in err and '2 classes, not 3' in err
    assert not out.exists()
    (data / 'train' / 'class_2' / 'notes.txt').unlink()
    (data / 'train' / 'class_2').rmdir()
    path, _ = fit(capsys, 'own_data', '--data-dir', str(data), '--out', str(out))
    assert train_py_args(path).num_classes == 2


def test_nested_classes_and_link_loops_are_refused(tmp_path, capsys, cpu_only):
    """timm labels images by the name of the folder that holds them and follows symbolic links: images in
    train/cat/small/ and train/dog/small/ would form one class 'small', and a link back up the tree would be read
    until the path is too long. Both are refused before timm reads the tree, naming the folder and the fix."""
    out = tmp_path / 'r.yaml'
    nested = write_folder(tmp_path / 'nested', 12, 6, classes=2)
    for c in ('class_0', 'class_1'):
        (nested / 'train' / c / 'small').mkdir()
        Image.new('RGB', (8, 8)).save(nested / 'train' / c / 'small' / 'x.png')
    err = _refused(capsys, 'own_data', '--data-dir', str(nested), '--out', str(out))
    assert "train/class_0/small holds images 2 levels below train/" in err and "a class 'small'" in err
    assert f'move them up into {nested / "train" / "class_0"}/' in err
    loop = write_folder(tmp_path / 'loop', 12, 6, classes=2)
    (loop / 'train' / 'class_1' / 'up').symlink_to(loop / 'train', target_is_directory=True)
    err = _refused(capsys, 'own_data', '--data-dir', str(loop), '--out', str(out))
    assert 'class_1/up is' in err and 'reached through a symbolic link' in err and 'remove the link' in err
    assert not out.exists()
    # a linked class folder (a tree assembled from elsewhere) is read once: accepted
    linked = write_folder(tmp_path / 'linked', 12, 6, classes=2)
    (linked / 'train' / 'class_1').rename(tmp_path / 'elsewhere')
    (linked / 'train' / 'class_1').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
    info = inspect_image_folder(linked)
    assert info.num_classes == 2 and info.num_train == 12


def test_split_folder_follows_timms_search(tmp_path):
    """The folder checked is the folder timm reads: the split's own name (before any '[...]' slice), else a synonym
    of a training or evaluation split; any other name falls back to ROOT itself (None here), as in timm."""
    from timm.data.dataset_factory import _search_split
    from timm_mlit.data.folder import split_folder
    for name in ('training', 'val', 'other'):
        (tmp_path / name).mkdir()
    for split in ('train', 'train[:90%]', 'training', 'validation', 'val', 'eval', 'test', 'other[:10]'):
        got = split_folder(tmp_path, split)
        assert str(got or tmp_path) == _search_split(str(tmp_path), split), split
