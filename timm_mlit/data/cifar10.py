"""CIFAR-10 from either of its two local forms, read into one shape: per split, the images, labels and class names.

* the JPEG copy (``cifar10_train_jpeg.npz`` + ``cifar10_test_jpeg.npz``, each holding ``jpeg`` (uint8, the JPEG files
  concatenated), ``offsets`` (int64, N + 1), ``labels`` (int64, N) and ``classes`` (the 10 names in label order)),
  checked for keys, dtypes, offsets, labels and, for the published files, their sha256;
* torchvision's download (``cifar-10-batches-py/`` under ``root``), read with ``torchvision.datasets.CIFAR10``.

Both give a :class:`ImageSplit` per split (``'train'`` = CIFAR-10's 50,000 training images, ``'validation'`` = its
10,000 test images, train.py's default split names); :func:`timm_mlit.data.prepare.write_image_folder_tree` writes
them. The JPEG copy is slightly lossy against the original pixels (PSNR about 28-35 dB): figures from it land close
to, not exactly at, what the original files give.
"""
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from timm_mlit.errors import UserInputError

__all__ = ['ImageSplit', 'read_cifar10_npz', 'read_cifar10_torchvision', 'CIFAR10_CLASSES', 'NPZ_FILES',
           'NPZ_SHA256', 'DataSourceError']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
# split -> file of the JPEG copy
NPZ_FILES = {'train': 'cifar10_train_jpeg.npz', 'validation': 'cifar10_test_jpeg.npz'}
# the published JPEG copy's files; another file of the same name is refused unless verification is turned off
NPZ_SHA256 = {
    'cifar10_train_jpeg.npz': '8208cba825504e4a6f5124c5ff457e6e976db642a31b478185c2fd845343545d',
    'cifar10_test_jpeg.npz': 'ad4eef258f48a5047d16be6a99e2592ae54011904daa82a1389204ca1f5de1d3',
}
_CLASS_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_\- ]*')


class DataSourceError(UserInputError):
    """A data source that cannot be read; the message names the file, what was expected and the fix."""


@dataclass
class ImageSplit:
    """One split of a labelled image dataset: ``len(labels)`` images, ``image(i)`` the i-th as an RGB PIL image,
    ``labels[i]`` its class index into ``class_names`` (label order)."""
    image: Callable[[int], Image.Image]
    labels: np.ndarray
    class_names: Tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Tuple[Image.Image, int]]:
        for i in range(len(self)):
            yield self.image(i), int(self.labels[i])


def _check_class_names(names: Sequence[str], source: str) -> Tuple[str, ...]:
    names = tuple(str(n) for n in names)
    bad = [n for n in names if not _CLASS_NAME.fullmatch(n)]
    if not names or bad or len(set(n.lower() for n in names)) != len(names):
        raise DataSourceError(
            f'{source}: class names {list(names)} cannot name class folders; expected distinct names of letters, '
            f'digits, "_", "-" or spaces (CIFAR-10: {", ".join(CIFAR10_CLASSES)}).')
    return names


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _read_npz(path: Path, verify: bool) -> ImageSplit:
    fix = 'pass --npz-dir the folder holding the CIFAR-10 JPEG copy (cifar10_train_jpeg.npz, cifar10_test_jpeg.npz)'
    if not path.is_file():
        raise DataSourceError(f'{path}: no such file; {fix}.')
    expected_hash = NPZ_SHA256.get(path.name) if verify else None
    if expected_hash is not None:
        found = _sha256(path)
        if found != expected_hash:
            raise DataSourceError(
                f'{path}: sha256 {found}, expected {expected_hash} (the published {path.name}). The file is damaged '
                f'or another one: fetch it again, or pass --no-verify to use this file as it is.')
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip / npy format errors, object arrays (which would need pickle)
        raise DataSourceError(
            f'{path} is not a readable .npz of plain arrays ({type(e).__name__}: {e}); {fix}.') from e
    missing = {'jpeg', 'offsets', 'labels', 'classes'} - set(arrays)
    if missing:
        raise DataSourceError(
            f'{path}: missing arrays {sorted(missing)} (found {sorted(arrays)}); expected jpeg, offsets, labels and '
            f'classes as the CIFAR-10 JPEG copy holds them; {fix}.')
    jpeg, offsets, labels, classes = (arrays[k] for k in ('jpeg', 'offsets', 'labels', 'classes'))
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
        raise DataSourceError(f'{path}: "jpeg" is {jpeg.dtype} of shape {jpeg.shape}, expected 1-D uint8 bytes.')
    if not np.issubdtype(offsets.dtype, np.integer) or offsets.ndim != 1 or len(offsets) < 2:
        raise DataSourceError(f'{path}: "offsets" is {offsets.dtype} of shape {offsets.shape}, expected 1-D integers '
                              f'(N + 1 for N images).')
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(offsets) - 1,):
        raise DataSourceError(f'{path}: "labels" is {labels.dtype} of shape {labels.shape}, expected {len(offsets) - 1} '
                              f'integers (one per image, len(offsets) - 1).')
    if classes.dtype.kind not in 'US' or classes.ndim != 1:
        raise DataSourceError(f'{path}: "classes" is {classes.dtype} of shape {classes.shape}, expected 1-D strings.')
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != len(jpeg) or (np.diff(offsets) <= 0).any():
        raise DataSourceError(
            f'{path}: "offsets" must rise strictly from 0 to len(jpeg) = {len(jpeg)} (got {offsets[0]} .. '
            f'{offsets[-1]}); the file is damaged: fetch it again.')
    names = _check_class_names(classes.astype(str).tolist(), str(path))
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataSourceError(f'{path}: labels range {labels.min()}..{labels.max()}, expected 0..{len(names) - 1} '
                              f'(one per class name).')

    def image(i: int) -> Image.Image:
        data = jpeg[offsets[i]:offsets[i + 1]].tobytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.convert('RGB')
        except Exception as e:
            raise DataSourceError(f'{path}: image {i} (bytes {offsets[i]}..{offsets[i + 1]}) does not decode '
                                  f'({type(e).__name__}: {e}); the file is damaged: fetch it again.') from e

    return ImageSplit(image, labels.astype(np.int64), names, str(path))


def read_cifar10_npz(npz_dir, verify: bool = True) -> Dict[str, ImageSplit]:
    """The CIFAR-10 JPEG copy in ``npz_dir``: ``{'train': 50,000 images, 'validation': the 10,000 test images}``.
    ``verify``: check the published files' sha256 (files of other names are checked for structure only)."""
    npz_dir = Path(npz_dir).expanduser()
    if not npz_dir.is_dir():
        raise DataSourceError(
            f'--npz-dir {npz_dir}: {"not a folder" if npz_dir.exists() else "no such folder"}; expected the folder holding {" and ".join(NPZ_FILES.values())}.')
    splits = {split: _read_npz(npz_dir / name, verify) for split, name in NPZ_FILES.items()}
    if splits['train'].class_names != splits['validation'].class_names:
        raise DataSourceError(f'{npz_dir}: the two files name different classes ({splits["train"].class_names} vs '
                              f'{splits["validation"].class_names}); expected the same CIFAR-10 classes.')
    return splits


def read_cifar10_torchvision(root, download: bool = False) -> Dict[str, ImageSplit]:
    """torchvision's CIFAR-10 (``root/cifar-10-batches-py``, MD5-checked by torchvision): train and test splits."""
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    if not download and not root.is_dir():
        raise DataSourceError(f'--root {root}: no such folder; expected torchvision\'s CIFAR-10 root (the folder '
                              f'holding cifar-10-batches-py/), or add --download.')
    splits = {}
    for split, train in (('train', True), ('validation', False)):
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except RuntimeError as e:
            raise DataSourceError(
                f'--root {root}: torchvision found no intact CIFAR-10 there ({e}); expected '
                f'{root / "cifar-10-batches-py"} with the original batch files. Pass the folder that holds '
                f'cifar-10-batches-py/, add --download, or use the JPEG copy with --npz-dir.') from e
        data = ds.data
        names = _check_class_names(ds.classes, f'{root / "cifar-10-batches-py"}')
        splits[split] = ImageSplit(lambda i, data=data: Image.fromarray(data[i]), np.asarray(ds.targets, np.int64),
                                   names, f'torchvision CIFAR10({root}, train={train})')
    return splits
