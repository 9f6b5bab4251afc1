"""The console scripts a ``pip install`` puts on the PATH, one per command (each also runs as ``python -m MODULE``):

    mlit-demo                 python -m timm_mlit                              the main job (the whole life cycle)
    mlit-pretrain             python -m timm_mlit.mae.pretrain                 mmLiT MAE pre-training
    mlit-push                 python -m timm_mlit.hub.push                     stage a run / publish to the Hub
    mlit-run-info             python -m timm_mlit.hub.run_info                 record a run's hardware and wall time
    mlit-prepare-data         python -m timm_mlit.data.prepare                 CIFAR-10 / SVHN / Flowers102 ImageFolders
    mlit-derive-superclasses  python -m timm_mlit.scripts.derive_superclasses  Mobile V-MoE super-classes
    mlit-config               python -m timm_mlit.recipes                      the shipped train.py recipes, by name
    mlit-validate / mlit-run  python -m timm_mlit.run                          timm's own scripts with timm_mlit loaded

A command's ``main`` returns what it made (a run folder, a commit) for Python callers; a console script's return
value is its exit status, so each one here calls its ``main`` and exits 0 when it returns. Input the user can fix
(a :class:`~timm_mlit.errors.UserInputError`, or an argument argparse refuses) exits 2 with one line that names the
input, what was expected and the fix (:func:`~timm_mlit.errors.run_command`); any other error is a bug and keeps its
traceback. Each function takes ``argv`` (default: ``sys.argv[1:]``), so ``timm_mlit.cli.push(['--staged', DIR])`` runs
the command in-process exactly as the console script does.
"""
import importlib
from typing import Optional, Sequence

from timm_mlit.errors import run_command

__all__ = ['demo', 'pretrain', 'push', 'run_info', 'prepare_data', 'derive_superclasses', 'config', 'validate', 'run']


PROGS = {
    'timm_mlit.demo:main': 'mlit-demo', 'timm_mlit.mae.pretrain:main': 'mlit-pretrain',
    'timm_mlit.hub.push:main': 'mlit-push', 'timm_mlit.hub.run_info:main': 'mlit-run-info',
    'timm_mlit.data.prepare:main': 'mlit-prepare-data',
    'timm_mlit.scripts.derive_superclasses:main': 'mlit-derive-superclasses', 'timm_mlit.recipes:main': 'mlit-config',
    'timm_mlit.run:validate_main': 'mlit-validate', 'timm_mlit.run:main': 'mlit-run',
}


def _call(target: str, argv: Optional[Sequence[str]] = None) -> int:
    module, _, function = target.partition(':')
    return run_command(PROGS[target], getattr(importlib.import_module(module), function), argv)


def demo(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.demo:main', argv)


def pretrain(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.mae.pretrain:main', argv)


def push(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.hub.push:main', argv)


def run_info(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.hub.run_info:main', argv)


def prepare_data(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.data.prepare:main', argv)


def derive_superclasses(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.scripts.derive_superclasses:main', argv)


def config(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.recipes:main', argv)


def validate(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.run:validate_main', argv)


def run(argv: Optional[Sequence[str]] = None) -> int:
    return _call('timm_mlit.run:main', argv)
