"""The MoE feed-forward of an mLiT encoder layer: y = Σ_i G(x)_i FFN_i(x), mLiT Eq. 1.

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, mLiT Sec. 2.1.2. The gate G is
:class:`~timm_mlit.layers.mlit_gate.NoisyTopKGate` (mLiT Eqs. 2-12), the experts
:class:`~timm_mlit.layers.mlit_experts.SharedSwiGLUExperts` (mLiT Eq. 13). Both come in as factories, as timm's
``Block`` takes ``attn_layer`` / ``mlp_layer``: the MoE options (k, gate noise, loss weights, expert dropout, expert
matmul) are declared and checked by the gate and the experts alone, under the names the models take them by, and a
model sets them once with ``functools.partial``::

    mlp_layer = partial(MoEFeedForward,
                        gate_layer=partial(NoisyTopKGate, top_k=2, gate_noise_eps=1e-2),
                        experts_layer=partial(SharedSwiGLUExperts, expert_drop_rate=0.1))
    mlp_layer(in_features=m, hidden_features=d_h, num_experts=t)

It is called as timm's ``Mlp`` is (``in_features``, ``hidden_features``), plus the layer's expert count.

A training forward leaves the gate's balancing loss L (mLiT Eq. 12) in the layer's
:class:`~timm_mlit.layers.aux_loss.AuxRecord` as the layer's ``'moe_loss'``, read by
:func:`~timm_mlit.layers.aux_loss.aux_losses`; :func:`moe_loss` is its ``'moe_loss'`` entry (zero when there is
none). An eval forward clears it (the loss is absent in eval), a later training forward replaces it: it is always the
last forward pass's. :func:`expert_load` reports which share of the routed token slots each expert received.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ._tracing import is_export, is_graph_capture, traced_size
from .aux_loss import AuxRecord, aux_losses
from .mlit_experts import SharedSwiGLUExperts
from .mlit_gate import GateOutput, NoisyTopKGate

__all__ = ['MoEFeedForward', 'moe_loss', 'expert_load']


class MoEFeedForward(nn.Module):
    """y = Σ_i G(x)_i FFN_i(x) (mLiT Eq. 1) over the tokens of a (..., m) tensor, gate in float32."""
    aux_loss_name = 'moe_loss'

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            num_experts: int,
            gate_layer: Callable[..., nn.Module] = NoisyTopKGate,
            experts_layer: Callable[..., nn.Module] = SharedSwiGLUExperts,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Token width m.
            hidden_features: Expert hidden size d_h.
            num_experts: Experts t.
            gate_layer: Called as ``gate_layer(m, t, device=..., dtype=...)``, returns a :class:`GateOutput`;
                carries k, the noise eps and the loss weights (:class:`NoisyTopKGate`).
            experts_layer: Called as ``experts_layer(m, d_h, t, device=..., dtype=...)``, then on (tokens, gate
                output); carries the expert dropout and matmul (:class:`SharedSwiGLUExperts`).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.gate = gate_layer(in_features, num_experts, **dd)
        self.experts = experts_layer(in_features, hidden_features, num_experts, **dd)
        self.aux_record = AuxRecord()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not self.training and is_export() and self._exportable():
                return self._forward_export(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gate = self.gate(x)
        y = self.experts(x, gate)
        if not torch.jit.is_scripting():
            if not is_graph_capture():
                self._record(gate, x)
        return y.reshape(shape)

    @torch.jit.unused
    def _exportable(self) -> bool:
        return (isinstance(self.gate, NoisyTopKGate) and isinstance(self.experts, SharedSwiGLUExperts)
                and self.experts.dim == self.gate.w_gate.in_features)

    @torch.jit.unused
    def _forward_export(self, x: torch.Tensor) -> torch.Tensor:
        """The eval forward as exported graphs take it (torch.jit tracing, torch.export, ONNX export): the gate's
        dense G by constant matmuls (:meth:`NoisyTopKGate.eval_combine`) and all t experts weighted by it
        (:meth:`SharedSwiGLUExperts.forward_combine`), the same function as :meth:`forward` in eval mode (up to
        float rounding) without its k argmax rounds, index arithmetic and row gathers, on the (B, N, m) tokens as
        they come (reshapes of constant shape; no shape ops): at batch 1 such ops, more than the matmuls, set the
        latency (docs/benchmarks.md, "On the edge")."""
        shape = x.shape
        if x.dim() not in (2, 3):
            x = x.reshape(-1, self.experts.dim)  # (..., m) tokens of another rank: flattened
        tokens = traced_size(x, 1) if x.dim() == 3 else 0
        y = self.experts.forward_combine(x, self.gate.eval_combine(x), tokens)
        return y.reshape(shape) if x.dim() == 2 and len(shape) != 2 else y

    @torch.jit.unused
    def _record(self, gate: GateOutput, x: torch.Tensor) -> None:
        self.aux_record.note_grad_mode(x, self.training)
        self.aux_record.loss = gate.aux_loss
        self.aux_record.counts = (gate.combine > 0).sum(0).detach()

    @torch.jit.unused
    def aux_loss(self, target: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The gate's L (mLiT Eq. 12) of the last training forward; it needs no targets."""
        return self.aux_record.loss

    @torch.jit.unused
    def aux_metrics(self, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return {}


def moe_loss(model: nn.Module) -> torch.Tensor:
    """Σ over the model's MoE layers of L (mLiT Eq. 12) from the last forward pass: ``aux_losses(model)['moe_loss']``,
    a zero scalar if there is none (eval forward, no forward yet, or a model without MoE layers)."""
    loss = aux_losses(model).get('moe_loss')
    return loss if loss is not None else torch.zeros(())


def expert_load(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Per MoE layer (by module name): the share of the last forward's routed token slots that each expert got.

    Each token picks k experts, so a layer's shares sum to 1; a perfectly balanced layer has 1/t everywhere.
    """
    out = {}
    for name, m in model.named_modules():
        counts = m.aux_record.counts if isinstance(m, MoEFeedForward) else None
        if counts is not None:
            out[name] = counts.float() / counts.sum().clamp_min(1)
    return out
