"""Auxiliary losses: the one record a layer's forward leaves, and the one function that reads them.

Two layers have a loss besides the task's:

* mLiT's MoE feed-forward (:class:`~timm_mlit.layers.mlit_moe.MoEFeedForward`): the balancing loss
  L = L_importance + L_load of mLiT Eq. 12 ("How Lightweight Can A Vision Transformer Be", arXiv:2407.17783),
  computed by its gate (:class:`~timm_mlit.layers.mlit_gate.NoisyTopKGate`) in the forward;
* Mobile V-MoE's per-image router (:class:`~timm_mlit.layers.vmoe_router.PerImageRouter`): λ times the
  cross-entropy toward super-classes, or the end-to-end importance loss ("Mobile V-MoEs: Scaling Down Vision
  Transformers via Sparse Mixture-of-Experts", arXiv:2309.04354, Mobile V-MoE Sec. 2.2), computed by the router
  from the logits its forward recorded and the targets, which only the training loop has.

Each such module keeps an :class:`AuxRecord` as ``aux_record``, names its loss in ``aux_loss_name`` and computes it
in ``aux_loss(target)``. :func:`aux_losses` is the one reader: it returns a model's losses of the last forward by
name (``'moe_loss'``, ``'router_loss'``), each summed over the model's modules. The training task
(``timm_mlit.training``), the MAE model, ``MLiT.moe_loss``, ``MobileVMoE.router_loss`` and ``timm_mlit.moe_loss``
all read it; a hand-written loop does

    out = model(x)
    loss = criterion(out, y) + sum(aux_losses(model, y).values())

Because every reader goes through it, the one check lives here: a loss whose layer ran under reentrant gradient
checkpointing (no_grad inside a computation that back-propagates, :meth:`AuxRecord.note_grad_mode`) has no gradient,
and reading it with autograd on raises :class:`DetachedAuxLossError` instead of returning it.
"""
import sys
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint as torch_checkpoint
from timm.layers import use_reentrant_ckpt

__all__ = [
    'AuxRecord', 'AuxTerm', 'DetachedAuxLossError', 'aux_modules', 'aux_loss_terms', 'aux_losses', 'aux_metrics',
    'clear_aux_records',
]


class AuxRecord:
    """What a module's last forward left for its auxiliary loss and statistics.

    ``loss``: a loss the forward computed (the gate's L, mLiT Eq. 12); ``logits``: logits whose loss needs the
    targets (the router's W·pool(x), Mobile V-MoE Eq. 2); ``counts``: per-expert counts of routed slots (detached);
    ``ran_without_grad``: the forward ran with autograd off inside a computation that back-propagates (reentrant
    gradient checkpointing, :meth:`note_grad_mode`), so ``loss`` / ``logits`` have no gradient although the model is
    being trained.

    A deep copy or pickle of the model (EMA, ``torch.save(model)``) gets an empty record: its tensors are part of a
    live autograd graph and must not be copied with the weights.
    """

    def __init__(self):
        self.loss: Optional[torch.Tensor] = None
        self.logits: Optional[torch.Tensor] = None
        self.counts: Optional[torch.Tensor] = None
        self.ran_without_grad = False

    def __deepcopy__(self, memo):
        return AuxRecord()

    def __reduce__(self):
        return AuxRecord, ()

    def clear(self) -> None:
        self.loss = None
        self.logits = None
        self.counts = None
        self.ran_without_grad = False

    def note_grad_mode(self, x: torch.Tensor, training: bool) -> None:
        """Record whether the layer runs with autograd off inside a computation that has a graph: under reentrant
        gradient checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``, which timm's ``checkpoint`` /
        ``checkpoint_seq`` use under ``TIMM_REENTRANT_CKPT=1``), which runs the function under no_grad on inputs
        that carry a graph and recomputes it in backward, or on an input ``x`` that carries a graph. A loss left
        here then has no gradient. A ``torch.no_grad()`` forward (evaluation) has no graph anywhere and is not
        flagged, nor is a layer in eval mode (``training`` False), which leaves no loss to train: inference never
        pays for the search below. Not detected under torch.compile (which does not trace reentrant checkpoints)."""
        self.ran_without_grad = training and not torch.is_grad_enabled() and not _is_compiling() and (
            x.requires_grad or _under_reentrant_checkpoint())


def _is_compiling() -> bool:
    is_compiling = getattr(torch.compiler, 'is_compiling', None)
    return bool(is_compiling is not None and is_compiling())


_REENTRANT_FORWARD = getattr(getattr(getattr(torch_checkpoint, 'CheckpointFunction', None), 'forward', None),
                             '__code__', None)


def _under_reentrant_checkpoint() -> bool:
    """Whether the caller runs inside ``torch.utils.checkpoint``'s reentrant forward (``CheckpointFunction.forward``,
    which calls the checkpointed function under no_grad) on inputs of which one carries a graph, i.e. the
    checkpoint's output will back-propagate but nothing computed inside does. There is no torch API for this: the
    call stack is searched (only ever with autograd off)."""
    if _REENTRANT_FORWARD is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _REENTRANT_FORWARD:
            args = frame.f_locals.get('args', ())
            return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        frame = frame.f_back
    return False


class AuxTerm(NamedTuple):
    """One module's auxiliary loss of the last forward."""
    name: str  # the loss's key: 'moe_loss' or 'router_loss'
    module: nn.Module
    loss: torch.Tensor


class DetachedAuxLossError(RuntimeError):
    """An auxiliary loss came out of the forward without a gradient while the task loss has one."""


def aux_modules(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model`` (itself included, through any wrapper) that record an auxiliary loss."""
    return [m for m in model.modules() if isinstance(getattr(m, 'aux_record', None), AuxRecord)]


def clear_aux_records(model: nn.Module) -> None:
    """Forget the last forward's records, so that a later read sees only what the next forward leaves."""
    for m in aux_modules(model):
        m.aux_record.clear()


def aux_loss_terms(
        model: nn.Module,
        target: Optional[torch.Tensor] = None,
        task_loss: Optional[torch.Tensor] = None,
) -> List[AuxTerm]:
    """Every module's auxiliary loss of the last forward, in module order (modules without one are left out).

    Raises :class:`DetachedAuxLossError` for a loss without gradient, of a module with trainable parameters, when
    it is read with autograd on after its layer ran under reentrant gradient checkpointing
    (:meth:`AuxRecord.note_grad_mode`), or when ``task_loss`` back-propagates. A loss read under ``no_grad`` (for
    logging, or inside the checkpointed function itself) is returned as it is.
    """
    terms = []
    for m in aux_modules(model):
        loss = m.aux_loss(target)
        if loss is not None:
            terms.append(AuxTerm(m.aux_loss_name, m, loss))
    _check_attached(terms, task_loss)
    return terms


def _check_attached(terms: List[AuxTerm], task_loss: Optional[torch.Tensor]) -> None:
    """Raise when a loss of a module with trainable parameters has no gradient although it is read for training:
    its layer ran under reentrant checkpointing with autograd on, or ``task_loss`` back-propagates."""
    if not torch.is_grad_enabled():
        return
    training = task_loss is not None and task_loss.requires_grad
    detached = [t for t in terms if not t.loss.requires_grad and (training or t.module.aux_record.ran_without_grad)
                and any(p.requires_grad for p in t.module.parameters())]
    if not detached:
        return
    first = detached[0]
    reentrant = any(t.module.aux_record.ran_without_grad for t in detached)
    raise DetachedAuxLossError(
        f'timm_mlit: the {first.name} of {len(detached)} {type(first.module).__name__} module(s) has no gradient '
        + ('although the task loss has one, ' if training else 'although autograd is on, ')
        + 'so training would optimise the task loss alone. '
        + ('Reentrant gradient checkpointing is on (TIMM_REENTRANT_CKPT=1 or timm.layers.set_reentrant_ckpt('
           'True)): it runs the checkpointed blocks under no_grad, which detaches the loss the layers leave. '
           if use_reentrant_ckpt() else
           'The layers ran under reentrant gradient checkpointing (torch.utils.checkpoint(..., use_reentrant=True)'
           '), which runs them under no_grad and detaches the loss they leave. ' if reentrant else
           'Something ran the layers under no_grad (e.g. a reentrant torch.utils.checkpoint). ')
        + 'Fix: unset TIMM_REENTRANT_CKPT and checkpoint with use_reentrant=False (timm\'s default, non-reentrant '
          'checkpointing, keeps the loss and saves the same memory), or train without --grad-checkpointing / '
          'set_grad_checkpointing(False).')


def aux_losses(
        model: nn.Module,
        target: Optional[torch.Tensor] = None,
        task_loss: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """The auxiliary losses of ``model``'s last forward by name, each summed over the modules that have it.

    Args:
        model: Any module (a model, a DDP / compile wrapper, a training task, the MAE model).
        target: The class targets (hard (B,) or soft (B, C)); the router's super-class loss needs them and is left
            out without them.
        task_loss: If given and it back-propagates, a loss of a module with trainable parameters that has no
            gradient raises :class:`DetachedAuxLossError`. Without it, a loss whose layer ran under reentrant
            gradient checkpointing while autograd was on raises it too, when read with autograd on.

    Returns:
        ``{'moe_loss': ..., 'router_loss': ...}`` with the keys the model has a loss for (none after an eval
        forward for the MoE loss, none before any forward).
    """
    terms = aux_loss_terms(model, target, task_loss)
    by_name: Dict[str, List[torch.Tensor]] = {}
    for term in terms:
        by_name.setdefault(term.name, []).append(term.loss)
    return {name: torch.stack(losses).sum() for name, losses in by_name.items()}


@torch.no_grad()
def aux_metrics(model: nn.Module, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Cheap per-step statistics of the last forward for logging (the guided router's ``'router_acc'``)."""
    out: Dict[str, torch.Tensor] = {}
    for m in aux_modules(model):
        for name, value in m.aux_metrics(target).items():
            out.setdefault(name, value)
    return out
