"""count_macs, the one MAC count behind the model cards, `python -m timm_mlit.summary`, the main job, the benchmarks and
the docs: the same figures on every supported torch, attention included wherever the attention kernel runs."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

import timm_mlit  # noqa: F401
from timm_mlit.layers.grouped_expert_mm import grouped_mm_supported
from timm_mlit.profiling import UncountedOpError, count_macs, flop_counter

# MACs per 36x36 image on the CPU in fp32, attention included (docs/models.md's table; test_docs.py checks that it
# quotes these). mlit_s / mlit_xs run their expert matmul as the grouped GEMM (k chosen experts' W) where torch has
# grouped_mm, else the static matmul (all t experts' W, the table's bracketed figure); mlit_xxs takes the static
# path either way (grouped_pays_on_cpu).
MLIT_MACS = {  # name: (grouped, static)
    'mlit_s': (365_326_992, 424_814_112),
    'mlit_xs': (222_766_464, 233_011_584),
    'mlit_xxs': (131_003_784, 131_003_784),
}


class _AttentionOnly(nn.Module):
    """No weights: the input split into q, k, v heads and attended; all its MACs are attention's."""

    def __init__(self, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = x.reshape(B, N, 3, self.heads, C // (3 * self.heads)).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


@pytest.mark.parametrize('name', list(MLIT_MACS))
def test_mlit_macs_are_the_documented_ones_on_any_torch(name):
    model = timm.create_model(name)
    grouped, static = MLIT_MACS[name]
    want = grouped if grouped_mm_supported(torch.device('cpu'), torch.float32) else static
    macs = count_macs(model, torch.randn(1, 3, 36, 36))
    assert macs == want, f'{name}: {macs / 1e6:.1f}M MACs, expected {want / 1e6:.1f}M'


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'matmuls'])
def test_a_model_whose_only_work_is_attention_counts_qk_and_av(fused):
    """B·H·L²·(d_k + d_v) MACs, whether the attention is F.scaled_dot_product_attention (on the CPU its fused
    kernel, which torch's own counter skips) or written out as matmuls."""
    B, H, L, d = 2, 3, 17, 8
    macs = count_macs(_AttentionOnly(H, fused), torch.randn(B, L, 3 * H * d))
    assert macs == B * H * L * L * (d + d) > 0


@pytest.mark.parametrize('name', ['mlit_xxs', 'maevit_c100', 'mobile_vmoe_9x96_patch3_36'])
def test_fused_and_written_out_attention_count_the_same(name):
    """The same model with its attention modules switched to the explicit matmul path: same MACs (so the fused
    kernel is counted, and counted as its QKᵀ and AV products)."""
    model = timm.create_model(name)
    x = torch.randn(1, 3, 36, 36)
    attns = [m for m in model.modules() if hasattr(m, 'fused_attn')]
    assert attns and all(m.fused_attn for m in attns)  # timm's default: the fused kernel
    fused = count_macs(model, x)
    for m in attns:
        m.fused_attn = False
    assert count_macs(model, x) == fused


def test_the_counter_counts_the_cpu_attention_backward_with_torchs_formula():
    B, H, L, d = 1, 2, 9, 4
    q, k, v = (torch.randn(B, H, L, d, requires_grad=True) for _ in range(3))
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    shape = (B, H, L, d)
    assert counter.get_total_flops() == sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(
        shape, shape, shape, shape)


@torch.library.custom_op('timm_mlit_test::toy_attention', mutates_args=())
def _toy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((q @ k.transpose(-2, -1)).softmax(-1) @ v).clone()


class _UnknownKernel(nn.Module):
    def forward(self, x):
        return _toy_attention(x, x, x)


def test_an_attention_kernel_without_a_formula_is_an_error_not_a_smaller_count():
    """A torch that dispatches attention to a kernel the counter does not know must not print MACs without
    attention: count_macs names the kernel and the fix."""
    with pytest.raises(UncountedOpError, match=r'toy_attention.*_ATTENTION_FORMULAS'):
        count_macs(_UnknownKernel(), torch.randn(1, 2, 5, 4))
