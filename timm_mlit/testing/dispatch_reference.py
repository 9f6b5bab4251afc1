"""The per-expert dispatch form of mLiT's MoE layer (mLiT Figure 3, as in davidmrau/mixture-of-experts).

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, Sec. 2.1.2 (mLiT Eqs. 1 and 13).

Kept only as the baseline that the fused :class:`~timm_mlit.layers.mlit_experts.SharedSwiGLUExperts` is tested and
benchmarked against: it loops over the experts, gathers the tokens routed to each, runs that expert's SwiGLU on
them, weights by the gate and scatters the results back. It has the fused layer's parameter names and shapes, so
either can load the other's state dict. It syncs the host (data-dependent token counts) and is not used by models.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_mlit.layers.mlit_gate import GateOutput

__all__ = ['DispatchSwiGLUExperts']


class DispatchSwiGLUExperts(nn.Module):
    """Reference: ``y = Σ_i G_i drop(FFN_i(x))`` computed expert by expert on the tokens routed to it."""

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, drop: float = 0.):
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.w = nn.Linear(dim, num_experts * hidden_dim)  # [W_1 … W_t]
        self.v = nn.Linear(dim, hidden_dim)  # V
        self.w2 = nn.Linear(hidden_dim, dim)  # W2
        self.drop = nn.Dropout(drop)

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """FFN_i(x) = (silu(x W_i + b_i) ⊙ (x V + b_V)) W2 + b_2 for expert i alone."""
        d_h = self.hidden_dim
        w_i = self.w.weight[i * d_h:(i + 1) * d_h]
        b_i = self.w.bias[i * d_h:(i + 1) * d_h]
        return self.w2(F.silu(F.linear(x, w_i, b_i)) * self.v(x))

    def forward(
            self,
            x: torch.Tensor,
            gate: GateOutput,
            drop_masks: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (N, m). ``drop_masks`` (N, t, m), if given, replaces dropout: expert i's output for token n is
        multiplied by ``drop_masks[n, i]`` (so a test can feed the fused layer the very same masks)."""
        out = torch.zeros_like(x)
        for i in range(self.num_experts):
            tokens = torch.nonzero(gate.combine[:, i] > 0).squeeze(-1)  # dispatch: data-dependent size
            if tokens.numel() == 0:
                continue
            y = self.expert(i, x[tokens])
            y = y * drop_masks[tokens, i] if drop_masks is not None else self.drop(y)
            out = out.index_add(0, tokens, y * gate.combine[tokens, i].unsqueeze(-1).to(y.dtype))
        return out
