"""mLiT's noisy top-k gate and its balancing loss, mLiT Eqs. 2-12.

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783 (mLiT Sec. 2.1.2, mLiT Eqs. 2-12), which
writes out the gate of "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer" (Shazeer et al.
2017, arXiv:1701.06538). Implemented here: Softmax_k (mLiT Eqs. 2, 4), the noisy logits H (mLiT Eq. 3), the
probability P of staying in the top k (mLiT Eq. 5), the threshold Ψ (mLiT Eqs. 6-9), the load and importance losses
(mLiT Eqs. 10-11) and their sum L (mLiT Eq. 12), the layer's auxiliary loss (read by
:func:`timm_mlit.layers.aux_loss.aux_losses`).

Symbols follow the paper: ``x`` is the (b·n, m) token matrix, ``W_g`` and ``W_noise`` are (m, t) gate weights,
``H`` the noisy logits (mLiT Eq. 3), ``G = Softmax_k(H)`` the gates (mLiT Eq. 2), ``Ψ`` the top-k threshold
(mLiT Eq. 6), ``P`` the probability of staying in the top k under fresh noise (mLiT Eq. 5).

Choices where the paper is silent or inconsistent:
  * ``gate_noise_eps``: the reference code adds 1e-2 to the noise std, ``softplus(x W_noise) + 1e-2``; mLiT Eqs. 3
    and 5 omit it. We take it (it keeps mLiT Eq. 5's division finite) and use the same std in mLiT Eqs. 3 and 5.
  * mLiT Eq. 11 as printed has no CV; Shazeer's importance loss has it, and so does ours.
  * CV = std / mean with the unbiased std (the paper's wording); ``moe_cv_squared=True`` gives Shazeer's CV².
  * Logits -> top-k -> softmax (the reference code's 2024 softmax-before-top-k change is a bug).
  * Everything here runs in float32, also under autocast: fp16 load sums overflow and bf16 ties the k-th and
    (k+1)-th logits on a fraction of tokens. ``W_g``/``W_noise`` may be quantised Linears
    (``torch.ao.quantization.quantize_dynamic``): they are then called as modules, on float32 input.
  * Eval picks the top k by k rounds of argmax (:func:`first_max_top_k`): ties go to the lowest expert index
    in every runtime (a fresh model's zero gates tie everywhere), and the graph has no TopK, scatter or einsum
    (``G`` is built by comparing indices with an arange). Exported graphs pick the same experts by constant
    matmuls (:func:`rank_top_k_softmax`). Training keeps ``topk`` (its noise makes ties vanishingly rare).
"""
import warnings
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

__all__ = [
    'GateOutput', 'NoisyTopKGate', 'softmax_k', 'top_k_softmax', 'psi', 'prob_in_top_k', 'coefficient_of_variation',
    'first_max_top_k', 'one_hot_combine', 'rank_selection_matrices', 'rank_top_k_softmax', 'linear_fp32',
    'sorted_softmax',
]


class GateOutput(NamedTuple):
    """What the gate hands to the experts (and the loss to the training loop)."""
    combine: torch.Tensor  # G(x), (N, t): k non-zeros per row that sum to 1 (mLiT Eq. 2)
    top_idx: torch.Tensor  # (N, k) indices of the chosen experts, best first
    top_gates: torch.Tensor  # (N, k) their gate values, G gathered at top_idx
    aux_loss: Optional[torch.Tensor]  # L = L_importance + L_load (mLiT Eq. 12), a scalar; None outside training


def top_k_softmax(h: torch.Tensor, k: int, top_vals: Optional[torch.Tensor] = None, top_idx: Optional[torch.Tensor] = None):
    """Softmax_k of mLiT Eq. 2: softmax over the k largest entries of each row, zeros elsewhere.

    Returns ``(G, top_idx, top_gates)``. ``top_vals``/``top_idx`` may be passed when the caller already has
    ``h.topk(>= k)`` (only their first k columns are used).
    """
    if top_vals is None or top_idx is None:
        top_vals, top_idx = h.topk(k, dim=-1)
    top_idx = top_idx[..., :k]
    top_gates = top_vals[..., :k].softmax(dim=-1)
    gates = torch.zeros_like(h).scatter(-1, top_idx, top_gates)
    return gates, top_idx, top_gates


def sorted_softmax(v: torch.Tensor) -> torch.Tensor:
    """``v.softmax(-1)`` for rows sorted in descending order (as ``topk`` returns them), written out as
    ``exp(v − v[0]) / Σ exp(v − v[0])``: the same formula as the softmax kernel (the first entry is the row's max),
    several times faster than it on a CPU for the k = 2 or 3 columns of mLiT Eq. 2."""
    e = (v - v[..., :1].detach()).exp()  # the shift changes no value, so it takes no gradient (as in softmax's)
    return e / e.sum(-1, keepdim=True)


def first_max_top_k(h: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``h.topk(k)`` by k rounds of max/argmax: (values, indices), best first, ties to the lowest index.

    ``argmax`` returns the first maximal index in PyTorch and in ONNX (``select_last_index=0``), so every runtime
    picks the same experts; each chosen entry is masked to −inf before the next round.
    """
    columns = torch.arange(h.shape[-1], device=h.device)
    vals, idxs = [], []
    for j in range(k):
        idx = h.argmax(dim=-1, keepdim=True)
        vals.append(h.gather(-1, idx))
        idxs.append(idx)
        if j + 1 < k:
            h = h.masked_fill(columns == idx, float('-inf'))
    return torch.cat(vals, dim=-1), torch.cat(idxs, dim=-1)


def one_hot_combine(top_idx: torch.Tensor, top_gates: torch.Tensor, num_experts: int) -> torch.Tensor:
    """The dense (N, t) gate matrix G from the chosen indices and gates, by comparing with an arange (no scatter)."""
    columns = torch.arange(num_experts, device=top_idx.device)
    one_hot = (top_idx.unsqueeze(-1) == columns).to(top_gates.dtype)  # (N, k, t)
    return (one_hot * top_gates.unsqueeze(-1)).sum(-2)


def rank_selection_matrices(t: int, k: int, dtype: torch.dtype = torch.float32, device=None) -> Dict[str, torch.Tensor]:
    """The constant matrices :func:`rank_top_k_softmax` multiplies by, for t experts and top k (k < t):
    ``pair_diff`` (t, P) and ``pair_count`` (P, t) over the P = t(t−1)/2 pairs a < b, the ``rank_limit`` (t,), and,
    for k = 2, ``pair_gap`` = 2I − 1 (t, t). Quantising them would change which experts are chosen, so
    ``timm_mlit.export.quantize_onnx`` finds them by value and leaves their matmuls in float32."""
    pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
    c = 2. ** -125
    # plain-data constants (no indexed writes, which a traced graph would record as scatters)
    rows = {
        'pair_diff': [[2. ** 24 if i == b else -2. ** 24 if i == a else 0. for a, b in pairs] for i in range(t)],
        'pair_count': [[1. if i == a else -1. if i == b else 0. for i in range(t)] for a, b in pairs],
        'rank_limit': [(k - i) * c for i in range(t)],
    }
    if k == 2:
        rows['pair_gap'] = [[1. if i == j else -1. for j in range(t)] for i in range(t)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # constants by design
        return {name: torch.tensor(v, dtype=dtype, device=device) for name, v in rows.items()}


def rank_top_k_softmax(h: torch.Tensor, k: int, num_experts: Optional[int] = None) -> torch.Tensor:
    """Softmax_k(H) of mLiT Eq. 2 as a dense (N, t) matrix, choosing the experts :func:`first_max_top_k` chooses
    (ties to the lowest index) by two small matmuls with constant matrices instead of k sequential rounds,
    gathers and index comparisons: the graph an exported eval forward takes
    (:class:`~timm_mlit.layers.mlit_moe.MoEFeedForward`), where at batch 1 the count and kind of small ops set the
    latency (docs/benchmarks.md, "On the edge").

    Entry j ranks above entry i when ``h_j > h_i``, or ``h_j == h_i`` and ``j < i``; i is chosen when fewer than k
    entries rank above it. For each pair a < b the first matmul forms ``D_ab = 2^24 (h_b − h_a)``; this is exact up
    to the one rounding of the subtraction (multiplying by a power of two is exact, every other product is an exact
    0), so its sign is the sign of ``h_b − h_a``, and the 2^24 keeps a nonzero difference out of the subnormal range.
    ``clamp(D_ab, 0, c)`` with ``c = 2^-125`` is then exactly c when b ranks above a by value and 0 otherwise, and
    with ``P_ab`` that indicator the rank of i is ``i + Σ_{b>i} P_ib − Σ_{a<i} P_ai``: the second matmul sums these
    multiples of c exactly (:func:`rank_selection_matrices`).

    The gates: for k = 2 (the paper's), the softmax of the two chosen logits is ``σ(h_i − h_o)`` for chosen i and
    the other chosen o, and ``(C ⊙ H) (2I − 1)`` with C the 0/1 chosen matrix is ``2 h_i − (h_i + h_o)`` there:
    one more constant matmul and a sigmoid, where onnxruntime's softmax over rows of t ≤ 5 entries cost more than
    the whole selection; unchosen entries are multiplied by an exact 0. Against the eager forward's softmax: the
    chosen experts are exactly the eager forward's, and the gates agree within about 1e-7 (absolute), except that a
    chosen gate below about 1e-38 in PyTorch, or about 1e-8 in onnxruntime (whose Sigmoid is an approximation), may
    come out as 0 where the softmax gives a tiny positive value. For other k, unchosen entries are set to −inf
    before one softmax (they get exactly 0). Logits beyond ±2^100 (which would overflow the scaling) are outside its domain.

    ``num_experts``: t, if known as a Python int (``h``'s last size otherwise).
    """
    t = h.shape[-1] if num_experts is None else num_experts
    if k >= t:
        return h.softmax(dim=-1)
    m = rank_selection_matrices(t, k, h.dtype, h.device)
    c = 2. ** -125
    chosen = torch.clamp(h @ m['pair_diff'], 0., c) @ m['pair_count'] < m['rank_limit']  # c (rank_i - i) < c (k - i)
    if k == 2:
        chosen = chosen.to(h.dtype)
        return torch.sigmoid((chosen * h) @ m['pair_gap']) * chosen
    return torch.where(chosen, h, float('-inf')).softmax(dim=-1)


def linear_fp32(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` at ``x``'s (float32 or wider) precision whatever the layer's dtype; a quantised Linear
    (whose ``weight`` is a method) is called as a module."""
    if isinstance(linear, nn.Linear):
        return F.linear(x, linear.weight.to(x.dtype), None if linear.bias is None else linear.bias.to(x.dtype))
    return linear(x).to(x.dtype)


def softmax_k(h: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax_k(H) of mLiT Eq. 2 as a dense matrix (mLiT Eq. 4 is its worked example)."""
    return top_k_softmax(h, k)[0]


def psi(h: torch.Tensor, k: int, top_vals: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ψ(H) of mLiT Eq. 6: for entries in the row's top k, the (k+1)-th largest value of the row, else the k-th.

    ``top_vals`` may carry the row's sorted top-(k+1) values if they are at hand. mLiT Eq. 9 is the worked example.
    """
    if top_vals is None:
        top_vals = h.topk(k + 1, dim=-1).values
    l_k = top_vals[..., k - 1:k]  # l_r^k
    l_k1 = top_vals[..., k:k + 1]  # l_r^{k+1}
    return torch.where(h >= l_k, l_k1, l_k)


def prob_in_top_k(
        clean: torch.Tensor,
        h: torch.Tensor,
        noise_std: torch.Tensor,
        k: int,
        top_vals: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """P(x) of mLiT Eq. 5: Φ((x W_g − Ψ(H)) / noise std), the chance that each entry stays in the top k."""
    return torch.special.ndtr((clean - psi(h, k, top_vals)) / noise_std)


def coefficient_of_variation(x: torch.Tensor, squared: bool = False, eps: float = 1e-10) -> torch.Tensor:
    """CV = std / mean of a vector (unbiased std, as torch and the reference code); CV² with ``squared``.

    The variance is floored at a tiny value before the square root so that a perfectly balanced vector
    (variance exactly 0) does not give an infinite gradient.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    var = x.var()
    mean = x.mean()
    if squared:
        return var / (mean * mean + eps)
    return var.clamp_min(1e-20).sqrt() / (mean + eps)


@register_notrace_module  # an FX leaf: traced graphs call it whole, so its float32 autocast-off region survives
class NoisyTopKGate(nn.Module):
    """The gating network G of mLiT Eqs. 2-3 with the balancing losses of mLiT Eqs. 5-12.

    ``W_g`` and ``W_noise`` are bias-free (m, t) maps that start at zero, as in Shazeer et al. and the reference
    code. Noise is drawn only in training; in eval the gate is ``Softmax_k(x W_g)`` and no loss is computed.
    """

    def __init__(
            self,
            dim: int,
            num_experts: int,
            top_k: int = 2,
            gate_noise_eps: float = 1e-2,
            moe_importance_weight: float = 1e-2,
            moe_load_weight: float = 1e-2,
            moe_cv_squared: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width m.
            num_experts: Experts t.
            top_k: Experts chosen per token, k (2 in the paper).
            gate_noise_eps: Added to the noise std, ``softplus(x W_noise) + eps`` (the reference code's 1e-2).
            moe_importance_weight: w_importance (mLiT Eq. 11).
            moe_load_weight: w_load (mLiT Eq. 10).
            moe_cv_squared: CV² (Shazeer, the reference code) instead of the paper's CV in the loss (mLiT Eq. 12).

        The names are the model's ``create_model`` arguments (:class:`~timm_mlit.models.MLiT`), checked here only.
        """
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f'top_k must be in [1, num_experts={num_experts}] (experts chosen per token among the layer\'s '
                f'{num_experts}), got {top_k}.')
        dd = {'device': device, 'dtype': dtype}
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate_noise_eps = gate_noise_eps
        self.moe_importance_weight = moe_importance_weight  # w_importance, mLiT Eq. 11
        self.moe_load_weight = moe_load_weight  # w_load, mLiT Eq. 10
        self.moe_cv_squared = moe_cv_squared
        self.w_gate = nn.Linear(dim, num_experts, bias=False, **dd)  # W_g
        self.w_noise = nn.Linear(dim, num_experts, bias=False, **dd)  # W_noise
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.w_gate.weight)
        nn.init.zeros_(self.w_noise.weight)

    def extra_repr(self) -> str:
        return f'num_experts={self.num_experts}, top_k={self.top_k}, moe_cv_squared={self.moe_cv_squared}'

    def forward(self, x: torch.Tensor) -> GateOutput:
        """x: (N, m) tokens. The gate runs in float32 (or wider) with autocast off."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if torch.jit.is_scripting():  # TorchScript cannot open an autocast region on a runtime device
            return self._gate(x)
        if x.device.type == 'meta':  # no autocast on meta (shape-only runs, e.g. timm's config tests)
            return self._gate(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._gate(x)

    def _logits(self, x: torch.Tensor, noise: bool = False) -> torch.Tensor:
        """x W_g (or x W_noise with ``noise``) at x's precision."""
        if torch.jit.is_scripting():
            weight = self.w_noise.weight if noise else self.w_gate.weight
            return F.linear(x, weight.to(x.dtype))
        return self._logits_any_linear(x, noise)

    @torch.jit.unused
    def _logits_any_linear(self, x: torch.Tensor, noise: bool) -> torch.Tensor:
        return linear_fp32(self.w_noise if noise else self.w_gate, x)

    def eval_combine(self, x: torch.Tensor) -> torch.Tensor:
        """G(x) of an eval forward as the dense (N, t) matrix only (no indices), by :func:`rank_top_k_softmax`: the
        same experts as ``forward(x).combine`` in eval mode, and its gates up to float rounding (for k = 2 see
        there). The export graph's gate."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if x.device.type == 'meta':
            return rank_top_k_softmax(self._logits(x), self.top_k, self.num_experts)
        with torch.autocast(device_type=x.device.type, enabled=False):  # float32, as forward
            return rank_top_k_softmax(self._logits(x), self.top_k, self.num_experts)

    def _train_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x W_g, x W_noise) at x's precision. Two plain Linears are taken as one matmul of width 2t (one
        product of x in the forward, one for its gradient in the backward); quantised ones one by one."""
        if torch.jit.is_scripting():
            return self._logits(x), self._logits(x, noise=True)
        return self._train_logits_any_linear(x)

    @torch.jit.unused
    def _train_logits_any_linear(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if type(self.w_gate) is nn.Linear and type(self.w_noise) is nn.Linear:
            weight = torch.cat([self.w_gate.weight, self.w_noise.weight]).to(x.dtype)
            clean, noise = F.linear(x, weight).split(self.num_experts, dim=-1)
            # contiguous: the (N, t) ops that follow (softplus above all) run many times slower on strided halves
            return clean.contiguous(), noise.contiguous()
        return self._logits(x), self._logits(x, noise=True)

    def _gate(self, x: torch.Tensor) -> GateOutput:
        k, t = self.top_k, self.num_experts
        if not self.training:  # G = Softmax_k(x W_g), mLiT Eq. 2 without noise; ties to the lowest expert index
            clean = self._logits(x)  # x W_g
            top_vals, top_idx = first_max_top_k(clean, k)
            top_gates = top_vals.softmax(dim=-1)
            return GateOutput(one_hot_combine(top_idx, top_gates, t), top_idx, top_gates, None)

        clean, noise_logits = self._train_logits(x)  # x W_g, x W_noise
        noise_std = F.softplus(noise_logits) + self.gate_noise_eps
        h = clean + torch.randn_like(clean) * noise_std  # H(x), mLiT Eq. 3
        # one top-(k+1) serves Softmax_k (first k columns) and Ψ (columns k-1 and k)
        top_vals, top_idx = h.topk(min(k + 1, t), dim=-1)
        top_idx = top_idx[:, :k]
        top_gates = sorted_softmax(top_vals[:, :k])  # Softmax_k(H), mLiT Eq. 2: the k gates of each row
        gates = torch.zeros_like(h).scatter(-1, top_idx, top_gates)  # G(x), (N, t)

        # sum_0 G(x), mLiT Eq. 11, from the k non-zeros of each row (a 1-D scatter-add: its backward is a 1-D gather)
        importance = h.new_zeros(t).index_add(0, top_idx.reshape(-1), top_gates.reshape(-1))
        if k < t:
            load = prob_in_top_k(clean, h, noise_std, k, top_vals).sum(0)  # sum_0 P(x), mLiT Eq. 10
        else:
            load = (gates > 0).sum(0).float()  # every expert always chosen: P is 1, use counts
        if t > 1:
            aux_loss = (
                self.moe_importance_weight * coefficient_of_variation(importance, self.moe_cv_squared)
                + self.moe_load_weight * coefficient_of_variation(load, self.moe_cv_squared)
            )  # L, mLiT Eq. 12
        else:
            aux_loss = clean.new_zeros(())
        return GateOutput(gates, top_idx, top_gates, aux_loss)
