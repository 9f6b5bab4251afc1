"""The fused shared-V/W2 expert layer equals the per-expert dispatch reference (outputs and every gradient), with the
expert matmul dense (all t experts) or grouped (the k chosen ones, ``timm_mlit::grouped_expert_mm``)."""
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_mlit.layers import MoEFeedForward, NoisyTopKGate, SharedSwiGLUExperts
from timm_mlit.layers.grouped_expert_mm import grouped_expert_mm, grouped_mm_supported, grouped_pays_on_cpu
from timm_mlit.testing.dispatch_reference import DispatchSwiGLUExperts

from helpers import needs_grouped_mm

MATMULS = ['dense', pytest.param('grouped', marks=needs_grouped_mm)]
_DROP_MASK = torch.ops.timm_mlit.expert_drop_mask


class FixedMask(nn.Module):
    """Stands in for nn.Dropout with masks chosen by the test (``p`` only marks dropout as active)."""

    def __init__(self, mask: torch.Tensor, p: float = 0.1):
        super().__init__()
        self.mask = mask
        self.p = p

    def forward(self, y):
        return y * self.mask


def _pair(dim, hidden, t, k, drop_mode='expert', expert_matmul='auto'):
    gate = NoisyTopKGate(dim, t, top_k=k).train()
    with torch.no_grad():  # a trained-looking gate, so routing is not decided by noise alone
        gate.w_gate.weight.normal_(std=0.5)
        gate.w_noise.weight.normal_(std=0.5)
    fused = SharedSwiGLUExperts(
        dim, hidden, t, expert_drop_rate=0., expert_drop_mode=drop_mode, expert_matmul=expert_matmul).train()
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


@pytest.mark.parametrize('expert_matmul', MATMULS)
@pytest.mark.parametrize('t,k,hidden', [(3, 2, 81), (4, 2, 27), (5, 2, 33), (5, 1, 16), (4, 3, 8), (3, 3, 12)])
def test_fused_equals_per_expert_reference(t, k, hidden, expert_matmul):
    torch.manual_seed(0)
    dim = 24
    gate, fused, ref = _pair(dim, hidden, t, k, expert_matmul=expert_matmul)
    x = torch.randn(96, dim)
    y_fused, g_fused, _ = _run(gate, fused, x)
    y_ref, g_ref, _ = _run(gate, ref, x)
    assert torch.allclose(y_fused, y_ref, atol=1e-5, rtol=1e-5)
    assert set(g_fused) == set(g_ref)
    for name in g_fused:
        assert g_fused[name] is not None, name
        assert torch.allclose(g_fused[name], g_ref[name], atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize('expert_matmul', MATMULS)
@pytest.mark.parametrize('t,k', [(3, 2), (5, 2), (4, 1)])
def test_per_expert_dropout_equals_reference_with_same_masks(t, k, expert_matmul):
    torch.manual_seed(0)
    dim, hidden, n, p = 16, 20, 64, 0.1
    gate, fused, ref = _pair(dim, hidden, t, k, drop_mode='expert', expert_matmul=expert_matmul)
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


@pytest.mark.parametrize('expert_matmul', MATMULS)
@pytest.mark.parametrize('t,k', [(3, 2), (5, 2), (4, 1)])
def test_per_expert_dropout_at_positions_equals_the_dense_mask(t, k, expert_matmul):
    """Eager CPU training keeps the mask as its dropped positions (_DroppedAtGateSum): with the same seed it draws
    the same mask as ``expert_drop_mask`` and gives the same output and expert gradients bit for bit, and the gate's
    (and through it x's) up to rounding."""
    torch.manual_seed(0)
    dim, hidden, n, p = 16, 20, 64, 0.3
    gate, fused, _ = _pair(dim, hidden, t, k, drop_mode='expert', expert_matmul=expert_matmul)
    fused.drop.p = p
    x = torch.randn(n, dim)
    # the noise draw of _run (seed 7) comes first, then the mask; _run draws nothing else before the experts
    y_pos, g_pos, _ = _run(gate, fused, x)
    torch.manual_seed(7)
    g = gate(x.detach())
    mask = _DROP_MASK(g.top_gates.detach(), dim, p)
    y_mask, g_mask, _ = _run(gate, fused, x, drop_mask=mask)
    assert 0 < (mask == 0).float().mean() < 1
    assert torch.equal(y_pos, y_mask)  # bit for bit: the same zeros and the same g_j / (1 - p) products
    for name in g_pos:
        if name.startswith('gate.') or name == 'x':  # through the gate gradient
            assert torch.allclose(g_pos[name], g_mask[name], atol=1e-6, rtol=1e-5), name
        else:
            assert torch.equal(g_pos[name], g_mask[name]), name
    x2 = x.clone().requires_grad_(True)
    out = fused(x2, gate(x2))
    assert type(out.grad_fn).__name__ == '_DroppedAtGateSumBackward'  # the path eager CPU training takes


@pytest.mark.parametrize('case', ['transposed grad', 'frozen gate', 'bf16 autocast'])
def test_per_expert_dropout_at_positions_edge_cases(case):
    """The positions path against the dense mask drawn from the same seed: an incoming gradient that is not
    contiguous, a gate that needs no gradient (only y does), and y in bf16 under CPU autocast (gates in fp32)."""
    torch.manual_seed(0)
    dim, hidden, n, t, p = 16, 20, 48, 4, 0.3
    gate, fused, _ = _pair(dim, hidden, t, 2, drop_mode='expert')
    fused.drop.p = p
    x = torch.randn(n, dim)
    g = gate(x)
    if case == 'frozen gate':
        g = g._replace(top_gates=g.top_gates.detach(), combine=g.combine.detach())
    probe = torch.randn(dim, n)

    def run(drop_mask=None):
        fused.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(3)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=case == 'bf16 autocast'):
            y = fused(xr, g, drop_mask=drop_mask)
        loss = (y.t().float() * probe).sum()  # y.t(): the gradient reaching the layer is transposed
        grads = torch.autograd.grad(loss, [xr] + list(fused.parameters()), retain_graph=True)
        return y.detach().float(), grads, type(y.grad_fn).__name__

    y_pos, grads_pos, fn_pos = run()
    torch.manual_seed(3)
    mask = _DROP_MASK(g.top_gates.detach(), dim, p)
    y_mask, grads_mask, fn_mask = run(drop_mask=mask)
    assert fn_pos == '_DroppedAtGateSumBackward' and fn_mask != fn_pos
    tol = dict(atol=1e-2, rtol=1e-2) if case == 'bf16 autocast' else dict(atol=1e-6, rtol=1e-5)
    assert torch.allclose(y_pos, y_mask, **tol)
    for a, b in zip(grads_pos, grads_mask):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), **tol)


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


@pytest.mark.parametrize('expert_matmul', MATMULS)
@pytest.mark.parametrize('mode', ['expert', 'combined'])
def test_dropout_modes_agree_in_eval(mode, expert_matmul):
    torch.manual_seed(0)
    gate, fused, ref = _pair(16, 12, 5, 2, drop_mode=mode, expert_matmul=expert_matmul)
    fused.drop.p = 0.1
    gate.eval(), fused.eval(), ref.eval()
    x = torch.randn(40, 16)
    g = gate(x)
    assert torch.allclose(fused(x, g), ref(x, g), atol=1e-6)


def test_bad_drop_mode_is_refused():
    with pytest.raises(ValueError, match='expert_drop_mode'):
        SharedSwiGLUExperts(8, 8, 3, expert_drop_mode='token')
    with pytest.raises(ValueError, match='expert_matmul'):
        SharedSwiGLUExperts(8, 8, 3, expert_matmul='loop')


def _starve_last_expert(gate, x):
    """Gate weights and inputs such that the last expert is never chosen (an empty group for the grouped GEMM)."""
    with torch.no_grad():
        x[:, 0] = 4.
        gate.w_gate.weight[-1] = 0.
        gate.w_gate.weight[-1, 0] = -50.
        gate.w_noise.weight[-1] = 0.
    return x


@needs_grouped_mm
@pytest.mark.parametrize('training,per_expert_drop', [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize('t,k,dim,hidden', [(5, 2, 24, 27), (3, 2, 21, 81), (4, 1, 16, 10), (4, 3, 12, 33)])
def test_grouped_matmul_equals_dense_and_reference_with_an_idle_expert(t, k, dim, hidden, training, per_expert_drop):
    """Outputs and the gradients of x, W, b, V, W2 and the gate: grouped == dense == dispatch reference, in train
    (with and without per-expert dropout, the same masks everywhere) and eval, while one expert gets no token; dims
    that are not multiples of 4 (m = 21, d_h = 81, 27, 33) exercise the padded operands."""
    torch.manual_seed(0)
    n, p = 80, 0.1
    gate, dense, ref = _pair(dim, hidden, t, k, expert_matmul='dense')
    grouped = SharedSwiGLUExperts(dim, hidden, t, expert_drop_rate=0., expert_matmul='grouped')
    grouped.load_state_dict(dense.state_dict())
    x = _starve_last_expert(gate, torch.randn(n, dim))
    for m in (gate, dense, grouped, ref):
        m.train(training)
    torch.manual_seed(7)
    top_idx = gate(x).top_idx
    assert not (top_idx == t - 1).any() and (top_idx == 0).any()
    assert grouped.use_grouped(x, k) and not dense.use_grouped(x, k)
    kwargs, ref_kwargs = {}, {}
    if per_expert_drop:
        masks = (torch.rand(n, t, dim) > p).float() / (1 - p)
        dense.drop = nn.Dropout(p)
        grouped.drop = nn.Dropout(p)
        kwargs = {'drop_mask': masks.gather(1, top_idx.unsqueeze(-1).expand(n, k, dim))}
        ref_kwargs = {'drop_masks': masks}
    if training:
        y_d, g_d, _ = _run(gate, dense, x, **kwargs)
        y_g, g_g, _ = _run(gate, grouped, x, **kwargs)
        y_r, g_r, _ = _run(gate, ref, x, **ref_kwargs)
        assert set(g_g) == set(g_d) == set(g_r)
        for name in g_g:
            assert g_g[name] is not None, name
            torch.testing.assert_close(g_g[name], g_d[name], atol=1e-5, rtol=1e-5, msg=name)
            torch.testing.assert_close(g_g[name], g_r[name], atol=1e-5, rtol=1e-5, msg=name)
        w_grad = g_g['experts.w.weight'].view(t, hidden, dim)
        assert (w_grad[-1] == 0).all() and (g_g['experts.w.bias'].view(t, hidden)[-1] == 0).all()
    else:
        with torch.no_grad():
            g = gate(x)
            y_d, y_g, y_r = dense(x, g), grouped(x, g), ref(x, g)
    torch.testing.assert_close(y_g, y_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_g, y_r, atol=1e-5, rtol=1e-5)


@needs_grouped_mm
@pytest.mark.parametrize('n,m,t,d_h,k', [(50, 24, 5, 27, 2), (37, 21, 4, 81, 2), (40, 16, 4, 12, 3), (30, 8, 6, 5, 1),
                                         (1, 8, 3, 4, 2)])
def test_grouped_expert_mm_op(n, m, t, d_h, k):
    """The op alone against ``(x W + b)`` gathered at the chosen experts: values and gradients; expert 1 idle."""
    torch.manual_seed(0)
    x = torch.randn(n, m, requires_grad=True)
    w = torch.randn(t * d_h, m, requires_grad=True)
    b = torch.randn(t * d_h, requires_grad=True)
    choices = [i for i in range(t) if i != 1]
    top_idx = torch.stack([torch.tensor(choices)[torch.randperm(len(choices))[:k]] for _ in range(n)])
    h = grouped_expert_mm(x, w, b, top_idx, t)
    ref = F.linear(x, w, b).view(n, t, d_h).gather(1, top_idx.unsqueeze(-1).expand(n, k, d_h))
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    probe = torch.randn_like(ref)
    grads = torch.autograd.grad((h * probe).sum(), (x, w, b))
    ref_grads = torch.autograd.grad((ref * probe).sum(), (x, w, b))
    for name, a, r in zip('xwb', grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-5, msg=name)
    torch.library.opcheck(torch.ops.timm_mlit.grouped_expert_mm.default, (x, w, b, top_idx, t))


@needs_grouped_mm
@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
def test_expert_matmul_selection():
    """'auto' takes the grouped GEMM on CPU float32 where it pays ((t − k)·d_h ≥ 64·k) in eager/compiled forwards:
    dense on meta, under graph capture (torch.export, torch.jit tracing), for float64 and a quantised W; the state
    dict is the same either way."""
    layer = SharedSwiGLUExperts(16, 72, 5)  # (5 - 2)·72 >= 128
    assert layer.expert_matmul == 'auto'
    assert grouped_mm_supported(torch.device('cpu'), torch.float32)
    assert not grouped_mm_supported(torch.device('cpu'), torch.float64)
    assert not grouped_mm_supported(torch.device('meta'), torch.float32)
    assert grouped_pays_on_cpu(5, 2, 72) and grouped_pays_on_cpu(3, 2, 144)
    assert not any(grouped_pays_on_cpu(*shape) for shape in [(5, 2, 32), (3, 2, 96), (3, 2, 81), (5, 5, 99)])
    assert layer.use_grouped(torch.randn(3, 16), 2)
    assert not layer.use_grouped(torch.randn(3, 16), 4)  # (5 - 4)·72 < 256
    assert not SharedSwiGLUExperts(16, 27, 5).use_grouped(torch.randn(3, 16), 2)
    assert SharedSwiGLUExperts(16, 27, 5, expert_matmul='grouped').use_grouped(torch.randn(3, 16), 2)
    assert not layer.use_grouped(torch.randn(3, 16, dtype=torch.float64), 2)
    assert not layer.use_grouped(torch.empty(3, 16, device='meta'), 2)
    assert not SharedSwiGLUExperts(16, 72, 5, expert_matmul='dense').use_grouped(torch.randn(3, 16), 2)
    assert set(layer.state_dict()) == set(SharedSwiGLUExperts(16, 72, 5, expert_matmul='dense').state_dict())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not layer.use_grouped(torch.randn(3, 16), 2)  # autocast computes W in bf16 on the CPU: dense

    moe = MoEFeedForward(16, 8, 4, experts_layer=partial(SharedSwiGLUExperts, expert_matmul='grouped')).eval()
    x = torch.randn(2, 5, 16)
    assert moe.experts.use_grouped(x.view(-1, 16), 2)  # eager: grouped; captured: dense
    program = torch.export.export(moe, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert not any('grouped' in target for target in targets), targets
    torch.testing.assert_close(program.module()(x), moe(x))
    traced = torch.jit.trace(moe, (x,))  # the TorchScript ONNX exporter's capture
    assert 'grouped_expert_mm' not in str(traced.inlined_graph)
    torch.testing.assert_close(traced(x), moe(x))


def test_without_grouped_mm_auto_is_dense_and_grouped_is_refused(monkeypatch):
    """On a torch without F.grouped_mm (older releases) 'auto' takes the dense matmul and 'grouped' is refused by
    name; run on every torch by hiding the function."""
    monkeypatch.delattr(F, 'grouped_mm', raising=False)
    layer = SharedSwiGLUExperts(16, 72, 5)
    assert not grouped_mm_supported(torch.device('cpu'), torch.float32)
    assert not layer.use_grouped(torch.randn(3, 16), 2)
    with pytest.raises(ValueError, match='grouped_mm'):
        SharedSwiGLUExperts(16, 72, 5, expert_matmul='grouped')


@needs_grouped_mm
def test_flop_counter_counts_the_grouped_matmul_as_the_chosen_experts_only():
    """torch's flop counter (count_macs, the MACs the demo, summary and cards print) sees the grouped op: k·N·m·d_h
    multiply-adds forward, where the dense path does t·N·m·d_h; the backward counts dW and dx alike."""
    from torch.utils.flop_counter import FlopCounterMode
    n, m, t, k, d_h = 40, 12, 5, 2, 8
    x, w, b = torch.randn(n, m, requires_grad=True), torch.randn(t * d_h, m, requires_grad=True), torch.randn(t * d_h)
    top_idx = torch.randn(n, t).topk(k, dim=-1).indices
    counter = FlopCounterMode(display=False)
    with counter:
        h = grouped_expert_mm(x, w, b, top_idx, t)
    assert counter.get_total_flops() == 2 * n * k * m * d_h
    counter = FlopCounterMode(display=False)
    with counter:
        h.sum().backward()
    assert counter.get_total_flops() == 2 * 2 * n * k * m * d_h


def test_distinct_row_selection_has_index_selects_gradient():
    """The dense path's row selection (backward: a copy into zeros) equals index_select's (backward: a scatter-add)
    for the distinct rows a token's k chosen experts give, and falls back to index_select without autograd."""
    from timm_mlit.layers.mlit_experts import chosen_rows, select_distinct_rows
    torch.manual_seed(0)
    n, t, k, d_h = 50, 5, 2, 7
    top_idx = torch.rand(n, t).argsort(-1)[:, :k]
    rows = chosen_rows(top_idx, t)
    table = torch.randn(n * t, d_h, requires_grad=True)
    probe = torch.randn(n * k, d_h)
    out = select_distinct_rows(table, rows)
    (grad,) = torch.autograd.grad((out * probe).sum(), table)
    (want,) = torch.autograd.grad((table.index_select(0, rows) * probe).sum(), table)
    assert torch.equal(out, table.index_select(0, rows))
    assert torch.equal(grad, want)
    assert grad.abs().sum(-1).gt(0).sum() == n * k  # the unchosen rows get zeros
    with torch.no_grad():
        assert torch.equal(select_distinct_rows(table, rows), table.index_select(0, rows))
