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

from timm_mlit.data.prepare import prepare_flowers102, prepare_svhn

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


# --- CIFAR-10: the JPEG copy (.npz) and torchvision's files through one writer --------------------------------------

import io  # noqa: E402

import torchvision.datasets.cifar  # noqa: E402

from timm_mlit.data.prepare import prepare_cifar10  # noqa: E402
from timm_mlit.data.cifar10 import CIFAR10_CLASSES, DataSourceError, read_cifar10_npz  # noqa: E402
from timm_mlit.data.prepare import main as prepare_main  # noqa: E402


def _jpeg_npz(path, n, seed=0, classes=CIFAR10_CLASSES, **override):
    """A small file in the JPEG copy's format: every image a 32x32 JPEG, concatenated, with offsets."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % len(classes)
    blobs = []
    for c in labels:
        img = np.full((32, 32, 3), 40, np.uint8)
        img[(c % 4) * 8:(c % 4) * 8 + 8, (c // 4) * 8:(c // 4) * 8 + 8] = 200 + rng.randint(0, 50, 3)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format='JPEG', quality=90)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    arrays = dict(jpeg=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64),
                  labels=labels.astype(np.int64), classes=np.array(classes))
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


def _npz_dir(root, n_train=30, n_test=20):
    root.mkdir(parents=True, exist_ok=True)
    _jpeg_npz(root / 'cifar10_train_jpeg.npz', n_train, seed=0)
    _jpeg_npz(root / 'cifar10_test_jpeg.npz', n_test, seed=1)
    return root


def test_cifar10_npz_becomes_the_image_folder_timm_reads(tmp_path):
    src = _npz_dir(tmp_path / 'npz')
    out = prepare_cifar10(str(tmp_path / 'c10'), npz_dir=str(src), verify=False)
    assert sorted(p.name for p in out.iterdir()) == ['train', 'validation']
    train = create_dataset('', root=str(out), split='train')
    val = create_dataset('', root=str(out), split='validation')
    assert len(train) == 30 and len(val) == 20
    # timm's ImageFolder numbers the class folders as CIFAR-10 (and torchvision) number the classes
    assert train.reader.class_to_idx == {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    raw = np.load(src / 'cifar10_train_jpeg.npz')
    for i in (0, 7, 29):  # file i holds image i, in its label's folder, pixels as PIL decodes the JPEG
        path = out / 'train' / CIFAR10_CLASSES[raw['labels'][i]] / f'{i:05d}.png'
        jpeg = raw['jpeg'][raw['offsets'][i]:raw['offsets'][i + 1]].tobytes()
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')))
        index = [p for p, _ in train.reader.samples].index(str(path))
        assert train.reader.samples[index][1] == raw['labels'][i]


def test_cifar10_from_torchvision_goes_through_the_same_writer(cifar10_dir, tmp_path):
    out = prepare_cifar10(str(tmp_path / 'c10'), root=str(cifar10_dir))
    reference = torchvision.datasets.CIFAR10(str(cifar10_dir), train=False)
    val = create_dataset('', root=str(out), split='validation')
    assert len(val) == len(reference) == 64
    assert val.reader.class_to_idx == {c: i for i, c in enumerate(reference.classes)}
    path = out / 'validation' / reference.classes[reference.targets[3]] / '00003.png'
    assert np.array_equal(np.asarray(Image.open(path)), reference.data[3])


def test_cifar10_npz_checks_name_the_file_and_the_problem(tmp_path):
    src = _npz_dir(tmp_path / 'npz')
    with pytest.raises(DataSourceError, match=r'cifar10_train_jpeg.npz: sha256 [0-9a-f]{64}, expected 8208cba8'):
        read_cifar10_npz(src)  # a file of the published name with other contents
    cases = {
        'missing arrays': dict(labels=None),
        '"jpeg" is float64': dict(jpeg=np.zeros(10)),
        '"offsets" must rise strictly': dict(offsets=np.array([0, 5, 5] + [9] * 28, np.int64)),
        '"labels" is int64 of shape \\(3,\\)': dict(labels=np.zeros(3, np.int64)),
        'labels range 0..12': dict(labels=np.arange(30) % 13),
    }
    for message, override in cases.items():
        arrays = _jpeg_npz(tmp_path / 'x.npz', 30)
        arrays.update(override)
        np.savez(src / 'cifar10_train_jpeg.npz', **{k: v for k, v in arrays.items() if v is not None})
        with pytest.raises(DataSourceError, match=message):
            read_cifar10_npz(src, verify=False)
    (src / 'cifar10_train_jpeg.npz').write_bytes(b'not a zip')
    with pytest.raises(DataSourceError, match='not a readable .npz'):
        read_cifar10_npz(src, verify=False)
    with pytest.raises(DataSourceError, match=f'--npz-dir {tmp_path / "nowhere"}: no such folder'):
        read_cifar10_npz(tmp_path / 'nowhere')


def test_a_corrupt_image_fails_the_run_and_leaves_nothing(tmp_path):
    src = _npz_dir(tmp_path / 'npz')
    arrays = dict(np.load(src / 'cifar10_test_jpeg.npz'))
    arrays['jpeg'][arrays['offsets'][5]:arrays['offsets'][6]] = 0  # image 5 destroyed
    np.savez(src / 'cifar10_test_jpeg.npz', **arrays)
    with pytest.raises(DataSourceError, match='image 5 .* does not decode'):
        prepare_cifar10(str(tmp_path / 'c10'), npz_dir=str(src), verify=False)
    assert not (tmp_path / 'c10').exists() and not (tmp_path / 'c10.partial').exists()


def test_overwrite_cannot_delete_the_source(tmp_path):
    src = _npz_dir(tmp_path / 'npz')
    before = sorted(p.name for p in src.iterdir())
    for out in (src, tmp_path):  # OUT is the source, OUT holds the source
        with pytest.raises(ValueError, match='could delete the source data'):
            prepare_cifar10(str(out), npz_dir=str(src), verify=False, overwrite=True)
    (tmp_path / 'svhn_raw').mkdir()
    raw = _svhn(tmp_path / 'svhn_raw')
    with pytest.raises(ValueError, match='could delete the source data'):
        prepare_svhn(str(raw), str(raw), overwrite=True)
    other = tmp_path / 'papers'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not a tree this command wrote'):
        prepare_cifar10(str(other), npz_dir=str(src), verify=False, overwrite=True)
    assert (other / 'notes.txt').read_text() == 'mine' and sorted(p.name for p in src.iterdir()) == before
    out = prepare_cifar10(str(tmp_path / 'c10'), npz_dir=str(src), verify=False)
    assert prepare_cifar10(str(out), npz_dir=str(src), verify=False, overwrite=True) == out  # our own tree: replaced


def test_wrong_root_names_the_path(tmp_path, capsys):
    for argv in (['svhn', '--root', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
                 ['cifar10', '--root', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
                 ['cifar10', '--npz-dir', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')]):
        with pytest.raises(SystemExit) as e:
            prepare_main(argv)
        assert str(tmp_path / 'nope') in str(e.value) and 'no such folder' in str(e.value)
    assert not (tmp_path / 'o').exists() and not (tmp_path / 'o.partial').exists()


def test_cifar10_command_line_and_module_help(tmp_path, capsys):
    src = _npz_dir(tmp_path / 'npz', n_train=10, n_test=10)
    out = prepare_main(['cifar10', '--npz-dir', str(src), '--out', str(tmp_path / 'c10'), '--no-verify'])
    assert f'--data-dir {out}' in capsys.readouterr().out
    result = subprocess.run([sys.executable, '-m', 'timm_mlit.data.prepare', '--help'], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and 'usage: mlit-prepare-data' in result.stdout and 'cifar10' in result.stdout


def test_sigterm_mid_write_leaves_nothing(tmp_path, monkeypatch):
    """A scheduler's or torchrun's SIGTERM unwinds the writer like an exception: no OUT, no OUT.partial."""
    import os
    import signal
    src = _npz_dir(tmp_path / 'npz')
    calls = []
    save = Image.Image.save

    def save_then_terminate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, 'save', save_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        prepare_main(['cifar10', '--npz-dir', str(src), '--out', str(tmp_path / 'c10'), '--no-verify'])
    assert e.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / 'c10').exists() and not (tmp_path / 'c10.partial').exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
