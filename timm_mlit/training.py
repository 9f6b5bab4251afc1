"""Where the MoE and router losses meet timm's training task: timm's unmodified train.py then optimises task loss + L.

train.py computes its loss in a ``timm.task`` task (``result = task(input, target)``), divides it for gradient
accumulation and hands it to the GradScaler or ``backward()``. ``import timm_mlit`` (what ``--device-modules
timm_mlit`` does) wraps ``TrainingTask.__call__``: after the task's own forward, the balancing loss L (Eq. 12) that
the forward left on the MoE layers inside the task is added to ``result['loss']`` at weight 1, the paper's
objective for supervised training and fine-tuning, and reported as ``result['moe_loss']``. Because it is part of
the loss train.py back-propagates, it is scaled by the GradScaler in fp16 and divided for accumulation exactly like
the task loss (an autograd hook on the model output would skip both). The class is patched, not an instance, so
it also reaches the ``ClassificationTask`` that train.py imported before it loaded ``--device-modules``.

Mobile V-MoE's router loss needs the targets, and this is where the criterion sees them: for a model with a
per-image router the wrapper also adds ``router.loss(target)`` (λ·CE toward the super-class of each target, soft
targets from mixup included, or the end-to-end importance loss), reported as ``result['router_loss']`` and, for a
guided router, ``result['router_acc']``.

A task without MoE layers or routers (any other timm model) returns exactly what it returned before: no key added,
the same loss tensor. Stale losses cannot leak in: the records are cleared before each task call.

Gradient checkpointing: timm's default (non-reentrant ``torch.utils.checkpoint``) keeps these losses in the graph.
Reentrant checkpointing (``TIMM_REENTRANT_CKPT=1`` with ``--grad-checkpointing``, read by timm's ``checkpoint`` /
``checkpoint_seq`` through ``timm.layers.use_reentrant_ckpt()``) runs the checkpointed blocks under ``no_grad`` and
recomputes them in backward, so a loss the layers leave behind has no gradient and train.py would optimise the task
loss alone while logging the MoE loss. That case raises :class:`DetachedAuxLossError` instead of training silently.
"""
import functools
import logging

import torch
from timm.layers import use_reentrant_ckpt
from timm.task import TrainingTask

from timm_mlit.layers.image_router import PerImageRouter
from timm_mlit.layers.moe import MoEFeedForward

__all__ = ['install', 'uninstall', 'is_installed', 'DetachedAuxLossError']


class DetachedAuxLossError(RuntimeError):
    """The MoE / router loss came out of the forward without a gradient while the task loss has one."""


def _check_attached(task_loss: torch.Tensor, pieces, what: str) -> None:
    """Raise when ``task_loss`` back-propagates but a loss of trainable ``pieces`` (module, loss) does not."""
    if not (torch.is_grad_enabled() and task_loss.requires_grad):
        return
    detached = [type(m).__name__ for m, loss in pieces
                if not loss.requires_grad and any(p.requires_grad for p in m.parameters())]
    if detached:
        reentrant = use_reentrant_ckpt()
        raise DetachedAuxLossError(
            f'timm_mlit: the {what} of {len(detached)} {detached[0]} module(s) has no gradient although the task loss '
            f'has one, so training would optimise the task loss alone. '
            + ('Reentrant gradient checkpointing is on (TIMM_REENTRANT_CKPT=1 or timm.layers.set_reentrant_ckpt('
               'True)): it runs the checkpointed blocks under no_grad, which detaches the loss the layers leave. '
               if reentrant else 'Something ran the layers under no_grad (e.g. a reentrant torch.utils.checkpoint). ')
            + 'Fix: unset TIMM_REENTRANT_CKPT (timm\'s default, non-reentrant checkpointing, keeps the loss and saves '
              'the same memory) or train without --grad-checkpointing.')


_logger = logging.getLogger(__name__)
_ORIGINAL_CALL = TrainingTask.__call__  # nn.Module's, unless a timm version defines its own
_OWN_CALL = '__call__' in TrainingTask.__dict__


def _target(args, kwargs):
    """The task's ``target`` argument (timm's tasks are called as ``task(input, target)``)."""
    if 'target' in kwargs:
        return kwargs['target']
    return args[1] if len(args) > 1 else None


@functools.wraps(_ORIGINAL_CALL)
def _task_call_with_moe_loss(self: TrainingTask, *args, **kwargs):
    layers = [m for m in self.modules() if isinstance(m, MoEFeedForward)]
    routers = [m for m in self.modules() if isinstance(m, PerImageRouter)]
    if not layers and not routers:
        return _ORIGINAL_CALL(self, *args, **kwargs)
    for module in layers + routers:
        module.stash.clear()
    result = _ORIGINAL_CALL(self, *args, **kwargs)
    if not isinstance(result, dict) or 'loss' not in result:
        return result
    extra = []
    pieces = [(layer, layer.stash.aux_loss) for layer in layers if layer.stash.aux_loss is not None]
    losses = [loss for _, loss in pieces]
    if losses:
        _check_attached(result['loss'], pieces, 'MoE balancing loss (Eq. 12)')
        moe = torch.stack(losses).sum()
        result['moe_loss'] = moe.detach()
        extra.append(f'MoE balancing loss (Eq. 12, weight 1) of {len(losses)} MoE layers')
        result['loss'] = result['loss'] + moe
    target = _target(args, kwargs)
    if routers and target is not None:
        router_pieces = [(r, loss) for r, loss in ((r, r.loss(target)) for r in routers) if loss is not None]
        router = [loss for _, loss in router_pieces]
        if router:
            _check_attached(result['loss'], router_pieces, 'router loss')
            total = torch.stack(router).sum()
            result['router_loss'] = total.detach()
            result['loss'] = result['loss'] + total
            guided = any(r.guided for r in routers)
            extra.append(
                'router cross-entropy toward super-classes (Mobile V-MoE, weight λ)' if guided else
                'end-to-end router importance loss')
        accuracy = [a for a in (r.accuracy(target) for r in routers) if a is not None]
        if accuracy:  # only the guided router's accuracy: no per-step expert histogram on the training path
            result['router_acc'] = accuracy[0]
    if extra and not getattr(self, '_timm_mlit_announced', False):
        _logger.info(f'timm_mlit: training loss = {type(self).__name__} loss + ' + ' + '.join(extra))
        self._timm_mlit_announced = True
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
