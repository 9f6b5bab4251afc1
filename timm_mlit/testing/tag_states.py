"""The zoo's pretrained tags registered with timm as if their states were others, for tests: a tag published, or a
staged folder made in a temporary folder, seen through timm's own registry (``timm.list_models(pretrained=True)``,
``timm.create_model(..., pretrained=True)``) exactly as an import of the package with those states would see it.

    with tag_states(staged={'mlit_xxs.c10'}, stage_root=tmp_path):   # tmp_path/mlit_xxs.c10/ a staged folder
        timm.create_model('mlit_xxs.c10', pretrained=True)           # loads tmp_path/mlit_xxs.c10/model.safetensors

The states (``PUBLISHED``, ``STAGED``, ``STAGE_ROOT`` of :mod:`timm_mlit.models._pretrained_tags`) decide each cfg's
weights when a family registers its models; here they are set, each tagged family's ``default_cfgs`` is built again
and its entrypoints registered again with timm (``register_model`` replaces a registration with its cfgs), and on
exit the same is done with the states put back.
"""
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional

import timm
from timm.models import register_model

from timm_mlit.models import _pretrained_tags as tags

__all__ = ['tag_states', 'register_again']


def register_again() -> None:
    """Build every tagged family's pretrained cfgs from the current states and register its models with timm again."""
    by_module = {}
    for arch in tags.tagged_models():
        fn = timm.models.model_entrypoint(arch)
        by_module.setdefault(fn.__module__, []).append(fn)
    for module_name, fns in by_module.items():
        module = sys.modules[module_name]
        module.default_cfgs = {**module.default_cfgs, **tags.pretrained_cfgs(fn.__name__ for fn in fns)}
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Overwriting .* in registry')
            for fn in fns:
                register_model(fn)


@contextlib.contextmanager
def tag_states(published: Optional[Iterable[str]] = None, staged: Optional[Iterable[str]] = None,
               stage_root: Optional[Path] = None) -> Iterator[None]:
    """Register the zoo's tags as if ``published`` / ``staged`` (model.tag names) were the package's PUBLISHED /
    STAGED and ``stage_root`` held the staged folders (None: keep that state as it is); restore on exit."""
    saved = tags.PUBLISHED, tags.STAGED, tags.STAGE_ROOT
    try:
        if published is not None:
            tags.PUBLISHED = frozenset(published)
        if staged is not None:
            tags.STAGED = frozenset(staged)
        if stage_root is not None:
            tags.STAGE_ROOT = Path(stage_root)
        register_again()
        yield
    finally:
        tags.PUBLISHED, tags.STAGED, tags.STAGE_ROOT = saved
        register_again()
