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
value is its exit status, so each one here calls its ``main`` and exits 0 when it returns (errors exit non-zero
through their exception or ``SystemExit``).
"""
import importlib

__all__ = ['demo', 'pretrain', 'push', 'run_info', 'prepare_data', 'derive_superclasses', 'config', 'validate', 'run']


def _call(target: str) -> int:
    module, _, function = target.partition(':')
    getattr(importlib.import_module(module), function)()
    return 0


def demo() -> int:
    return _call('timm_mlit.demo:main')


def pretrain() -> int:
    return _call('timm_mlit.mae.pretrain:main')


def push() -> int:
    return _call('timm_mlit.hub.push:main')


def run_info() -> int:
    return _call('timm_mlit.hub.run_info:main')


def prepare_data() -> int:
    return _call('timm_mlit.data.prepare:main')


def derive_superclasses() -> int:
    return _call('timm_mlit.scripts.derive_superclasses:main')


def config() -> int:
    return _call('timm_mlit.recipes:main')


def validate() -> int:
    return _call('timm_mlit.run:validate_main')


def run() -> int:
    return _call('timm_mlit.run:main')
