"""Where the auxiliary losses meet timm's training tasks: task loss + the model's ``aux_losses``.

The losses themselves are computed in the layers and read through one function,
:func:`timm_mlit.layers.aux_loss.aux_losses`: the MoE balancing loss L of mLiT Eq. 12 (``'moe_loss'``, weight 1,
the paper's objective for supervised training and fine-tuning) and Mobile V-MoE's router loss (``'router_loss'``:
λ·CE toward the super-class of each target, soft targets from mixup included, or the end-to-end importance loss;
Mobile V-MoE Sec. 2.2). :func:`add_aux_losses` adds them to a task's ``result['loss']``, reports each under its
name (detached) and, for a guided router, ``result['router_acc']``.

Two ways in, one function:

* :class:`AuxLossTask`, a timm ``TrainingTask`` (a ``ClassificationTask`` whose forward adds the losses, as timm's
  distillation tasks add theirs), for hand-written loops: ``task = AuxLossTask(model, criterion)``;
* timm's train.py builds its own ``ClassificationTask``, so ``import timm_mlit`` (what ``--device-modules
  timm_mlit`` does) makes ``TrainingTask.__call__`` a thin delegate that runs the task's own call inside
  :func:`add_aux_losses`. The class is patched, not an instance, so it also reaches the ``ClassificationTask``
  that train.py imported before it loaded ``--device-modules``.

The losses are part of the loss train.py back-propagates, so they are scaled by the GradScaler in fp16 and divided
for gradient accumulation exactly like the task loss (an autograd hook on the model output would skip both). A task
without MoE layers or routers (any other timm model) returns exactly what it returned before: no key added, the
same loss tensor. Stale losses cannot leak in: the records are cleared before each task call.

Gradient checkpointing: timm's default (non-reentrant ``torch.utils.checkpoint``) keeps these losses in the graph.
Reentrant checkpointing (``TIMM_REENTRANT_CKPT=1`` with ``--grad-checkpointing``, read by timm's ``checkpoint`` /
``checkpoint_seq`` through ``timm.layers.use_reentrant_ckpt()``) runs the checkpointed blocks under ``no_grad`` and
recomputes them in backward, so a loss the layers leave behind has no gradient and train.py would optimise the task
loss alone while logging the MoE loss. That case raises :class:`DetachedAuxLossError` instead of training silently.
"""
import functools
import logging
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.task import ClassificationTask, TrainingTask

from timm_mlit.layers.aux_loss import DetachedAuxLossError, aux_losses, aux_metrics, aux_modules, clear_aux_records

__all__ = ['AuxLossTask', 'add_aux_losses', 'install', 'uninstall', 'is_installed', 'DetachedAuxLossError']

_logger = logging.getLogger(__name__)
_ORIGINAL_CALL = TrainingTask.__call__  # nn.Module's, unless a timm version defines its own
_OWN_CALL = '__call__' in TrainingTask.__dict__

_DESCRIPTION = {
    'moe_loss': 'MoE balancing loss (mLiT Eq. 12, weight 1)',
    'router_loss': 'router loss (Mobile V-MoE Sec. 2.2: λ·CE toward super-classes, or end-to-end importance)',
}


def add_aux_losses(
        task: nn.Module,
        run: Callable[[], Dict[str, torch.Tensor]],
        target: Optional[torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """``run()`` (a task's forward) with the auxiliary losses of the modules inside ``task`` added to its loss.

    The records are cleared first, so only what this forward leaves is read. A result that is not a dict with a
    ``'loss'`` is returned as it is.
    """
    if not aux_modules(task):
        return run()
    clear_aux_records(task)
    result = run()
    if not isinstance(result, dict) or 'loss' not in result:
        return result
    losses = aux_losses(task, target, task_loss=result['loss'])
    for name, loss in losses.items():
        result[name] = loss.detach()
        result['loss'] = result['loss'] + loss
    if target is not None:
        result.update(aux_metrics(task, target))
    if losses and not getattr(task, '_timm_mlit_announced', False):
        _logger.info(f'timm_mlit: training loss = {type(task).__name__} loss + '
                     + ' + '.join(_DESCRIPTION.get(name, name) for name in losses))
        task._timm_mlit_announced = True
    return result


class AuxLossTask(ClassificationTask):
    """Supervised classification with the model's auxiliary losses added: ``loss = criterion(model(x), y) +
    Σ aux_losses(model, y)``; the result also holds each auxiliary loss (detached) under its name.

    Takes ``ClassificationTask``'s arguments. It keeps timm's own ``__call__``, so the import-time patch of
    ``TrainingTask.__call__`` does not add the losses a second time.
    """
    __call__ = _ORIGINAL_CALL

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        return add_aux_losses(self, lambda: super(AuxLossTask, self).forward(input, target), target)


def _target(args, kwargs):
    """The task's ``target`` argument (timm's tasks are called as ``task(input, target)``)."""
    if 'target' in kwargs:
        return kwargs['target']
    return args[1] if len(args) > 1 else None


@functools.wraps(_ORIGINAL_CALL)
def _task_call_with_aux_losses(self: TrainingTask, *args, **kwargs):
    """``TrainingTask.__call__`` once installed: the task's own call inside :func:`add_aux_losses`."""
    return add_aux_losses(self, lambda: _ORIGINAL_CALL(self, *args, **kwargs), _target(args, kwargs))


def install() -> None:
    """Wrap ``timm.task.TrainingTask.__call__`` (idempotent)."""
    TrainingTask.__call__ = _task_call_with_aux_losses


def uninstall() -> None:
    """Restore timm's own ``TrainingTask.__call__``."""
    if _OWN_CALL:
        TrainingTask.__call__ = _ORIGINAL_CALL
    elif '__call__' in TrainingTask.__dict__:
        del TrainingTask.__call__


def is_installed() -> bool:
    return TrainingTask.__call__ is _task_call_with_aux_losses
