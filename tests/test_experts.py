"""The fused shared-V/W2 expert layer equals the per-expert dispatch reference (outputs and every gradient)."""
import pytest
import torch
import torch.nn as nn

from timm_mlit.layers import NoisyTopKGate, SharedSwiGLUExperts
from timm_mlit.testing.dispatch_reference import DispatchSwiGLUExperts


class FixedMask(nn.Module):
    """Stands in for nn.Dropout with masks chosen by the test (``p`` only marks dropout as active)."""

    def __init__(self, mask: torch.Tensor, p: float = 0.1):
        super().__init__()
        self.mask = mask
        self.p = p

    def forward(self, y):
        return y * self.mask


def _pair(dim, hidden, t, k, drop_mode='expert'):
    gate = NoisyTopKGate(dim, t, top_k=k).train()
    with torch.no_grad():  # a trained-looking gate, so routing is not decided by noise alone
        gate.w_gate.weight.normal_(std=0.5)
        gate.w_noise.weight.normal_(std=0.5)
    fused = SharedSwiGLUExperts(dim, hidden, t, drop=0., drop_mode=drop_mode).train()
    ref = DispatchSwiGLUExperts(dim, hidden, t).train()
    ref.load_state_dict(fused.state_dict())
    return gate, fused, ref


def _run(gate, experts, x, seed=7, **kwargs):
    """One train-mode forward with a fixed noise draw; returns output and all gradients of a fixed loss."""
    gate.zero_grad(set_to_none=True)
    experts.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    g = gate(x)
    y = experts(x, g, **kwargs)
    probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    ((y * probe).sum() + g.aux_loss).backward()
    grads = {'x': x.grad}
    grads.update({f'gate.{n}': p.grad for n, p in gate.named_parameters()})
    grads.update({f'experts.{n}': p.grad for n, p in experts.named_parameters()})
    return y.detach(), grads, g


@pytest.mark.parametrize('t,k,hidden', [(3, 2, 81), (4, 2, 27), (5, 2, 33), (5, 1, 16), (4, 3, 8), (3, 3, 12)])
def test_fused_equals_per_expert_reference(t, k, hidden):
    torch.manual_seed(0)
    dim = 24
    gate, fused, ref = _pair(dim, hidden, t, k)
    x = torch.randn(96, dim)
    y_fused, g_fused, _ = _run(gate, fused, x)
    y_ref, g_ref, _ = _run(gate, ref, x)
    assert torch.allclose(y_fused, y_ref, atol=1e-5, rtol=1e-5)
    assert set(g_fused) == set(g_ref)
    for name in g_fused:
        assert g_fused[name] is not None, name
        assert torch.allclose(g_fused[name], g_ref[name], atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize('t,k', [(3, 2), (5, 2), (4, 1)])
def test_per_expert_dropout_equals_reference_with_same_masks(t, k):
    torch.manual_seed(0)
    dim, hidden, n, p = 16, 20, 64, 0.1
    gate, fused, ref = _pair(dim, hidden, t, k, drop_mode='expert')
    masks = (torch.rand(n, t, dim) > p).float() / (1 - p)  # one mask per (token, expert)
    x = torch.randn(n, dim)
    torch.manual_seed(7)  # the noise draw _run makes, so these are the routes of the runs below
    top_idx = gate(x).top_idx
    fused.drop = nn.Dropout(p)  # per-expert dropout on, its masks given below
    y_fused, g_fused, _ = _run(gate, fused, x, drop_mask=masks.gather(1, top_idx.unsqueeze(-1).expand(n, k, dim)))
    y_ref, g_ref, _ = _run(gate, ref, x, drop_masks=masks)
    assert torch.allclose(y_fused, y_ref, atol=1e-5, rtol=1e-5)
    for name in g_fused:
        assert torch.allclose(g_fused[name], g_ref[name], atol=1e-5, rtol=1e-5), name


def test_combined_dropout_drops_the_mixed_output_once():
    torch.manual_seed(0)
    dim, hidden, n, t = 16, 20, 64, 4
    gate, fused, ref = _pair(dim, hidden, t, 2, drop_mode='combined')
    mask = (torch.rand(n, dim) > 0.1).float() / 0.9
    fused.drop = FixedMask(mask)
    x = torch.randn(n, dim)
    y_fused, _, _ = _run(gate, fused, x)
    y_ref, _, _ = _run(gate, ref, x)
    assert torch.allclose(y_fused, y_ref * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('mode', ['expert', 'combined'])
def test_dropout_modes_agree_in_eval(mode):
    torch.manual_seed(0)
    gate, fused, ref = _pair(16, 12, 5, 2, drop_mode=mode)
    fused.drop.p = 0.1
    gate.eval(), fused.eval(), ref.eval()
    x = torch.randn(40, 16)
    g = gate(x)
    assert torch.allclose(fused(x, g), ref(x, g), atol=1e-6)


def test_bad_drop_mode_is_refused():
    with pytest.raises(ValueError, match='drop_mode'):
        SharedSwiGLUExperts(8, 8, 3, drop_mode='token')
