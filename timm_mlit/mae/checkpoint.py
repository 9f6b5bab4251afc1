"""Checkpoints that survive a kill: atomic writes, exact resume, and the encoder handed to timm as safetensors.

Every file is written through :func:`timm_mlit._io.atomic_write` (a temporary name in the same folder, flushed to
disk and renamed over the target), so a process that dies mid-write leaves the previous complete file in place and
a stray ``*.tmp-PID``, which :func:`timm_mlit._io.remove_stale_temporaries` deletes when the run resumes. A
training checkpoint holds the model, optimizer, GradScaler and scheduler states, the number of finished epochs,
every RNG state (Python, NumPy, torch CPU and CUDA) and the run's arguments, so a resumed run continues exactly as
the uninterrupted one would have.

A checkpoint given to ``--resume`` is untrusted input: it holds only tensors and plain Python values (the NumPy RNG
state is stored as a tensor, the arguments as a plain dict) and is read with :func:`timm_mlit._io.torch_load`
(torch's loader with ``weights_only=True``), which cannot run code from the file.
"""
import pickle
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from timm_mlit._io import atomic_write, torch_load
from timm_mlit.errors import UserInputError

__all__ = [
    'save_checkpoint', 'load_checkpoint', 'export_encoder', 'rng_state', 'set_rng_state', 'gather_rng_states',
    'CheckpointError', 'plain_args',
]

class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file, what was expected and the fix."""


def _plain(value):
    """``value`` as JSON-able plain Python (dict / list / str / int / float / bool / None); other objects become
    their ``str`` so that a checkpoint never needs anything but ``weights_only=True`` to load."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def plain_args(args) -> Dict[str, Any]:
    """An ``argparse.Namespace`` (or dict) as a plain dict for a checkpoint."""
    return _plain(dict(vars(args)) if not isinstance(args, dict) else dict(args))


def rng_state() -> Dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'name': str(name), 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached_gaussian)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    python = state['python']  # a tuple when saved; weights_only loading keeps it, a JSON round trip makes lists
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state['numpy']
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state['name'], numpy_state['keys'].numpy().astype(np.uint32), numpy_state['pos'],
                       numpy_state['has_gauss'], numpy_state['cached_gaussian'])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states(distributed: bool) -> List[Dict[str, Any]]:
    """Every process's RNG state, in rank order (with ``distributed``, a collective: every process calls it), so
    that each resumes its own stream."""
    if not distributed:
        return [rng_state()]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_state())
    return states


def save_checkpoint(path, state: Dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp), overwrite=True)


def load_checkpoint(path) -> Dict[str, Any]:
    """Load a training checkpoint with :func:`timm_mlit._io.torch_load` (never unpickles code), with an error that
    names the file, says what was expected and what to do."""
    path = Path(path)
    expected = 'a last.pth written by the pre-training command'
    if path.is_dir():
        raise CheckpointError(f'--resume {path}: this is a folder, expected {expected}; pass {path / "last.pth"}.')
    if not path.is_file():
        raise CheckpointError(
            f'--resume {path}: No checkpoint there (no such file); expected {expected}. Pass the last.pth of an earlier run, or '
            f'--resume auto with that run\'s --output and --experiment.')
    if path.stat().st_size == 0:
        raise CheckpointError(
            f'--resume {path}: the file is empty (0 bytes); expected {expected}. It was cut short (disk full or a '
            f'copy that failed); resume from an intact copy, or start afresh without --resume.')
    try:
        state = torch_load(path)  # earlier versions stored NumPy's RNG state as an array: allowed
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'--resume {path}: the file holds Python objects other than tensors and plain values, which are not '
            f'loaded (a checkpoint could run code that way); expected {expected}. Resume from a checkpoint this '
            f'command wrote. ({str(e).splitlines()[0]})') from e
    except Exception as e:
        raise CheckpointError(
            f'--resume {path} is not a readable checkpoint ({type(e).__name__}: {e}); expected {expected}. It may be '
            f'truncated or another kind of file; resume from another file or start afresh without --resume.') from e
    required = {'model', 'optimizer', 'scheduler', 'epoch', 'rng'}
    if not isinstance(state, dict) or required - set(state):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f'--resume {path} is not a pretraining checkpoint of this command: expected the keys {sorted(required)}, '
            f'found {found}. A train.py checkpoint or an encoder export cannot be resumed here; pass the run\'s '
            f'last.pth.')
    if not isinstance(state['epoch'], int) or state['epoch'] < 0 or not isinstance(state['rng'], list) \
            or not state['rng'] or not isinstance(state.get('args', {}), dict):
        raise CheckpointError(
            f'--resume {path}: malformed checkpoint (epoch {state["epoch"]!r}, {type(state["rng"]).__name__} of RNG '
            f'states); expected {expected}. Resume from another file.')
    return state


def export_encoder(encoder: torch.nn.Module, path, metadata: Optional[Dict[str, str]] = None) -> Path:
    """The encoder alone, as a timm checkpoint in safetensors: what ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=path))`` and train.py's ``--pretrained-path`` load."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    meta = {'format': 'pt', **{k: str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=True)
