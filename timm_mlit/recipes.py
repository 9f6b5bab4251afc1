"""The training recipes (YAML configs) shipped inside the package, by name.

The recipes of mLiT's Tables 4-6 (arXiv 2407.17783), of the zoo's other systems and one for your own images live in
timm_mlit/configs/: a clone reads them there, an installed package has the very same files. Each names the data it
reads (mlit-config --list shows it). Name a recipe by its file stem:

    mlit-config --list                                        # every recipe and its data, one per line
    mlit-config table6_scratch_cifar10                        # print the installed file's path
    mlit-config table6_scratch_cifar10 --out recipe.yaml      # write a copy to edit
    python train.py --config "$(mlit-config table6_scratch_cifar10)" --model mlit_s --data-dir DATA

Your own images, as an ImageFolder (FOLDER/train/<class>/<images>, FOLDER/validation/<class>/<images>):

    mlit-config own_data --data-dir FOLDER --epochs 30 --out FOLDER.yaml
    python train.py --config FOLDER.yaml

--data-dir writes a copy fitted to the folder and to this machine (any recipe that trains with train.py) and says
on stderr what it changed: num_classes (the folder's class folders), batch_size (at most a quarter of the training
images, so an epoch has at least 4 updates: train.py drops the last partial batch, and a batch larger than the data
leaves none), dataset (an ImageFolder), val_split (empty when there is no validation folder), data_dir, device and
amp (float16 AMP on a CUDA GPU, float32 on a CPU), and on a CPU with fewer than 4 cores the loader workers.
--epochs sets the run's length and keeps the warm-up's share.

timm's train.py --config takes a file path, hence the printed path; mlit-pretrain --config also takes a name.

The zoo's pretrained tags (mlit_xxs.c10, ...) are recipes until their weights exist:

    mlit-config --tags                                        # every model.tag: weights or recipe, and its recipe
    mlit-config --commands mlit_xxs.mae_c100_ft_c10           # the tag's recipe, command by command, in order
"""
import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from timm_mlit._io import command, copy_file, write_text
from timm_mlit.argtypes import ArgumentError, ProseHelpFormatter, check_train_recipe, positive_int
from timm_mlit.configs import RECIPE_DIR, TRAIN_PY_KEYS, list_recipes, recipe_dataset, recipe_path
from timm_mlit.errors import run_command

__all__ = ['RECIPE_DIR', 'TRAIN_PY_KEYS', 'MIN_UPDATES', 'list_recipes', 'recipe_path', 'recipe_dataset',
           'write_recipe', 'fit_batch_size', 'fit_recipe', 'write_fitted_recipe', 'tag_lines',
           'tag_commands', 'main']

MIN_UPDATES = 4  # a fitted batch leaves an epoch at least this many updates, where the folder has the images


def write_recipe(name: str, out: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Write the shipped recipe ``name`` to ``out`` (a file, or a folder to hold ``NAME.yaml``), byte for byte and
    atomically (:func:`timm_mlit._io.atomic_write`). Refuses to replace an existing file unless ``overwrite``, and
    never replaces a device, FIFO, socket or symlink."""
    src = recipe_path(name)
    return copy_file(src, _out_path(src, out), overwrite=overwrite, what='--out')


def _out_path(src: Path, out: Union[str, os.PathLike]) -> Path:
    dest = Path(out).expanduser()
    if dest.is_dir():
        dest = dest / src.name
    if not dest.parent.is_dir():
        raise FileNotFoundError(f'--out {out}: folder {dest.parent} does not exist; create it first')
    return dest


def fit_batch_size(batch_size: int, num_train: int, min_updates: int = MIN_UPDATES) -> int:
    """The recipe's ``batch_size`` where the training split has ``min_updates`` batches of it, else the largest power
    of two that leaves ``min_updates`` (1 for fewer than ``min_updates`` images). train.py's training loader drops the
    last partial batch, so a batch larger than the split gives an epoch of no updates."""
    if num_train >= min_updates * batch_size:
        return batch_size
    return min(batch_size, 1 << max(0, (num_train // min_updates).bit_length() - 1))


def _default_device() -> str:
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _check_device(device: str) -> str:
    """``device`` when torch can name it (train.py passes it to ``torch.device``), else ArgumentError."""
    import torch
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ArgumentError(
            f'--device {device}: not a device torch knows ({str(e).splitlines()[0]}); expected \'auto\', \'cuda\', '
            f'\'cuda:N\', \'cpu\', \'mps\', ... as train.py\'s --device. Fix the name.') from e
    return device


@dataclass
class Change:
    key: str
    old: Any
    new: Any
    why: str


def fit_recipe(cfg: Dict[str, Any], info, epochs: Optional[int] = None, device: str = 'auto',
               name: str = 'recipe') -> Tuple[Dict[str, Any], List[Change]]:
    """``cfg`` (a train.py recipe) fitted to the ImageFolder ``info`` (:func:`timm_mlit.data.folder.
    inspect_image_folder`) and to ``device`` ('auto': CUDA where torch sees a GPU, else the CPU): the fitted
    mapping and the changes, each with its reason. Refuses (ArgumentError) a recipe that cannot read a folder of
    these classes: one for mlit-pretrain, one whose router is guided by a fixed super-class map, one with a
    class_map; and a ``device`` torch cannot name."""
    unknown = sorted(set(cfg) - set(TRAIN_PY_KEYS))
    if unknown:
        raise ArgumentError(
            f'{name}: holds {unknown[:4]}, which are not train.py arguments: a recipe for mlit-pretrain, which reads '
            f'an ImageFolder itself (mlit-pretrain --config {name} --dataset \'\' --data-dir FOLDER). --data-dir '
            f'fits train.py recipes: mlit-config --list.')
    if cfg.get('class_map'):
        raise ArgumentError(f'{name}: sets class_map {cfg["class_map"]!r}, which fixes the classes itself; fit it by '
                            f'hand, or start from mlit-config own_data.')
    kwargs = cfg.get('model_kwargs') or {}
    if kwargs.get('superclass_map') and cfg.get('num_classes') not in (None, info.num_classes):
        raise ArgumentError(
            f'{name}: its router is guided by the super-class map {kwargs["superclass_map"]!r} of '
            f'{cfg.get("num_classes")} classes, and {info.root} has {info.num_classes}. Use '
            f'mobile_vmoe_end_to_end_cifar100 (no map) or own_data, or derive a map for your classes with '
            f'mlit-derive-superclasses and set model_kwargs.superclass_map to it.')
    fitted, changes = dict(cfg), []

    def put(key, value, why):
        old = cfg.get(key, '(unset)')
        if key not in cfg or cfg[key] != value or type(cfg[key]) is not type(value):
            changes.append(Change(key, old, value, why))
        fitted[key] = value

    if cfg.get('dataset', '') != '':
        put('dataset', '', f'was a fixed dataset; {info.root} is read as an ImageFolder')
    put('data_dir', str(info.root.resolve()), 'the folder, so train.py needs no --data-dir')
    if cfg.get('train_split') is None:
        put('train_split', 'train', f'{info.train_dir.name}/')
    if info.val_dir is None:
        put('val_split', '', f'{info.root} has no validation/ or val/ folder: train.py trains without evaluating '
                             f'and keeps the checkpoints of lowest training loss')
    elif not cfg.get('val_split'):
        put('val_split', 'validation', f'{info.val_dir.name}/, {info.num_val} images')
    put('num_classes', info.num_classes, f'the class folders of {info.train_dir.name}/')
    batch = int(cfg.get('batch_size') or 128)
    accum = int(cfg.get('grad_accum_steps') or 1)
    new_batch = fit_batch_size(batch, info.num_train, MIN_UPDATES * accum)
    updates = info.num_train // new_batch // accum
    put('batch_size', new_batch, f'{info.num_train} training images make {updates} updates of {new_batch} per epoch'
                                 + ('' if new_batch == batch else f', {info.num_train // batch // accum} of {batch}'))
    if epochs is not None:
        old_epochs, old_warm = cfg.get('epochs'), cfg.get('warmup_epochs')
        put('epochs', epochs, '--epochs')
        if old_warm and old_epochs:
            warm = min(epochs, int(round(old_warm * epochs / old_epochs)))
            put('warmup_epochs', warm, f'the recipe\'s share of the run, {old_warm}/{old_epochs} of {epochs} epochs')
    warm = fitted.get('warmup_epochs')
    if warm is not None and fitted.get('epochs') is not None and warm > fitted['epochs']:
        put('warmup_epochs', fitted['epochs'], 'at most the run\'s epochs')
    dev = _default_device() if device == 'auto' else _check_device(device)
    how = ': torch sees no CUDA GPU here; mlit-config --device cuda fits a copy for a GPU machine' \
        if device == 'auto' and dev == 'cpu' else ''
    put('device', dev, f'this machine{how}' if device == 'auto' else '--device')
    if dev.startswith('cuda'):
        if not cfg.get('amp'):
            put('amp', True, 'float16 mixed precision with a loss scaler on a CUDA GPU (Sec. 3.2)')
            put('amp_dtype', 'float16', 'as the paper')
    elif cfg.get('amp'):
        put('amp', False, f'float32 on {dev}: train.py\'s float16 autocast has a loss scaler on CUDA only; to try '
                          f'bfloat16 add --amp --amp-dtype bfloat16 to train.py')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if not dev.startswith('cuda') and cores < int(cfg.get('workers') or 4):  # train.py's default: 4 loader workers
        put('workers', cores, f'the {cores} CPU cores of this machine; more loader workers than cores only slow it')
    return fitted, changes


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 16).strip()[1:-1]


def fitted_text(text: str, changes: Sequence[Change], header: str) -> str:
    """The recipe's ``text`` with each changed top-level key's line replaced (the reason as its comment) and new keys
    appended, below ``header``; the recipe's own comments are kept."""
    lines = text.splitlines()
    added = []
    for c in changes:
        line = f'{c.key}: {_yaml_value(c.new)}'
        line = f'{line:<31} # fitted (was {_yaml_value(c.old) if c.old != "(unset)" else "unset"}): {c.why}'
        at = next((i for i, l in enumerate(lines) if l.startswith(f'{c.key}:')), None)
        if at is None:
            added.append(line)
        else:
            lines[at] = line
    body = '\n'.join(lines).rstrip('\n') + '\n'
    if added:
        body += '\n# fitted by mlit-config: keys the recipe did not set\n' + '\n'.join(added) + '\n'
    return header + body


def write_fitted_recipe(name: str, out: Union[str, os.PathLike], data_dir: Union[str, os.PathLike],
                        epochs: Optional[int] = None, device: str = 'auto', overwrite: bool = False
                        ) -> Tuple[Path, List[Change]]:
    """Write recipe ``name`` fitted to the ImageFolder ``data_dir`` (:func:`fit_recipe`) to ``out``, atomically and
    checked (the written file parses to the fitted values and passes :func:`~timm_mlit.argtypes.
    check_train_recipe`). Returns the path and the changes."""
    from timm_mlit.data.folder import inspect_image_folder
    src = recipe_path(name)
    dest = _out_path(src, out)
    text = src.read_text(encoding='utf-8')
    cfg = yaml.safe_load(text)
    info = inspect_image_folder(data_dir, cfg.get('train_split') or 'train',
                                'validation' if cfg.get('val_split') is None else cfg['val_split'])
    fitted, changes = fit_recipe(cfg, info, epochs, device, name)
    val = f', {info.num_val} validation images' if info.val_dir else ', no validation folder'
    header = (f'# Fitted by mlit-config from {name} to {info.root.resolve()} ({info.num_train} training images in '
              f'{info.num_classes} classes{val}) for {fitted["device"]}:\n'
              f'#   {", ".join(f"{c.key} {_yaml_value(c.new)}" for c in changes)}\n'
              f'# Train with: python train.py --config {dest}\n'
              f'# (the recipe as shipped follows; the lines marked "fitted" are this copy\'s)\n#\n')
    new_text = fitted_text(text, changes, header)

    def check(tmp):
        if yaml.safe_load(Path(tmp).read_text(encoding='utf-8')) != fitted:
            raise RuntimeError(f'the fitted copy of {name} does not parse to the fitted values (a bug)')
        check_train_recipe(tmp, TRAIN_PY_KEYS)
    write_text(dest, new_text, overwrite=overwrite, what='--out', check=check)
    return dest, changes


_STATES = {
    'published': 'weights on the Hub',
    'staged': 'weights in this clone (hub_cards/)',
    'staged elsewhere': 'staged in the repository (a clone has the weights)',
    'recipe': 'recipe only, no weights',
}


def tag_lines() -> List[str]:
    """One line per pretrained tag of the zoo: ``model.tag``, whether weights exist where this package runs (what
    ``timm.list_models(pretrained=True)`` lists), the recipe it follows and what the weights are."""
    from timm_mlit.models._pretrained_tags import tag_state, tagged_models, tags_of
    rows = []
    for model in tagged_models():
        for tag in tags_of(model).values():
            name = f'{model}.{tag.tag}'
            recipe = tag.config or 'MAE pre-training'
            if tag.encoder:
                recipe += f' from {model}.{tag.encoder}'
            rows.append((name, _STATES[tag_state(name)], recipe, tag.description))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f'{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}' for a, b, c, d in rows]


def tag_commands(name: str) -> str:
    """The commands that make ``name``'s weights (``mlit_xxs.c10``), in order, each under a comment saying what it
    does. Raises ``ValueError`` naming the tags for an unknown name."""
    from timm_mlit.models._load_errors import clone_note, format_steps, recipe_commands
    from timm_mlit.models._pretrained_tags import find_tag, tagged_models, tags_of
    tag = find_tag(name)
    if tag is None:
        example = tagged_models()[-1]
        raise ValueError(f'--commands {name}: not a pretrained tag of the zoo; expected MODEL.TAG, e.g. '
                         f'{example}.{next(iter(tags_of(example)))} (mlit-config --tags lists them)')
    steps = recipe_commands(name.split('.')[0], tag)
    return f'{format_steps(steps, indent="")}\n# {clone_note(steps)}'


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='mlit-config', description=__doc__, formatter_class=ProseHelpFormatter)
    p.add_argument('name', nargs='?', help='recipe name, e.g. table6_scratch_cifar10 or own_data (see --list)')
    p.add_argument('--list', action='store_true', help='list the shipped recipes and the data each reads')
    p.add_argument('--tags', action='store_true',
                   help='list the pretrained tags (model.tag): which have weights here and which are recipes')
    p.add_argument('--commands', default='', metavar='MODEL.TAG',
                   help="print the commands of a tag's recipe, in order (e.g. mlit_xxs.c10)")
    p.add_argument('--out', default='', help='write the recipe to this file (or into this folder) instead of '
                                             'printing its installed path')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    fit = p.add_argument_group('fitting a copy to your ImageFolder (needs --out)')
    fit.add_argument('--data-dir', default='', metavar='FOLDER',
                     help='an ImageFolder (FOLDER/train/<class>/<images>, FOLDER/validation/<class>/<images> or '
                          'val/): set num_classes, batch_size, data_dir, device and amp for it and say what changed')
    fit.add_argument('--epochs', type=positive_int, default=None,
                     help="the run's epochs; the warm-up keeps the recipe's share (needs --data-dir)")
    fit.add_argument('--device', default='auto',
                     help="the device train.py will use: 'auto' (default: cuda where torch sees a GPU, else cpu), "
                          "'cuda', 'cpu', ... (needs --data-dir)")
    args = p.parse_args(argv)
    if args.list:
        names = list_recipes()
        width = max(map(len, names))
        for name in names:
            data = recipe_dataset(name).split(';')[0]
            print(f'{name:<{width}}  {data}'.rstrip())
        return 0
    if args.tags:
        print('\n'.join(tag_lines()))
        return 0
    if args.commands:
        try:
            print(tag_commands(args.commands))
        except ValueError as e:
            p.error(str(e))
        return 0
    if not args.name:
        p.error('name a recipe (e.g. mlit-config table6_scratch_cifar10), or pass --list, --tags or --commands '
                'MODEL.TAG')
    if (args.epochs is not None or args.device != 'auto') and not args.data_dir:
        p.error('--epochs and --device fit a copy to your data: pass --data-dir FOLDER and --out FILE with them')
    if args.data_dir and not args.out:
        p.error(f'--data-dir {args.data_dir} writes a copy fitted to the folder: pass --out FILE (then train with '
                f'python train.py --config FILE)')
    try:
        given = recipe_path(args.name)
        if given.resolve().parent != RECIPE_DIR:  # a file given by path must be a train.py recipe (shipped ones are)
            check_train_recipe(str(given), TRAIN_PY_KEYS)
        if args.data_dir:
            path, changes = write_fitted_recipe(args.name, args.out, args.data_dir, args.epochs, args.device,
                                                args.overwrite)
            sys.stderr.write(f'mlit-config: wrote {path}, {args.name} fitted to {args.data_dir}:\n' + ''.join(
                f'  {c.key}: {_yaml_value(c.old) if c.old != "(unset)" else "unset"} -> {_yaml_value(c.new)}: '
                f'{c.why}\n' for c in changes))
            if (yaml.safe_load(path.read_text(encoding='utf-8')) or {}).get('pretrained'):
                sys.stderr.write(f'mlit-config: {args.name} starts from an MAE encoder: add --pretrained-path '
                                 f'ENCODER.safetensors to train.py (mlit-pretrain writes one).\n')
        else:
            path = write_recipe(args.name, args.out, args.overwrite) if args.out else given
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # UserInputError and ArgumentError are ValueErrors
        p.error(str(e))
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(run_command('mlit-config', main))
