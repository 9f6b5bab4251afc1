"""The MoE transformer encoder layer of mLiT (mLiT Figure 1).

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, Sec. 2.1 (mLiT Figure 1).

Pre-norm, as in ViT and MAE (mLiT Figure 1 is lost in our copy of the paper; we read it as pre-norm):

    x = x + attn(LN(x))         grouped-query attention, mLiT Sec. 2.1.1
    x = x + mlp(LN(x))          noisy top-k gate over shared-V/W2 SwiGLU experts, mLiT Sec. 2.1.2 (mLiT Eq. 1)

As timm's ViT ``Block``, the layer takes its attention and feed-forward as factories (``attn_layer``,
``mlp_layer``, called with the keywords timm's ``Block`` uses): the model sets their options once with
``functools.partial`` (e.g. ``partial(GroupedQueryAttention, num_kv_heads=3)``, ``partial(MoEFeedForward,
gate_layer=..., experts_layer=...)``) and the block passes only what varies per layer (width, heads, hidden size d_h,
experts t). LayerNorms are PyTorch's defaults. Stochastic depth (``drop_path``) is not in the paper and is off by
default.
"""
import inspect
from typing import Callable, Type

import torch
import torch.nn as nn
from timm.layers import DropPath

from .mlit_attention import GroupedQueryAttention
from .mlit_moe import MoEFeedForward

__all__ = ['MoEBlock']


def _takes_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name``: it declares it, or takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call itself decide
        return True
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params)


class MoEBlock(nn.Module):
    """One mLiT encoder layer: attention then the MoE feed-forward, each in a pre-norm residual branch."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            hidden_dim: int,
            num_experts: int,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            attn_layer: Callable[..., nn.Module] = GroupedQueryAttention,
            mlp_layer: Callable[..., nn.Module] = MoEFeedForward,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width m.
            num_heads: Query heads H.
            hidden_dim: The experts' hidden size d_h of this layer (mLiT Eq. 15).
            num_experts: Experts t of this layer (mLiT Figure 4's stages).
            qkv_bias, proj_bias, attn_drop, proj_drop: Passed to ``attn_layer``.
            drop_path: Stochastic depth rate.
            norm_layer: Normalization layer.
            attn_layer: Called as ``attn_layer(dim, num_heads=..., qkv_bias=..., proj_bias=..., attn_drop=...,
                proj_drop=..., device=..., dtype=...)``, then on (B, N, dim) tokens; e.g. a ``partial`` of
                :class:`GroupedQueryAttention` carrying ``num_kv_heads``, or timm's ``Attention``.
            mlp_layer: Called as ``mlp_layer(in_features=dim, hidden_features=hidden_dim, num_experts=num_experts,
                device=..., dtype=...)``, then on (B, N, dim) tokens; ``num_experts`` is passed only if it takes that
                keyword (or ``**kwargs``). E.g. a ``partial`` of :class:`MoEFeedForward` carrying the gate's and the
                experts' options, or a dense timm ``Mlp`` / ``SwiGLU`` (no ``num_experts``: called without it).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn_layer(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        experts = {'num_experts': num_experts} if _takes_keyword(mlp_layer, 'num_experts') else {}
        self.mlp = mlp_layer(in_features=dim, hidden_features=hidden_dim, **experts, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x
