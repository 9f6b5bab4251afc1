"""The MoE feed-forward of an mLiT encoder layer (gate + shared-V/W2 SwiGLU experts), and how its loss leaves it.

A training forward leaves the layer's balancing loss L (Eq. 12) on the layer; :func:`moe_loss` sums it over all
MoE layers of a model (mLiT, the MAE wrapper, a DDP- or compile-wrapped model alike), so a training loop does

    loss = criterion(model(x), y) + moe_loss(model)

An eval forward clears it (the loss is absent in eval), a later training forward replaces it: it is always the
last forward pass's. :func:`expert_load` reports which share of the routed token slots each expert received.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn

from ._tracing import is_graph_capture
from .experts import SharedSwiGLUExperts
from .gate import GateOutput, NoisyTopKGate

__all__ = ['MoEFeedForward', 'MoEStash', 'moe_loss', 'expert_load']


class MoEStash:
    """Tensors of the last forward pass, kept for the training loop.

    A deep copy or pickle of the model (EMA, ``torch.save(model)``) gets an empty stash: the loss tensor is part of
    a live autograd graph and must not be copied with the weights.
    """

    def __init__(self):
        self.aux_loss: Optional[torch.Tensor] = None
        self.tokens_per_expert: Optional[torch.Tensor] = None

    def __deepcopy__(self, memo):
        return MoEStash()

    def __reduce__(self):
        return MoEStash, ()

    def clear(self) -> None:
        self.aux_loss = None
        self.tokens_per_expert = None


class MoEFeedForward(nn.Module):
    """y = Σ_i G(x)_i FFN_i(x) (Eq. 1) over the tokens of a (..., m) tensor, gate in float32."""

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            num_experts: int,
            top_k: int = 2,
            drop: float = 0.1,
            drop_mode: str = 'expert',
            noise_eps: float = 1e-2,
            importance_weight: float = 1e-2,
            load_weight: float = 1e-2,
            cv_squared: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.gate = NoisyTopKGate(
            dim,
            num_experts,
            top_k=top_k,
            noise_eps=noise_eps,
            importance_weight=importance_weight,
            load_weight=load_weight,
            cv_squared=cv_squared,
            **dd,
        )
        self.experts = SharedSwiGLUExperts(dim, hidden_dim, num_experts, drop=drop, drop_mode=drop_mode, **dd)
        self.stash = MoEStash()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gate = self.gate(x)
        y = self.experts(x, gate)
        if not torch.jit.is_scripting():
            if not is_graph_capture():
                self._record(gate)
        return y.reshape(shape)

    @torch.jit.unused
    def _record(self, gate: GateOutput) -> None:
        self.stash.aux_loss = gate.aux_loss
        self.stash.tokens_per_expert = (gate.combine > 0).sum(0).detach()


def _moe_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoEFeedForward)]


def moe_loss(model: nn.Module) -> torch.Tensor:
    """Σ over the model's MoE layers of L (Eq. 12) from the last forward pass; a zero scalar if there is none
    (eval forward, no forward yet, or a model without MoE layers)."""
    losses = [m.stash.aux_loss for _, m in _moe_layers(model) if m.stash.aux_loss is not None]
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).sum()


def expert_load(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Per MoE layer (by module name): the share of the last forward's routed token slots that each expert got.

    Each token picks k experts, so a layer's shares sum to 1; a perfectly balanced layer has 1/t everywhere.
    """
    out = {}
    for name, m in _moe_layers(model):
        counts = m.stash.tokens_per_expert
        if counts is not None:
            out[name] = counts.float() / counts.sum().clamp_min(1)
    return out
