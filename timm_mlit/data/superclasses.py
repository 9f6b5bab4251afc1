"""Class -> super-class maps that guide Mobile V-MoE's router (arXiv 2309.04354, Sec. 2.2: one expert per
super-class, router trained with cross-entropy toward the super-class labels).

A map is a :class:`SuperclassMap`: ``superclass_of[c]`` is the super-class of class index ``c`` (indices as the
dataset numbers its classes). Built in: ``'cifar100'``, CIFAR-100's 20 coarse labels in the order of its fine
labels (the order of ``torch/cifar100`` and of a CIFAR-100 ImageFolder, both alphabetical). Any other map comes
from a file:

* JSON: ``{"superclass_of": [g0, g1, ...], "superclass_names": [...], "class_names": [...]}`` (names optional;
  what ``mlit-derive-superclasses`` writes), or a bare list ``[g0, g1, ...]``, or an object
  ``{"class name": g, ...}``: class ``c`` is the ``c``-th name in the dataset's own class order. Without the dataset
  at hand (``class_names=None``) that is timm's ImageFolder order, natural and case-insensitive (timm's
  ``natural_key``: ``'Zebra'`` after ``'apple'``, ``'class10'`` after ``'class2'``), which is also the order of
  ``torch/cifar10`` and ``torch/cifar100``; pass ``class_names`` (e.g. ``dataset.reader.class_to_idx`` in index order)
  for any other dataset;
* text: one integer per line, line ``c`` the super-class of class ``c``.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from timm.utils.misc import natural_key

from timm_mlit._io import write_text

__all__ = ['SuperclassMap', 'load_superclass_map', 'BUILTIN_MAPS', 'CIFAR100_FINE', 'CIFAR100_COARSE']

CIFAR100_FINE = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle', 'bowl', 'boy',
    'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock',
    'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest',
    'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion', 'lizard',
    'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid',
    'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum',
    'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper',
    'snail', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone',
    'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf',
    'woman', 'worm',
)
CIFAR100_COARSE = (
    'aquatic_mammals', 'fish', 'flowers', 'food_containers', 'fruit_and_vegetables', 'household_electrical_devices',
    'household_furniture', 'insects', 'large_carnivores', 'large_man-made_outdoor_things',
    'large_natural_outdoor_scenes', 'large_omnivores_and_herbivores', 'medium_mammals',
    'non-insect_invertebrates', 'people', 'reptiles', 'small_mammals', 'trees', 'vehicles_1', 'vehicles_2',
)
# coarse label of each fine label, as in the dataset's own pickles ('coarse_labels' beside 'fine_labels')
_CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


@dataclass(frozen=True)
class SuperclassMap:
    superclass_of: Sequence[int]
    superclass_names: Optional[Sequence[str]] = None
    class_names: Optional[Sequence[str]] = None
    source: str = ''

    def __post_init__(self):
        groups = list(self.superclass_of)
        if not groups or any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in groups):
            raise ValueError(f'Super-class map {self.source!r}: every entry must be a non-negative integer.')
        missing = sorted(set(range(max(groups) + 1)) - set(groups))
        if missing:
            raise ValueError(
                f'Super-class map {self.source!r}: super-classes {missing} have no class; number the '
                f'super-classes 0..{max(groups)} without gaps, each used by at least one class.')
        if self.superclass_names is not None and len(self.superclass_names) != self.num_superclasses:
            raise ValueError(
                f'Super-class map {self.source!r}: {len(self.superclass_names)} super-class names for '
                f'{self.num_superclasses} super-classes.')
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f'Super-class map {self.source!r}: {len(self.class_names)} class names for {self.num_classes} classes.')

    @property
    def num_classes(self) -> int:
        return len(self.superclass_of)

    @property
    def num_superclasses(self) -> int:
        return max(self.superclass_of) + 1

    def for_classes(self, class_names: Sequence[str]) -> 'SuperclassMap':
        """This map for a dataset whose classes are ``class_names`` in label order (a map with class names only);
        the names must be the same set."""
        names = tuple(str(c) for c in class_names)
        if self.class_names is None:
            if len(names) != self.num_classes:
                raise ValueError(f'Super-class map {self.source!r} covers {self.num_classes} classes, the dataset has '
                                 f'{len(names)}.')
            return SuperclassMap(self.superclass_of, self.superclass_names, names, source=self.source)
        group_of = dict(zip(self.class_names, self.superclass_of))
        missing, extra = sorted(set(names) - set(group_of)), sorted(set(group_of) - set(names))
        if missing or extra:
            raise ValueError(
                f'Super-class map {self.source!r} names other classes than the dataset: the dataset\'s {missing} are '
                f'not in the map, the map\'s {extra} are not in the dataset. Name every dataset class exactly once.')
        return SuperclassMap(tuple(group_of[c] for c in names), self.superclass_names, names, source=self.source)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(list(self.superclass_of), dtype=torch.long)

    def to_json(self) -> dict:
        out = {'superclass_of': list(self.superclass_of)}
        if self.superclass_names is not None:
            out['superclass_names'] = list(self.superclass_names)
        if self.class_names is not None:
            out['class_names'] = list(self.class_names)
        return out

    def save(self, path: Union[str, Path], overwrite: bool = True) -> None:
        """Write the JSON form atomically (:func:`timm_mlit._io.write_text`); an existing file is replaced only with
        ``overwrite``, a symlink or special file never."""
        write_text(path, json.dumps(self.to_json(), indent=1) + '\n', overwrite=overwrite, what='--output')


BUILTIN_MAPS = {
    'cifar100': SuperclassMap(_CIFAR100_COARSE_OF_FINE, CIFAR100_COARSE, CIFAR100_FINE, source='cifar100'),
}


def _from_json(obj, source: str) -> SuperclassMap:
    if isinstance(obj, list):
        return SuperclassMap(tuple(obj), source=source)
    if isinstance(obj, dict) and 'superclass_of' in obj:
        names = obj.get('superclass_names')
        classes = obj.get('class_names')
        return SuperclassMap(
            tuple(obj['superclass_of']), tuple(names) if names else None, tuple(classes) if classes else None,
            source=source)
    if isinstance(obj, dict):
        folded = {}
        for name in obj:
            folded.setdefault(str(name).lower(), []).append(str(name))
        clashes = [names for names in folded.values() if len(names) > 1]
        if clashes:
            raise ValueError(f'Super-class map {source!r}: class names {clashes} differ only in case; ImageFolder '
                             f'orders classes case-insensitively, so their order would be undefined. Rename them.')
        classes = sorted(obj, key=natural_key)  # timm's ImageFolder order of class folders
        return SuperclassMap(tuple(obj[c] for c in classes), class_names=tuple(classes), source=source)
    raise ValueError(f'Super-class map {source!r}: expected a JSON list or object, got {type(obj).__name__}.')


def load_superclass_map(spec: Union[str, Path, Sequence[int], SuperclassMap],
                        class_names: Optional[Sequence[str]] = None) -> SuperclassMap:
    """A built-in name (``'cifar100'``), a JSON / text file, or a sequence of super-class indices. ``class_names``:
    the dataset's classes in label order; a map that names its classes is put in that order (see the module
    docstring)."""
    mapping = _load(spec)
    return mapping.for_classes(class_names) if class_names is not None else mapping


def _load(spec) -> SuperclassMap:
    if isinstance(spec, SuperclassMap):
        return spec
    if not isinstance(spec, (str, Path)):
        return SuperclassMap(tuple(int(g) for g in spec), source='<sequence>')
    if str(spec) in BUILTIN_MAPS:
        return BUILTIN_MAPS[str(spec)]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f'Super-class map {str(spec)!r} is neither a built-in map ({", ".join(BUILTIN_MAPS)}) nor a file. '
            f'Pass a built-in name or the path of a JSON / text map (mlit-derive-superclasses writes one).')
    text = path.read_text()
    if path.suffix.lower() == '.json':
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'Super-class map {str(path)!r} is not valid JSON ({e}).') from e
        return _from_json(obj, str(path))
    try:
        groups = tuple(int(line) for line in text.split())
    except ValueError as e:
        raise ValueError(
            f'Super-class map {str(path)!r}: a text map holds one integer per line ({e}); use .json for other forms.'
        ) from e
    return SuperclassMap(groups, source=str(path))
