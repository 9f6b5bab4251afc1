"""SVHN and Flowers102 as the ImageFolder tree timm's train.py reads, written from torchvision's local copies.

timm's ``create_dataset`` reads CIFAR-10/100 directly (``--dataset torch/cifar100``) but has no SVHN or Flowers102
reader. This writes ``OUT/train/<class>/…`` and ``OUT/validation/<class>/…`` (train.py's default split names), so
``train.py --data-dir OUT`` works with the recipes in ``train_scripts/``. Class folders are zero-padded label
indices, so timm's sorted class order is the label order.

Splits (the paper does not name them; these are the usual ones):
  * SVHN: train (73,257 images) -> train, test (26,032) -> validation; 'extra' is not used.
  * Flowers102: train + val (2,040) -> train, test (6,149) -> validation.

The tree is written to ``OUT.partial`` and renamed when complete, so an interrupted run never leaves a tree that
looks finished.
"""
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Tuple

from PIL import Image
from tqdm import tqdm

__all__ = ['prepare_svhn', 'prepare_flowers102', 'PREPARERS']


def _write_split(items: Iterable[Tuple[int, Callable[[Path], None]]], out: Path, digits: int, total: int, desc: str):
    counts: Dict[int, int] = {}
    for label, write in tqdm(items, total=total, desc=desc, unit='img'):
        folder = out / f'{label:0{digits}d}'
        folder.mkdir(parents=True, exist_ok=True)
        index = counts.get(label, 0)
        counts[label] = index + 1
        write(folder / f'{index:06d}')
    return counts


def _write_tree(out: str, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into ``OUT.partial`` and rename it to ``OUT`` when it finished; remove it if it failed."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} already exists; pass --overwrite to replace it.')
    partial = out.with_name(out.name + '.partial')
    if partial.exists():
        shutil.rmtree(partial)  # left by a run that was killed
    partial.mkdir(parents=True)
    try:
        write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    return partial.rename(out)


def prepare_svhn(root: str, out: str, download: bool = False, overwrite: bool = False) -> Path:
    """SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` under ``root`` -> PNG ImageFolder tree at ``out``."""
    from torchvision.datasets import SVHN

    def write(partial: Path):
        for split, target in (('train', 'train'), ('test', 'validation')):
            ds = SVHN(root, split=split, download=download)
            items = (
                (int(label), lambda path, img=img: Image.fromarray(img.transpose(1, 2, 0)).save(path.with_suffix('.png')))
                for img, label in zip(ds.data, ds.labels)
            )
            _write_split(items, partial / target, 1, len(ds), f'svhn {split}')
    return _write_tree(out, overwrite, write)


def prepare_flowers102(root: str, out: str, download: bool = False, overwrite: bool = False) -> Path:
    """Flowers102 (``flowers-102/jpg``, ``imagelabels.mat``, ``setid.mat`` under ``root``) -> ImageFolder tree;
    the JPEG files are copied as they are."""
    from torchvision.datasets import Flowers102

    def write(partial: Path):
        for splits, target in ((('train', 'val'), 'train'), (('test',), 'validation')):
            datasets = [Flowers102(root, split=s, download=download) for s in splits]
            items = (
                (int(label), lambda path, src=src: shutil.copyfile(src, path.with_suffix('.jpg')))
                for ds in datasets for src, label in zip(ds._image_files, ds._labels)
            )
            _write_split(items, partial / target, 3, sum(len(d) for d in datasets), f'flowers102 {"+".join(splits)}')
    return _write_tree(out, overwrite, write)


PREPARERS = {'svhn': prepare_svhn, 'flowers102': prepare_flowers102}
