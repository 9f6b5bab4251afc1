"""Grouped-query attention: H query heads over G shared key/value heads (Sec. 2.1.1)."""
import pytest
import torch
from timm.layers import Attention

from timm_mlit.layers import GroupedQueryAttention


def _explicit_gqa(attn: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """Head by head: query head h uses key/value head h // (H / G)."""
    H, G, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q, k, v = attn.qkv(x).split([H * d, G * d, G * d], dim=-1)
    heads = []
    for h in range(H):
        g = h // (H // G)
        qh, kh, vh = q[..., h * d:(h + 1) * d], k[..., g * d:(g + 1) * d], v[..., g * d:(g + 1) * d]
        weights = ((qh @ kh.transpose(-2, -1)) / d ** 0.5).softmax(-1)
        heads.append(weights @ vh)
    return attn.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize('dim,heads,groups', [(108, 6, 3), (128, 8, 4), (144, 8, 4), (64, 4, 1)])
def test_matches_explicit_grouped_heads(dim, heads, groups):
    torch.manual_seed(0)
    attn = GroupedQueryAttention(dim, heads, groups).eval()
    assert attn.qkv.weight.shape == ((heads + 2 * groups) * dim // heads, dim)
    x = torch.randn(2, 145, dim)
    assert torch.allclose(attn(x), _explicit_gqa(attn, x), atol=1e-5)


def test_fused_and_manual_paths_agree():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(108, 6, 3).eval()
    x = torch.randn(3, 20, 108)
    fused = attn(x)
    attn.fused_attn = False
    assert torch.allclose(fused, attn(x), atol=1e-5)


def test_with_as_many_groups_as_heads_it_is_timm_multi_head_attention():
    torch.manual_seed(0)
    gqa = GroupedQueryAttention(96, 6, 6).eval()
    mha = Attention(96, num_heads=6, qkv_bias=True).eval()
    mha.load_state_dict(gqa.state_dict())
    x = torch.randn(2, 30, 96)
    assert torch.allclose(gqa(x), mha(x), atol=1e-6)


def test_bad_grouping_is_refused():
    with pytest.raises(ValueError, match='multiple of num_kv_heads'):
        GroupedQueryAttention(96, 6, 4)
    with pytest.raises(ValueError, match='divisible by num_heads'):
        GroupedQueryAttention(100, 6, 3)


@pytest.mark.parametrize('fused', [True, False])
def test_folded_groups_give_the_gradients_of_explicit_heads(fused):
    torch.manual_seed(0)
    attn = GroupedQueryAttention(108, 6, 3).train()
    attn.fused_attn = fused
    x = torch.randn(2, 30, 108)
    probe = torch.randn(2, 30, 108)
    grads = []
    for fn in (attn, lambda v: _explicit_gqa(attn, v)):
        attn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        (fn(xi) * probe).sum().backward()
        grads.append([xi.grad] + [p.grad for p in attn.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('dim,heads,groups', [(108, 6, 3), (64, 4, 1), (96, 6, 6)])
def test_head_views_with_enable_gqa_equal_the_folded_groups(dim, heads, groups, monkeypatch):
    """Eager mode on the CPU hands the fused kernel strided head views with enable_gqa; graph capture keeps the
    folded form.
    Both compute the same outputs and gradients (within float32 rounding)."""
    torch.manual_seed(0)
    attn = GroupedQueryAttention(dim, heads, groups).train()
    x = torch.randn(3, 145, dim)
    probe = torch.randn(3, 145, dim)
    assert attn.fused_attn and attn._gqa_views(x)
    results = []
    for views in (True, False):
        monkeypatch.setattr(attn, '_gqa_views', lambda x, views=views: views)
        attn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = attn(xi)
        (out * probe).sum().backward()
        results.append([out, xi.grad] + [p.grad for p in attn.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_graph_capture_keeps_the_folded_form():
    attn = GroupedQueryAttention(108, 6, 3).eval()
    gm = torch.fx.symbolic_trace(attn)
    assert 'enable_gqa' not in gm.code
    x = torch.randn(2, 145, 108)
    assert torch.allclose(gm(x), attn(x), atol=1e-6)
