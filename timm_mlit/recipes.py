"""The training recipes (YAML configs) shipped inside the package, by name.

The recipes of mLiT's Tables 4-6 (arXiv:2407.17783) and of the zoo's other systems live in ``timm_mlit/configs/``:
a clone reads them there, an installed package has the very same files as package data. Name one by its file stem:

    mlit-config --list                                        # every recipe, one per line
    mlit-config table6_scratch_cifar10                        # print the installed file's path
    mlit-config table6_scratch_cifar10 --out recipe.yaml      # write a copy to edit
    python train.py --config "$(mlit-config table6_scratch_cifar10)" --model mlit_s --data-dir DATA

timm's ``train.py --config`` takes a file path, hence the printed path; ``mlit-pretrain --config`` and
:func:`recipe_path` accept a name or a path.

The zoo's pretrained tags (``mlit_xxs.c10``, ...) are recipes until their weights exist:

    mlit-config --tags                                        # every model.tag: weights or recipe, and its recipe
    mlit-config --commands mlit_xxs.mae_c100_ft_c10           # the tag's recipe, command by command, in order
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

from timm_mlit._io import command, copy_file
from timm_mlit.argtypes import check_train_recipe
from timm_mlit.configs import RECIPE_DIR, TRAIN_PY_KEYS, list_recipes, recipe_path
from timm_mlit.errors import run_command

__all__ = ['RECIPE_DIR', 'TRAIN_PY_KEYS', 'list_recipes', 'recipe_path', 'write_recipe', 'tag_lines',
           'tag_commands', 'main']


def write_recipe(name: str, out: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Write the shipped recipe ``name`` to ``out`` (a file, or a folder to hold ``NAME.yaml``), byte for byte and
    atomically (:func:`timm_mlit._io.atomic_write`). Refuses to replace an existing file unless ``overwrite``, and
    never replaces a device, FIFO, socket or symlink."""
    src = recipe_path(name)
    dest = Path(out).expanduser()
    if dest.is_dir():
        dest = dest / src.name
    if not dest.parent.is_dir():
        raise FileNotFoundError(f'--out {out}: folder {dest.parent} does not exist; create it first')
    return copy_file(src, dest, overwrite=overwrite, what='--out')


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
    p = argparse.ArgumentParser(prog='mlit-config', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('name', nargs='?', help='recipe name, e.g. table6_scratch_cifar10 (see --list)')
    p.add_argument('--list', action='store_true', help='list the shipped recipes')
    p.add_argument('--tags', action='store_true',
                   help='list the pretrained tags (model.tag): which have weights here and which are recipes')
    p.add_argument('--commands', default='', metavar='MODEL.TAG',
                   help="print the commands of a tag's recipe, in order (e.g. mlit_xxs.c10)")
    p.add_argument('--out', default='', help='write the recipe to this file (or into this folder) instead of '
                                             'printing its installed path')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    args = p.parse_args(argv)
    if args.list:
        for name in list_recipes():
            print(name)
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
    try:
        given = recipe_path(args.name)
        if given.resolve().parent != RECIPE_DIR:  # a file given by path must be a train.py recipe (shipped ones are)
            check_train_recipe(str(given), TRAIN_PY_KEYS)
        path = write_recipe(args.name, args.out, args.overwrite) if args.out else recipe_path(args.name)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # UserInputError and ArgumentError are ValueErrors
        p.error(str(e))
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(run_command('mlit-config', main))
