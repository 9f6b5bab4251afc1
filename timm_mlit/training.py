"""Where the MoE loss meets timm's training task: timm's unmodified train.py then optimises task loss + L.

train.py computes its loss in a ``timm.task`` task (``result = task(input, target)``), divides it for gradient
accumulation and hands it to the GradScaler or ``backward()``. ``import timm_mlit`` (what ``--device-modules
timm_mlit`` does) wraps ``TrainingTask.__call__``: after the task's own forward, the balancing loss L (Eq. 12) that
the forward left on the MoE layers inside the task is added to ``result['loss']`` at weight 1, the paper's
objective for supervised training and fine-tuning, and reported as ``result['moe_loss']``. Because it is part of
the loss train.py back-propagates, it is scaled by the GradScaler in fp16 and divided for accumulation exactly like
the task loss (an autograd hook on the model output would skip both). The class is patched, not an instance, so
it also reaches the ``ClassificationTask`` that train.py imported before it loaded ``--device-modules``.

A task without MoE layers (any other timm model) returns exactly what it returned before: no key added, the same
loss tensor. Stale losses cannot leak in: the MoE layers' records are cleared before each task call.
"""
import functools
import logging

import torch
from timm.task import TrainingTask

from timm_mlit.layers.moe import MoEFeedForward

__all__ = ['install', 'uninstall', 'is_installed']

_logger = logging.getLogger(__name__)
_ORIGINAL_CALL = TrainingTask.__call__  # nn.Module's, unless a timm version defines its own
_OWN_CALL = '__call__' in TrainingTask.__dict__


@functools.wraps(_ORIGINAL_CALL)
def _task_call_with_moe_loss(self: TrainingTask, *args, **kwargs):
    layers = [m for m in self.modules() if isinstance(m, MoEFeedForward)]
    if not layers:
        return _ORIGINAL_CALL(self, *args, **kwargs)
    for layer in layers:
        layer.stash.clear()
    result = _ORIGINAL_CALL(self, *args, **kwargs)
    losses = [layer.stash.aux_loss for layer in layers if layer.stash.aux_loss is not None]
    if not losses or not isinstance(result, dict) or 'loss' not in result:
        return result
    moe = torch.stack(losses).sum()
    if not getattr(self, '_timm_mlit_announced', False):
        _logger.info(
            f'timm_mlit: training loss = {type(self).__name__} loss + MoE balancing loss (Eq. 12, weight 1) of '
            f'{len(losses)} MoE layers')
        self._timm_mlit_announced = True
    result['moe_loss'] = moe.detach()
    result['loss'] = result['loss'] + moe
    return result


def install() -> None:
    """Wrap ``timm.task.TrainingTask.__call__`` (idempotent)."""
    TrainingTask.__call__ = _task_call_with_moe_loss


def uninstall() -> None:
    """Restore timm's own ``TrainingTask.__call__``."""
    if _OWN_CALL:
        TrainingTask.__call__ = _ORIGINAL_CALL
    elif '__call__' in TrainingTask.__dict__:
        del TrainingTask.__call__


def is_installed() -> bool:
    return TrainingTask.__call__ is _task_call_with_moe_loss
