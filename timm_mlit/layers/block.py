"""The MoE transformer encoder layer of mLiT (the paper's Figure 1).

Pre-norm, as in ViT and MAE (Figure 1 is lost in our copy of the paper; we read it as pre-norm):

    x = x + attn(LN(x))         grouped-query attention, Sec. 2.1.1
    x = x + moe(LN(x))          noisy top-k gate over shared-V/W2 SwiGLU experts, Sec. 2.1.2

LayerNorms are PyTorch's defaults. Stochastic depth (``drop_path``) is not in the paper and is off by default.
"""
from typing import Type

import torch
import torch.nn as nn
from timm.layers import DropPath

from .attention import GroupedQueryAttention
from .moe import MoEFeedForward

__all__ = ['MoEBlock']


class MoEBlock(nn.Module):
    """One mLiT encoder layer: GQA then the MoE feed-forward, each in a pre-norm residual branch."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            num_kv_heads: int,
            hidden_dim: int,
            num_experts: int,
            top_k: int = 2,
            expert_drop: float = 0.1,
            expert_drop_mode: str = 'expert',
            gate_noise_eps: float = 1e-2,
            importance_weight: float = 1e-2,
            load_weight: float = 1e-2,
            cv_squared: bool = False,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = GroupedQueryAttention(
            dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = MoEFeedForward(
            dim,
            hidden_dim,
            num_experts,
            top_k=top_k,
            drop=expert_drop,
            drop_mode=expert_drop_mode,
            noise_eps=gate_noise_eps,
            importance_weight=importance_weight,
            load_weight=load_weight,
            cv_squared=cv_squared,
            **dd,
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x
