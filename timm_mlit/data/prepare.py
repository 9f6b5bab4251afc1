"""CIFAR-10, SVHN and Flowers102 as the ImageFolder tree timm's train.py reads (its default ``--dataset ''``).

    mlit-prepare-data cifar10 --npz-dir /data/cifar10_jpeg --out ~/data/cifar10_folder   # the JPEG copy (.npz)
    mlit-prepare-data cifar10 --root ~/data/cifar10 --out ~/data/cifar10_folder          # torchvision's download
    mlit-prepare-data svhn --root ~/data/svhn --out ~/data/svhn_folder
    mlit-prepare-data flowers102 --root ~/data --out ~/data/flowers102_folder --size 36      # the recipes' 36x36

(from a clone: ``python train_scripts/prepare_data.py ...``). This writes ``OUT/train/<class>/…`` and
``OUT/validation/<class>/…`` (train.py's default split names), so ``train.py --data-dir OUT`` and
``mlit-pretrain --data-dir OUT`` read it. CIFAR-10: class folders carry its class names (airplane … truck), whose
sorted order (timm's ImageFolder sorts class folders naturally) is the label order, images are lossless PNGs of the
decoded pixels, its test split becomes ``validation``. One writer serves both CIFAR-10 sources (the JPEG copy is
slightly lossy against the original files; torchvision's MD5 check refuses a ``cifar-10-batches-py/`` rebuilt from it,
hence the ImageFolder). SVHN and Flowers102: timm has no reader; class folders are zero-padded label indices.

Splits (the paper does not name them; these are the usual ones):
  * SVHN: train (73,257 images) -> train, test (26,032) -> validation; 'extra' is not used.
  * Flowers102: train + val (2,040) -> train, test (6,149) -> validation.

The tree is written to ``OUT.partial`` and renamed when complete, so an interrupted run never leaves a tree that
looks finished; a failed run (TERM, HUP and INT included) removes ``OUT.partial``. An ``OUT.partial`` that another
run is writing is refused, one a killed run of this command left is replaced, and any other is the user's and left
alone (``--overwrite`` removes it only if it has the shape of a tree this command writes). ``--overwrite`` replaces
only a tree of the shape this command writes (``train/`` and ``validation/`` of class folders of .png / .jpg files)
or an empty folder, and ``--out`` may not be ``--root`` / ``--npz-dir`` or a folder holding it, so the source data
cannot be deleted.
"""
import argparse
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from PIL import Image
from timm.utils.misc import natural_key
from tqdm import tqdm

from timm_mlit._io import PartialFolder, command
from timm_mlit.argtypes import ProseHelpFormatter, int_in
from timm_mlit.errors import exit_usage, require
from .cifar10 import DataSourceError, ImageSplit, read_cifar10_npz, read_cifar10_torchvision

__all__ = ['prepare_svhn', 'prepare_flowers102', 'squash', 'prepare_cifar10', 'write_image_folder_tree', 'PREPARERS', 'main']

_WRITTEN = {'.png', '.jpg'}


def _is_prepared_tree(out: Path) -> bool:
    """Empty, or only ``train/`` / ``validation/`` holding class folders of .png / .jpg files: what this writes."""
    for split in out.iterdir():
        if split.name not in ('train', 'validation') or not split.is_dir() or split.is_symlink():
            return False
        for folder in split.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                return False
            if any(f.suffix.lower() not in _WRITTEN or not f.is_file() for f in folder.iterdir()):
                return False
    return True


def _write_split(items: Iterable[Tuple[int, Callable[[Path], None]]], out: Path, digits: int, total: int, desc: str):
    counts: Dict[int, int] = {}
    for label, write in tqdm(items, total=total, desc=desc, unit='img'):
        folder = out / f'{label:0{digits}d}'
        folder.mkdir(parents=True, exist_ok=True)
        index = counts.get(label, 0)
        counts[label] = index + 1
        write(folder / f'{index:06d}')
    return counts


def _check_paths(out: Path, sources: Dict[str, Path], overwrite: bool) -> None:
    """Refuse an ``out`` that is or holds a source folder, and an ``--overwrite`` of anything but a tree this command
    wrote (or an empty folder): both could delete the source data."""
    resolved = out.expanduser().resolve()
    for flag, source in sources.items():
        src = Path(source).expanduser().resolve()
        # OUT inside the source is fine (torchvision's root ~/data, OUT ~/data/flowers102_folder): --overwrite below
        # replaces only a tree this command wrote
        if resolved == src or resolved in src.parents:
            where = 'is' if resolved == src else 'holds'
            raise ValueError(
                f'--out {out} {where} {flag} {source}: writing there could delete the source data. Pass an --out '
                f'outside {source}, e.g. {src.parent / (src.name + "_folder")}.')
    if out.exists():
        if not overwrite:
            raise FileExistsError(f'--out {out} already exists; pass --overwrite to replace it.')
        if not out.is_dir() or out.is_symlink() or not _is_prepared_tree(out):
            raise FileExistsError(
                f'--out {out} exists and is not a tree this command wrote (expected only train/ and validation/ '
                f'of class folders of images): --overwrite replaces only such a tree or an empty folder. Remove it '
                f'yourself or pick another --out.')


def _write_tree(out: str, overwrite: bool, write: Callable[[Path], None],
                sources: Optional[Dict[str, Path]] = None) -> Path:
    """Run ``write`` into ``OUT.partial`` and rename it to ``OUT`` when it finished; remove it if it failed (signals
    included, under :func:`timm_mlit._io.signals_unwind`). With ``overwrite`` an old ``OUT`` of this command's
    shape is swapped out only once the new tree is complete."""
    out = Path(out).expanduser()
    _check_paths(out, sources or {}, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    def ours(folder: Path) -> bool:  # what --overwrite may replace: a tree of the shape this command writes
        return overwrite and _is_prepared_tree(folder)

    with PartialFolder(out.with_name(out.name + '.partial'), '--out', may_remove=ours) as partial:
        write(partial.path)
        return partial.commit(out, replace=ours)


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataSourceError(f'--root {root}: no such folder; expected torchvision\'s dataset root, or add '
                              f'--download to let torchvision fetch the files there.')
    return root


def write_image_folder_tree(splits: Dict[str, ImageSplit], out, overwrite: bool = False,
                            sources: Optional[Dict[str, Path]] = None) -> Path:
    """The one writer for labelled images: ``OUT/<split>/<class name>/<index>.png`` (lossless PNG, ``index`` the
    image's position in its split). The class names' natural order (timm's ImageFolder order) must be the label
    order, so that train.py's labels are the source's."""
    for split, data in splits.items():
        names = list(data.class_names)
        if sorted(names, key=natural_key) != names:
            raise DataSourceError(
                f'{data.source}: class names {names} are not in the order timm\'s ImageFolder sorts folders '
                f'({sorted(names, key=natural_key)}), so its labels would differ from the source\'s.')

    def write(partial: Path):
        for split, data in splits.items():
            for name in data.class_names:
                (partial / split / name).mkdir(parents=True, exist_ok=True)
            digits = max(5, len(str(len(data))))
            for i, (img, label) in enumerate(tqdm(data, total=len(data), desc=split, unit='img')):
                img.save(partial / split / data.class_names[label] / f'{i:0{digits}d}.png')

    return _write_tree(out, overwrite, write, sources)


def prepare_cifar10(out: str, npz_dir: Optional[str] = None, root: Optional[str] = None, download: bool = False,
                    overwrite: bool = False, verify: bool = True) -> Path:
    """CIFAR-10 from the JPEG copy (``npz_dir``) or torchvision's download (``root``) -> ImageFolder tree at ``out``."""
    if (npz_dir is None) == (root is None):
        raise ValueError('cifar10: pass exactly one source, --npz-dir DIR (the JPEG copy) or --root DIR '
                         '(torchvision\'s cifar-10-batches-py/).')
    if npz_dir is not None:
        sources = {'--npz-dir': Path(npz_dir)}
        _check_paths(Path(out).expanduser(), sources, overwrite)  # before the reading
        splits = read_cifar10_npz(npz_dir, verify=verify)
    else:
        sources = {'--root': Path(root)}
        _check_paths(Path(out).expanduser(), sources, overwrite)
        splits = read_cifar10_torchvision(root, download=download)
    return write_image_folder_tree(splits, out, overwrite, sources)


def prepare_svhn(root: str, out: str, download: bool = False, overwrite: bool = False) -> Path:
    """SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` under ``root`` -> PNG ImageFolder tree at ``out``."""
    require('scipy', what="mlit-prepare-data svhn (torchvision reads SVHN's .mat files with scipy)")
    from torchvision.datasets import SVHN
    root = str(_check_root(root)) if not download else root

    def write(partial: Path):
        for split, target in (('train', 'train'), ('test', 'validation')):
            try:
                ds = SVHN(root, split=split, download=download)
            except RuntimeError as e:
                raise DataSourceError(f'--root {root}: torchvision found no intact SVHN there ({e}); expected '
                                      f'{split}_32x32.mat in it, or add --download.') from e
            items = (
                (int(label), lambda path, img=img: Image.fromarray(img.transpose(1, 2, 0)).save(path.with_suffix('.png')))
                for img, label in zip(ds.data, ds.labels)
            )
            _write_split(items, partial / target, 1, len(ds), f'svhn {split}')
    return _write_tree(out, overwrite, write, {'--root': Path(root)})


def squash(path, size: int) -> Image.Image:
    """The whole image resized to ``size`` x ``size`` (bicubic), its aspect ratio not kept: nothing is cut."""
    with Image.open(path) as img:
        return img.convert('RGB').resize((size, size), Image.BICUBIC)


def prepare_flowers102(root: str, out: str, download: bool = False, overwrite: bool = False,
                       size: Optional[int] = None) -> Path:
    """Flowers102 (``flowers-102/jpg``, ``imagelabels.mat``, ``setid.mat`` under ``root``) -> ImageFolder tree;
    the JPEG files are copied as they are, or with ``size`` each whole photo is resized to ``size`` x ``size``
    (:func:`squash`, lossless PNG): mLiT's Table 8 runs resize every image to 36x36, Flowers102 included, which is
    what its recipes expect (``--size 36``)."""
    require('scipy', what="mlit-prepare-data flowers102 (torchvision reads Flowers102's .mat files with scipy)")
    from torchvision.datasets import Flowers102
    if size is not None and size < 1:
        raise ValueError(f'--size {size}: expected a positive side in pixels (the recipes: 36).')
    root = str(_check_root(root)) if not download else root

    def load(split):
        try:
            return Flowers102(root, split=split, download=download)
        except RuntimeError as e:
            raise DataSourceError(f'--root {root}: torchvision found no intact Flowers102 there ({e}); expected '
                                  f'flowers-102/ (jpg/, imagelabels.mat, setid.mat) in it, or add --download.') from e

    def write(partial: Path):
        for splits, target in ((('train', 'val'), 'train'), (('test',), 'validation')):
            datasets = [load(s) for s in splits]
            items = (
                (int(label), lambda path, src=src: shutil.copyfile(src, path.with_suffix('.jpg')) if size is None
                 else squash(src, size).save(path.with_suffix('.png')))
                for ds in datasets for src, label in zip(ds._image_files, ds._labels)
            )
            _write_split(items, partial / target, 3, sum(len(d) for d in datasets), f'flowers102 {"+".join(splits)}')
    return _write_tree(out, overwrite, write, {'--root': Path(root)})


PREPARERS = {'svhn': prepare_svhn, 'flowers102': prepare_flowers102}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mlit-prepare-data', description=__doc__,
                                     formatter_class=ProseHelpFormatter)
    sub = parser.add_subparsers(dest='dataset', required=True, metavar='{cifar10,flowers102,svhn}')
    cifar = sub.add_parser('cifar10', formatter_class=ProseHelpFormatter,
                           help='CIFAR-10 from the JPEG copy (--npz-dir) or torchvision\'s files (--root)')
    source = cifar.add_mutually_exclusive_group(required=True)
    source.add_argument('--npz-dir', help='folder with cifar10_train_jpeg.npz and cifar10_test_jpeg.npz')
    source.add_argument('--root', help="torchvision's CIFAR-10 root (holding cifar-10-batches-py/)")
    cifar.add_argument('--no-verify', action='store_true',
                       help="don't check the published .npz files' sha256 (structure is still checked)")
    for name in sorted(PREPARERS):
        p = sub.add_parser(name, formatter_class=ProseHelpFormatter,
                           help=f'{name} from torchvision\'s files under --root')
        p.add_argument('--root', required=True, help="torchvision's root folder for the dataset")
        if name == 'flowers102':
            p.add_argument('--size', type=int_in(1, 4096, expected='an image side in pixels, 1 to 4096'),
                           default=None,
                           help='resize each whole photo to SIZE x SIZE (the recipes: 36, as the paper); default: '
                                'copy the JPEGs as they are')
    for p in sub.choices.values():
        p.add_argument('--out', required=True, help='where to write the ImageFolder tree')
        p.add_argument('--download', action='store_true', help='let torchvision download the files first (--root)')
        p.add_argument('--overwrite', action='store_true', help='replace OUT if this command wrote it')
    return parser


@command  # TERM / HUP unwind through _write_tree, which removes OUT.partial
def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        if args.dataset == 'cifar10':
            out = prepare_cifar10(args.out, npz_dir=args.npz_dir, root=args.root, download=args.download,
                                  overwrite=args.overwrite, verify=not args.no_verify)
        else:
            sized = {'size': args.size} if getattr(args, 'size', None) is not None else {}
            out = PREPARERS[args.dataset](args.root, args.out, download=args.download, overwrite=args.overwrite,
                                          **sized)
    except (DataSourceError, FileExistsError, ValueError) as e:
        exit_usage(f'mlit-prepare-data {args.dataset}', str(e))
    except OSError as e:  # --out not writable, disk full, ...
        exit_usage(f'mlit-prepare-data {args.dataset}', f'could not write --out {args.out} ({e}); nothing was left '
                   f'behind. Pass a writable --out with room for the images.')
    print(f'wrote {out}: train with `--data-dir {out}` (train.py\'s default --dataset \'\', and mlit-pretrain\'s)')
    return out


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-prepare-data', main)
