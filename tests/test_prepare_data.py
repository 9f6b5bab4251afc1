"""train_scripts/prepare_data.py: SVHN and Flowers102 from torchvision's on-disk formats to timm's ImageFolder."""
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.flowers102
import torchvision.datasets.svhn
from PIL import Image
from scipy.io import savemat
from timm.data import create_dataset

from timm_mlit.data import prepare_flowers102, prepare_svhn

SCRIPT = Path(__file__).resolve().parents[1] / 'train_scripts' / 'prepare_data.py'


@pytest.fixture(autouse=True)
def synthetic_files_pass_md5(monkeypatch):
    """torchvision verifies the real files' MD5 sums, which synthetic files cannot match; only that is off."""
    for module in (torchvision.datasets.svhn, torchvision.datasets.flowers102):
        monkeypatch.setattr(module, 'check_integrity', lambda *args, **kwargs: True)


def _svhn(root, n_train=30, n_test=12):
    rng = np.random.RandomState(0)
    for split, n in (('train', n_train), ('test', n_test)):
        labels = rng.randint(1, 11, (n, 1))  # SVHN's .mat stores digit 0 as label 10
        savemat(root / f'{split}_32x32.mat', {'X': rng.randint(0, 256, (32, 32, 3, n), dtype=np.uint8), 'y': labels})
    return root


def test_svhn_becomes_an_image_folder_timm_reads(tmp_path):
    raw = _svhn(tmp_path)
    out = prepare_svhn(str(raw), str(tmp_path / 'svhn'))
    assert sorted(p.name for p in out.iterdir()) == ['train', 'validation']
    train = create_dataset('', root=str(out), split='train')
    val = create_dataset('', root=str(out), split='validation')
    assert len(train) == 30 and len(val) == 12
    reference = torchvision.datasets.SVHN(str(raw), split='train')
    names = sorted(p.name for p in (out / 'train').iterdir())
    assert names == [str(c) for c in sorted(set(reference.labels.tolist()))]  # folder = label, 0..9
    first = sorted((out / 'train' / str(reference.labels[0])).iterdir())[0]
    assert np.array_equal(np.asarray(Image.open(first)), reference.data[0].transpose(1, 2, 0))


def test_flowers102_train_plus_val_and_test(tmp_path):
    raw = tmp_path / 'raw'
    jpg = raw / 'flowers-102' / 'jpg'
    jpg.mkdir(parents=True)
    n = 12
    for i in range(1, n + 1):
        Image.fromarray(np.full((40, 50, 3), i * 10, dtype=np.uint8)).save(jpg / f'image_{i:05d}.jpg')
    savemat(raw / 'flowers-102' / 'imagelabels.mat', {'labels': np.array([[1, 2, 3, 102] * 3])})
    savemat(raw / 'flowers-102' / 'setid.mat', {
        'trnid': np.array([[1, 2, 3, 4]]), 'valid': np.array([[5, 6, 7, 8]]), 'tstid': np.array([[9, 10, 11, 12]])})
    out = prepare_flowers102(str(raw), str(tmp_path / 'flowers'))
    train = create_dataset('', root=str(out), split='train')
    val = create_dataset('', root=str(out), split='validation')
    assert len(train) == 8 and len(val) == 4
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['000', '001', '002', '101']
    copied = sorted((out / 'validation' / '101').iterdir())[0]
    assert copied.read_bytes() == (jpg / 'image_00012.jpg').read_bytes()  # copied, not re-encoded


def test_existing_output_is_not_overwritten_silently(tmp_path):
    raw = _svhn(tmp_path)
    (tmp_path / 'svhn').mkdir()
    with pytest.raises(FileExistsError, match='--overwrite'):
        prepare_svhn(str(raw), str(tmp_path / 'svhn'))
    out = prepare_svhn(str(raw), str(tmp_path / 'svhn'), overwrite=True)
    assert (out / 'train').is_dir() and not (tmp_path / 'svhn.partial').exists()


def test_command_line(tmp_path, monkeypatch, capsys):
    raw = _svhn(tmp_path)
    monkeypatch.setattr(sys, 'argv', [str(SCRIPT), 'svhn', '--root', str(raw), '--out', str(tmp_path / 'x')])
    runpy.run_path(str(SCRIPT), run_name='__main__')
    assert f'--data-dir {tmp_path / "x"}' in capsys.readouterr().out
    assert len(create_dataset('', root=str(tmp_path / 'x'), split='train')) == 30


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    raw = _svhn(tmp_path)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), 'svhn', '--root', str(raw), '--out', str(tmp_path / 'x')],
        capture_output=True, text=True)
    # a fresh process has torchvision's real MD5 check: the synthetic files are refused with torchvision's message
    assert result.returncode != 0 and 'corrupted' in result.stderr
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'x.partial').exists()
