"""The noisy top-k gate against the paper's worked examples (Eq. 4, Eqs. 7-9) and a direct evaluation of Eqs. 2-12."""
import math
import statistics

import pytest
import torch

from timm_mlit.layers import (
    NoisyTopKGate, coefficient_of_variation, first_max_top_k, one_hot_combine, prob_in_top_k, psi, softmax_k,
)

H_PAPER = torch.tensor([
    [4.4742, -5.6365, 6.8226, 0.9960],
    [3.5298, 2.3049, 1.2113, -1.3946],
    [-2.2414, 0.3925, 1.6676, -1.9253],
])


def test_softmax_k_reproduces_eq4():
    expected = torch.tensor([
        [0.0872, 0.0000, 0.9128, 0.0000],
        [0.7729, 0.2271, 0.0000, 0.0000],
        [0.0000, 0.2184, 0.7816, 0.0000],
    ])
    got = softmax_k(H_PAPER, 2)
    assert torch.allclose(got, expected, atol=5e-5), got
    assert torch.equal(got.round(decimals=4), expected)


def test_psi_reproduces_eq9():
    expected = torch.tensor([
        [0.9960, 4.4742, 0.9960, 4.4742],
        [1.2113, 1.2113, 2.3049, 2.3049],
        [0.3925, -1.9253, -1.9253, 0.3925],
    ])
    assert torch.equal(psi(H_PAPER, 2), expected)


def _direct_moe_loss(x, w_g, w_noise, noise, k, eps, w_imp, w_load, squared):
    """Eqs. 2-12 evaluated entry by entry in plain Python floats."""
    n, t = len(x), len(w_g[0])
    dot = lambda row, w, c: sum(row[j] * w[j][c] for j in range(len(row)))
    softplus = lambda v: math.log1p(math.exp(v))
    phi = lambda v: 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
    importance, load = [0.0] * t, [0.0] * t
    for r in range(n):
        clean = [dot(x[r], w_g, c) for c in range(t)]
        std = [softplus(dot(x[r], w_noise, c)) + eps for c in range(t)]
        h = [clean[c] + noise[r][c] * std[c] for c in range(t)]  # Eq. 3
        desc = sorted(h, reverse=True)
        l_k, l_k1 = desc[k - 1], desc[k]
        top = [c for c in range(t) if h[c] >= l_k]
        z = sum(math.exp(h[c]) for c in top)
        for c in top:
            importance[c] += math.exp(h[c]) / z  # Softmax_k, Eq. 2
        for c in range(t):
            psi_rc = l_k1 if h[c] >= l_k else l_k  # Eq. 6
            load[c] += phi((clean[c] - psi_rc) / std[c])  # Eq. 5
    if squared:
        cv = lambda v: statistics.variance(v) / (statistics.mean(v) ** 2)
    else:
        cv = lambda v: statistics.stdev(v) / statistics.mean(v)
    return w_imp * cv(importance) + w_load * cv(load), importance, load  # Eqs. 10-12


@pytest.mark.parametrize('squared', [False, True])
@pytest.mark.parametrize('t,k', [(4, 2), (5, 2), (3, 1)])
def test_moe_loss_matches_direct_evaluation(t, k, squared):
    torch.manual_seed(0)
    m, n = 6, 7
    gate = NoisyTopKGate(m, t, top_k=k, moe_cv_squared=squared).double().train()
    with torch.no_grad():
        gate.w_gate.weight.normal_()
        gate.w_noise.weight.normal_()
    x = torch.randn(n, m, dtype=torch.float64)
    torch.manual_seed(123)
    out = gate(x)
    torch.manual_seed(123)
    noise = torch.randn(n, t, dtype=torch.float64)  # the draw randn_like makes inside the gate

    expected, importance, load = _direct_moe_loss(
        x.tolist(), gate.w_gate.weight.T.tolist(), gate.w_noise.weight.T.tolist(), noise.tolist(),
        k, gate.gate_noise_eps, 1e-2, 1e-2, squared)
    assert out.aux_loss.item() == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(out.combine.sum(0), torch.tensor(importance, dtype=torch.float64))
    assert (out.combine > 0).sum(1).eq(k).all()
    assert torch.allclose(out.combine.sum(1), torch.ones(n, dtype=torch.float64))


def test_prob_in_top_k_is_eq5():
    clean = torch.tensor([[0.5, -0.2, 0.1, 0.3]])
    std = torch.tensor([[1.0, 0.5, 2.0, 0.7]])
    h = torch.tensor([[1.0, -1.0, 0.2, 0.4]])  # top-2: entries 0 and 3; l^2 = 0.4, l^3 = 0.2
    thresholds = torch.tensor([[0.2, 0.4, 0.4, 0.2]])
    expected = torch.special.ndtr((clean - thresholds) / std)
    assert torch.allclose(prob_in_top_k(clean, h, std, 2), expected)


def test_coefficient_of_variation():
    v = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert coefficient_of_variation(v).item() == pytest.approx(statistics.stdev(v.tolist()) / 3.0, rel=1e-6)
    assert coefficient_of_variation(v, squared=True).item() == pytest.approx(
        statistics.variance(v.tolist()) / 9.0, rel=1e-6)
    balanced = torch.ones(5, requires_grad=True)
    coefficient_of_variation(balanced).backward()
    assert torch.isfinite(balanced.grad).all()


def test_loss_is_differentiable_into_both_gate_weights():
    torch.manual_seed(0)
    gate = NoisyTopKGate(8, 5, top_k=2).train()  # zero init, as in the model
    gate(torch.randn(64, 8)).aux_loss.backward()
    assert gate.w_gate.weight.grad.abs().sum() > 0
    assert gate.w_noise.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_has_no_loss():
    torch.manual_seed(0)
    gate = NoisyTopKGate(8, 4, top_k=2)
    with torch.no_grad():
        gate.w_gate.weight.normal_()
    x = torch.randn(16, 8)
    gate.eval()
    a, b = gate(x), gate(x)
    assert a.aux_loss is None
    assert torch.equal(a.combine, b.combine)
    assert torch.allclose(a.combine, softmax_k(x @ gate.w_gate.weight.T, 2))


def test_every_expert_chosen_when_k_equals_t():
    gate = NoisyTopKGate(4, 2, top_k=2).train()
    out = gate(torch.randn(10, 4))
    assert (out.combine > 0).all()
    assert torch.isfinite(out.aux_loss)


def test_gate_stays_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    gate = NoisyTopKGate(16, 5, top_k=2).train()
    with torch.no_grad():
        gate.w_gate.weight.normal_()
    x = torch.randn(32, 16).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        torch.manual_seed(1)
        out = gate(x)
    torch.manual_seed(1)
    ref = gate(x.float())
    assert out.combine.dtype == torch.float32 and out.aux_loss.dtype == torch.float32
    assert torch.equal(out.top_idx, ref.top_idx)
    assert torch.allclose(out.combine, ref.combine)


def test_bad_top_k_is_refused():
    with pytest.raises(ValueError, match='top_k'):
        NoisyTopKGate(8, 3, top_k=4)


@pytest.mark.parametrize('t,k', [(5, 2), (3, 1), (4, 3), (3, 3)])
def test_eval_top_k_is_topk_and_ties_go_to_the_lowest_index(t, k):
    torch.manual_seed(0)
    h = torch.randn(200, t)
    vals, idx = first_max_top_k(h, k)
    ref_vals, ref_idx = h.topk(k, dim=-1)
    assert torch.equal(vals, ref_vals) and torch.equal(idx, ref_idx)
    tied = torch.zeros(3, t)
    tied[1, t - 1] = 1.  # one winner, then a tie among the rest
    assert torch.equal(first_max_top_k(tied, k)[1][0], torch.arange(k))
    assert first_max_top_k(tied, k)[1][1].tolist() == [t - 1] + list(range(k - 1))


def test_fresh_gate_in_eval_picks_the_first_k_experts():
    gate = NoisyTopKGate(16, 5, top_k=2).eval()  # zero-initialised W_g: every logit ties
    out = gate(torch.randn(50, 16))
    assert (out.top_idx == torch.tensor([0, 1])).all()
    assert torch.equal(out.combine, torch.tensor([[.5, .5, 0., 0., 0.]]).expand(50, 5))


def test_eval_combine_is_softmax_k_without_scatter():
    torch.manual_seed(0)
    h = torch.randn(64, 5)
    vals, idx = first_max_top_k(h, 2)
    assert torch.equal(one_hot_combine(idx, vals.softmax(-1), 5), softmax_k(h, 2))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
@pytest.mark.parametrize('train', [False, True])
def test_gate_with_dynamically_quantised_linears(train):
    torch.manual_seed(0)
    gate = NoisyTopKGate(16, 5, top_k=2)
    with torch.no_grad():
        gate.w_gate.weight.normal_()
    gate.train(train)
    quantised = torch.ao.quantization.quantize_dynamic(gate, {torch.nn.Linear}, dtype=torch.qint8).train(train)
    assert not isinstance(quantised.w_gate, torch.nn.Linear)
    x = torch.randn(40, 16).bfloat16().float()  # exact in bfloat16 too
    torch.manual_seed(1)
    ref = gate(x)
    torch.manual_seed(1)
    out = quantised(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # the gate stays float32 under autocast
        torch.manual_seed(1)
        amp = quantised(x.bfloat16())
    assert out.combine.dtype == torch.float32 and amp.combine.dtype == torch.float32
    assert torch.equal(out.combine, amp.combine) and torch.equal(out.top_idx, amp.top_idx)
    # int8 activations move the logits a little: close gates, routes equal but for near-ties
    assert (out.combine - ref.combine).abs().max() < 0.1
    assert (out.top_idx == ref.top_idx).float().mean() > 0.9
    assert (out.aux_loss is None) == (not train)
