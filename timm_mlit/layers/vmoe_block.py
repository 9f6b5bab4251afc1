"""Mobile V-MoE's MoE-ViT layer (Mobile V-MoE Fig. 2d, Mobile V-MoE Eq. 1).

Paper: "Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts", arXiv:2309.04354. A ViT
layer whose MLP is one of E experts per image, chosen by the model's single per-image router
(:mod:`timm_mlit.layers.vmoe_router`); everything else is shared and identical to timm's ViT ``Block`` (so a
MoE-ViT layer has exactly the parameters of its dense twin plus E-1 MLPs).

    x = x + attn(LN(x))
    x = x + Σ_j g_j(image) · MLP_{e_j(image)}(LN(x))          (Mobile V-MoE Eq. 1)

As timm's ``Block``, the attention and the experts come in as factories (``attn_layer``, ``mlp_layer``, called with
the keywords timm's ``Block`` uses, plus the expert count); the model sets the experts' options (e.g.
``expert_dispatch``) once with ``functools.partial(PerImageExperts, ...)``.
"""
from typing import Callable, Type

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath

from .vmoe_experts import PerImageExperts

__all__ = ['MoEViTBlock']


class MoEViTBlock(nn.Module):
    """Pre-norm ViT layer with a per-image mixture of standard MLP experts."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            num_experts: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            attn_layer: Callable[..., nn.Module] = Attention,
            mlp_layer: Callable[..., nn.Module] = PerImageExperts,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim, num_heads, mlp_ratio, qkv_bias, proj_drop, attn_drop, drop_path, act_layer, norm_layer: As timm's
                ViT ``Block``.
            num_experts: E.
            attn_layer: Called as ``attn_layer(dim, num_heads=..., qkv_bias=..., attn_drop=..., proj_drop=...,
                device=..., dtype=...)`` (timm's ``Attention`` by default), then on (B, N, dim) tokens.
            mlp_layer: Called as ``mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio),
                num_experts=num_experts, act_layer=..., drop=..., device=..., dtype=...)``, then as
                ``mlp(x, weights, indices)`` with the router's (B, k) choice (:class:`PerImageExperts`).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn_layer(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            num_experts=num_experts,
            act_layer=act_layer,
            drop=proj_drop,
            **dd,
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x), weights, indices))
        return x
