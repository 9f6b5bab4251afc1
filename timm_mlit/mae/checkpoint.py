"""Checkpoints that survive a kill: atomic writes, exact resume, and the encoder handed to timm as safetensors.

Every file is written to a temporary name in the same folder, flushed to disk and renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so a process that dies mid-write leaves the previous complete
file in place and a stray ``*.tmp-*`` that nothing reads. A training checkpoint holds the model, optimizer,
GradScaler and scheduler states, the number of finished epochs and every RNG state (Python, NumPy, torch CPU and
CUDA), so a resumed run continues exactly as the uninterrupted one would have.
"""
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = [
    'atomic_write', 'save_checkpoint', 'load_checkpoint', 'export_encoder', 'rng_state', 'set_rng_state',
    'CheckpointError',
]


class CheckpointError(RuntimeError):
    pass


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the file and rename it to ``path``; on failure remove the temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.name}.tmp-{os.getpid()}')
    try:
        write(str(tmp))
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def rng_state() -> Dict[str, Any]:
    state = {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path, state: Dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path) -> Dict[str, Any]:
    """Load a training checkpoint, with an error that says what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'No checkpoint at {path}. Pass the last.pth of an earlier run to --resume.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f'{path} is not a readable checkpoint ({type(e).__name__}: {e}). It may be truncated or not a '
            f'pretraining checkpoint; resume from another file.') from e
    missing = {'model', 'optimizer', 'scheduler', 'epoch', 'rng'} - set(state) if isinstance(state, dict) else {'model'}
    if missing:
        raise CheckpointError(f'{path} is not a pretraining checkpoint of this command (missing {sorted(missing)}).')
    return state


def export_encoder(encoder: torch.nn.Module, path, metadata: Optional[Dict[str, str]] = None) -> Path:
    """The encoder alone, as a timm checkpoint in safetensors: what ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=path))`` and train.py's ``--pretrained-path`` load."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    meta = {'format': 'pt', **{k: str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
