"""Grouped-query attention of mLiT's encoder layers (mLiT Sec. 2.1.1, mLiT Table 1's heads and groups).

Papers: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, mLiT Sec. 2.1.1; the attention itself is
"GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints" (Ainslie et al. 2023,
arXiv:2305.13245).

H query heads share G key/value heads: query heads ``g·H/G … (g+1)·H/G − 1`` read key/value head g. G = H is
multi-head attention, G = 1 multi-query attention. mLiT uses (mLiT Table 1) H = 8, G = 4 (S, XS) and H = 6,
G = 3 (XXS), head dim m/H; every projection has a bias (all linear layers inside an encoder layer do).

``qkv`` stacks the projections as ``[W_q (H·d), W_k (G·d), W_v (G·d)]`` so one matmul makes q, k and v; with
G = H the layout is timm's ``Attention.qkv``.

Key/value heads are not copied out to the query heads: the H/G query heads of group g are folded into the sequence
axis, (B, G, H/G·N, d), and attend to the group's own (B, G, N, d) keys and values. Attention is row-wise in the
queries, so outputs and gradients equal those of repeating K/V per query head, without the copies and their
backward, in plain ops every SDPA backend and exporter takes.

On the CPU, in eager mode and under ``torch.compile``, the fused kernel (the CPU's flash kernel) is instead handed
the (B, H, N, d) query heads and the (B, G, N, d) key/value heads as strided views of the ``qkv`` output with
``enable_gqa=True``: the kernel reads each group's keys and values for its H/G query heads itself, so neither the
fold above nor the output's unfold is copied (forward and backward). Same function: every query row attends to the
same keys and values. TorchScript, FX / torch.jit tracing, torch.export, ONNX export and other devices (whose SDPA
backends may not all take ``enable_gqa``, and fall back to the math kernel) keep the folded form.
"""
from typing import Final, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import use_fused_attn

from ._tracing import is_export, is_graph_capture, traced_size

__all__ = ['GroupedQueryAttention']


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``num_heads`` query heads and ``num_kv_heads`` key/value heads."""
    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            num_kv_heads: Optional[int] = None,
            head_dim: Optional[int] = None,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f'num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads}).')
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads}), or give head_dim.')
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(num_heads * head_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @torch.jit.unused
    def _gqa_views(self, x: torch.Tensor) -> bool:
        """Whether the fused kernel takes the heads as views with ``enable_gqa`` (CPU, eager and torch.compile)."""
        if is_graph_capture() or torch.onnx.is_in_onnx_export():  # first: FX's traced device cannot be branched on
            return False
        return x.device.type == 'cpu'

    @torch.jit.unused
    def _forward_export(self, x: torch.Tensor) -> torch.Tensor:
        """The eval forward as exported graphs take it, with as few ops as the layout allows: at batch 1 onnxruntime
        spends more on small ops than on the attention's matmuls (docs/benchmarks.md, "On the edge"). Same function
        as :meth:`forward` in eval mode (up to float rounding).

        Query heads g·R … g·R + R − 1 go to (B, G, R, N, d) and key/value head g to (B, G, 1, N, d) by one reshape
        and one transpose each; the matmuls broadcast the key and value over the R query heads (no copies, no
        fold). The token count is a constant under torch.jit tracing
        (:func:`~timm_mlit.layers._tracing.traced_size`), the batch the reshapes' -1, and the scale d^-1/2 a number,
        so the graph has no shape arithmetic.
        """
        N = traced_size(x, 1)
        H, G, d = self.num_heads, self.num_kv_heads, self.head_dim
        R = H // G
        q, k, v = self.qkv(x).split([H * d, G * d, G * d], dim=-1)
        q = q.reshape(-1, N, G, R, d).permute(0, 2, 3, 1, 4)  # (B, G, R, N, d)
        k = k.reshape(-1, N, G, 1, d).permute(0, 2, 3, 4, 1)  # (B, G, 1, d, N): transposed for the scores
        v = v.reshape(-1, N, G, 1, d).permute(0, 2, 3, 1, 4)  # (B, G, 1, N, d)
        attn = ((q * self.scale) @ k).softmax(dim=-1)  # (B, G, R, N, N)
        x = (attn @ v).permute(0, 3, 1, 2, 4).reshape(-1, N, H * d)  # query head g·R + r at g·R + r
        return self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not self.training and is_export():
                return self._forward_export(x)
        B, N, _ = x.shape
        H, G, d = self.num_heads, self.num_kv_heads, self.head_dim
        R = H // G  # query heads per key/value head
        q, k, v = self.qkv(x).split([H * d, G * d, G * d], dim=-1)
        if not torch.jit.is_scripting() and self.fused_attn:
            if self._gqa_views(x):
                x = F.scaled_dot_product_attention(
                    q.reshape(B, N, H, d).transpose(1, 2),
                    k.reshape(B, N, G, d).transpose(1, 2),
                    v.reshape(B, N, G, d).transpose(1, 2),
                    dropout_p=self.attn_drop.p if self.training else 0.,
                    enable_gqa=G != H,
                )
                return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, H * d)))
        # query head g·R + r -> group g, rows r·N … (r+1)·N − 1
        q = q.reshape(B, N, G, R, d).permute(0, 2, 3, 1, 4).reshape(B, G, R * N, d)
        k = k.reshape(B, N, G, d).transpose(1, 2)
        v = v.reshape(B, N, G, d).transpose(1, 2)

        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v,
                dropout_p=self.attn_drop.p if self.training else 0.,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v

        x = x.reshape(B, G, R, N, d).permute(0, 3, 1, 2, 4).reshape(B, N, H * d)
        return self.proj_drop(self.proj(x))
