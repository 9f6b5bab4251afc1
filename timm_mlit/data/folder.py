"""An ImageFolder tree of the user's own, read the way timm's train.py reads it (its default ``--dataset ''``).

train.py finds a split's folder with timm's ``create_dataset``: ``ROOT/train`` (or ``training``) for
``--train-split train`` and ``ROOT/validation`` (or ``val``, ``valid``, ``eval``, ``evaluation``) for
``--val-split validation``; a split without such a folder silently falls back to ROOT itself. Classes are the
sub-folders holding images, numbered in sorted (natural) order **per split**. :func:`inspect_image_folder` reads a
tree with the same timm calls and refuses the trees that train.py would misread: no ``train/`` folder, a validation
split whose classes differ from the training split's (the labels would not match), a single class, a class folder
without images timm reads (timm drops it: fewer classes than folders), images nested below a class folder's
sub-folders (timm would name a class after the sub-folder), and a folder reached twice through symbolic links
(timm follows them: a loop would be read until the path is too long).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from timm_mlit.errors import MissingInputError, UserInputError

__all__ = ['ImageFolderError', 'ImageFolderInfo', 'inspect_image_folder', 'split_folder', 'refuse_misread_tree']


class ImageFolderError(UserInputError):
    """A folder that train.py would not read as an ImageFolder tree of train / validation class folders."""


@dataclass
class ImageFolderInfo:
    """What train.py will read from an ImageFolder tree: the split folders, image counts and class names."""
    root: Path
    train_dir: Path
    num_train: int
    classes: List[str]
    val_dir: Optional[Path] = None  # None: no validation folder (train.py then trains without evaluating)
    num_val: int = 0
    train_per_class: Dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_LAYOUT = ('expected ROOT/train/<class>/<images> and, for held-out images, ROOT/validation/<class>/<images> (or '
           'val/), the layout train.py and mlit-prepare-data use')


_TRAIN_NAMES = ('train', 'training')  # timm's split synonyms (timm.data.dataset_factory), in its order
_EVAL_NAMES = ('val', 'valid', 'validation', 'eval', 'evaluation')


def split_folder(root: Path, split: str) -> Optional[Path]:
    """The folder timm's create_dataset reads for ``split``, by its rules (``_search_split``): the name before any
    ``[``, else the first existing synonym of a training or evaluation name; None where timm reads ``root`` itself."""
    name = split.split('[')[0]
    found = root / name if (root / name).exists() else None
    if found is None:
        synonyms = _TRAIN_NAMES if name in _TRAIN_NAMES else _EVAL_NAMES if name in _EVAL_NAMES else ()
        found = next((root / n for n in synonyms if (root / n).exists()), None)
    return None if found is None or not found.is_dir() or found.resolve() == root.resolve() else found


def refuse_misread_tree(split_dir: Path, what: str, root: Path, labelled: bool = True) -> None:
    """Refuse what timm's ImageFolder reader (``os.walk`` following links; a folder's label is its own name, not its
    path) would misread: a folder reached twice through links (a loop: its images read again and again), and, where
    the labels matter (``labelled``), images below a class folder's sub-folders (they would form a class named after
    the sub-folder, merged across classes: cat/small/ and dog/small/ both become 'small')."""
    from timm.data.readers.img_extensions import get_img_extensions
    extensions = get_img_extensions(as_set=True)
    seen: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(split_dir, followlinks=True):
        dirnames.sort()  # the same folder named on every file system
        real = os.path.realpath(dirpath)
        if real in seen:
            raise ImageFolderError(
                f'{what} {root}: {dirpath} is {seen[real]} again, reached through a symbolic link (a loop, or two '
                f'links to one folder): timm\'s reader (train.py, mlit-pretrain) follows links, so it would read '
                f'those images more than once (a loop: until the path is too long). Fix: remove the link, or replace '
                f'it by a copy.')
        seen[real] = dirpath
        depth = len(Path(dirpath).relative_to(split_dir).parts)
        if labelled and depth >= 2 and any(os.path.splitext(f)[1].lower() in extensions for f in filenames):
            rel = Path(dirpath).relative_to(split_dir)
            raise ImageFolderError(
                f'{what} {root}: {dirpath} holds images {depth} levels below {split_dir.name}/. timm\'s reader names a '
                f'class after the folder holding its images, so they would form a class {rel.name!r} of their own '
                f'(merged with any other folder of that name); {_LAYOUT}. Fix: move them up into '
                f'{split_dir / rel.parts[0]}/.')


def _read_split(root: Path, split: str, what: str):
    """(folder, [(image, class index)], {class: index}) of ``split`` as timm's create_dataset finds and reads it;
    folder is None where the split falls back to ``root`` itself (no folder of that name or a synonym). A tree that
    reader would misread (:func:`refuse_misread_tree`) is refused before it reads it."""
    from timm.data import create_dataset
    folder = split_folder(root, split)
    if folder is not None:
        refuse_misread_tree(folder, what, root)
    try:
        reader = create_dataset('', root=str(root), split=split).reader
    except RuntimeError:  # timm's reader refuses a folder without images: name the folder it looked in
        return folder, [], {}
    found = Path(reader.root)
    if found.resolve() == root.resolve():
        return None, [], {}
    return found, reader.samples, reader.class_to_idx


def _refuse_folders_without_images(train_dir: Path, classes: List[str], what: str, root: Path) -> None:
    """Refuse class folders of ``train_dir`` (hidden ones aside) that hold no image timm reads: timm drops them as
    classes, so the model would have fewer classes than the tree has folders."""
    from timm.data.readers.img_extensions import get_img_extensions
    extensions = get_img_extensions(as_set=True)
    empty = sorted(
        d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith('.') and d.name not in classes
        and not any(f.suffix.lower() in extensions for f in d.rglob('*')))
    if empty:
        raise ImageFolderError(
            f'{what} {root}: {", ".join(empty[:5])}{" ..." if len(empty) > 5 else ""} in {train_dir} hold no images '
            f'timm reads ({", ".join(sorted(extensions))}): train.py would drop them as classes and train '
            f'{len(classes)} classes, not {len(classes) + len(empty)}. Fix: put the images of each class in its '
            f'folder (converted to one of those formats), or remove the folders of classes you do not train.')


def inspect_image_folder(root: Union[str, Path], train_split: str = 'train',
                         val_split: str = 'validation', what: str = '--data-dir') -> ImageFolderInfo:
    """Read ``root`` as train.py will (timm's split search and ImageFolder reader): the training and validation
    folders, their image counts and the classes. Raises :class:`ImageFolderError` (or ``MissingInputError``) naming
    the folder, what was expected and the fix for a tree train.py would refuse or misread."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingInputError(f'{what} {root}: no such folder; {_LAYOUT}. Pass the folder that holds train/.')
    train_dir, train, train_classes = _read_split(root, train_split, what)
    if train_dir is None:
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
        held = f'it holds {", ".join(subfolders[:5])}{", ..." if len(subfolders) > 5 else ""}' if subfolders else \
            'it holds no folders'
        raise ImageFolderError(
            f'{what} {root}: no {train_split}/ folder ({held}); {_LAYOUT}. Fix: move the class folders into '
            f'{root / train_split}/ and some images of each class into {root / "validation"}/.')
    if not train:
        raise ImageFolderError(f'{what} {root}: {train_dir} holds no images in class folders; {_LAYOUT}.')
    if '' in train_classes:
        raise ImageFolderError(
            f'{what} {root}: {train_dir} holds images directly, outside class folders; {_LAYOUT}. Fix: move each '
            f'image into {train_dir}/<its class>/.')
    classes = sorted(train_classes, key=train_classes.get)
    _refuse_folders_without_images(train_dir, classes, what, root)
    if len(classes) < 2:
        raise ImageFolderError(
            f'{what} {root}: {train_dir} holds one class folder ({classes[0]}); a classifier needs at least 2. Put '
            f'each class in its own folder: {train_dir}/<class>/<images>.')
    per_class = {c: 0 for c in classes}
    for _, target in train:
        per_class[classes[target]] += 1
    info = ImageFolderInfo(root=root, train_dir=train_dir, num_train=len(train), classes=classes,
                           train_per_class=per_class)
    if not val_split:
        return info
    val_dir, val, val_classes = _read_split(root, val_split, what)
    if val_dir is None or not val:
        return info
    if list(val_classes) != classes:
        missing = sorted(set(classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(classes))
        parts = ([f'lacks {missing[:5]}{" ..." if len(missing) > 5 else ""}'] if missing else []) + \
                ([f'has {extra[:5]}{" ..." if len(extra) > 5 else ""} that {train_dir.name}/ lacks'] if extra else [])
        raise ImageFolderError(
            f'{what} {root}: {val_dir.name}/ {" and ".join(parts)}. timm numbers the classes of each split on its '
            f'own, so the validation labels would not match the training labels. Fix: give {val_dir.name}/ the same '
            f'class folders as {train_dir.name}/ (each with at least one image).')
    info.val_dir, info.num_val = val_dir, len(val)
    return info
