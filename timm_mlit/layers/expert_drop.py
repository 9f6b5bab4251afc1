"""Dropout masks for mLiT's per-expert dropout, drawn cheaply and exactly.

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, mLiT Sec. 2.1.2 (dropout 0.1 on each expert's
output, mLiT Eq. 13's FFN_i); used by :class:`~timm_mlit.layers.mlit_experts.SharedSwiGLUExperts`.

Per-expert dropout (mLiT Sec. 2.1.2, rate p = 0.1) multiplies each chosen expert's output, an m-vector per
(token, chosen expert), by an independent mask: 0 with probability p, 1/(1−p) otherwise, as ``nn.Dropout``. That
is N·k·m Bernoulli draws per layer, one random number per element of the experts' outputs: on a CPU, drawing that
many is a large share of the layer's cost (docs/benchmarks.md has the measurement).

:func:`expert_drop_mask` draws the same distribution with about p·N·k·m random numbers on the CPU: in a sequence of
independent Bernoulli(p) trials the gaps between successes are independent Geometric(p) variables, so the dropped
positions are the running sums of Geometric(p) draws. The mask starts as 1/(1−p) everywhere and the dropped
positions are set to 0; if the drawn gaps happen not to reach the end of the mask, more are drawn (exact, never
truncated). :func:`drop_positions` returns those positions alone, for a caller that needs no dense mask (the
experts' eager CPU training path). On CUDA, where a Bernoulli draw per element is cheap and a data-dependent loop
would sync the host, it is ``bernoulli_`` per element.

It is a PyTorch custom op, so ``torch.compile`` keeps it out of the compiled graph as one opaque call (no graph
break, no RNG lowered into the graph), FX and ``torch.export`` record it as a single node, and it runs on ``meta``.
The draw uses the default generator of the device, so ``torch.manual_seed`` reproduces it.
"""
import math

import torch

__all__ = ['expert_drop_mask', 'geometric_drop_mask', 'drop_positions', 'geometric_gaps']


def geometric_gaps(count: int, p: float, device: torch.device) -> torch.Tensor:
    """``count`` iid Geometric(``p``) variables (trials up to and including the first success, >= 1), float64.

    Drawn by inversion, ``ceil(log(u) / log(1 − p))`` from a uniform ``u`` in (0, 1] (one minus ``torch.rand``; the
    clamp only maps u = 1 to 1), as vectorised float64 ops where ``Tensor.geometric_`` inverts element by element
    (faster on a CPU; docs/benchmarks.md has the measurement): P(gap = j) = (1 − p)^(j−1) − (1 − p)^j =
    p (1 − p)^(j−1). The same distribution as ``geometric_``, other draws from the same generator.
    """
    u = torch.rand(count, dtype=torch.float64, device=device).neg_().add_(1.)  # uniform in (0, 1]
    return u.log_().div_(math.log1p(-p)).ceil_().clamp_min_(1.)  # u = 1 (chance 2^-53) would give 0


def drop_positions(numel: int, p: float, device: torch.device, margin: float = 8.) -> torch.Tensor:
    """The dropped positions of ``numel`` iid Bernoulli(``p``) trials, ascending int64 flat indices, from Geometric
    gaps (about p·``numel`` random numbers instead of ``numel``).

    Each round draws the expected number of drops plus ``margin`` (standard deviations + 2) gaps
    (:func:`geometric_gaps`), and rounds repeat until the gaps pass the end; ``margin`` changes only the speed, never
    the distribution. CPU only (it reads the last position on the host).
    """
    if not 0. < p < 1.:
        raise ValueError(f'expert dropout rate must be in (0, 1), got {p}.')
    found = []
    if numel == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    expected = numel * p
    start = 0  # position of the next trial
    while True:
        # the drops among the remaining trials are Binomial(trials, p): mean + 8 (std + 2) gaps pass the end but
        # for a ~1e-15 chance, and a shortfall draws more
        count = max(1, int(expected + margin * (math.sqrt(expected * (1. - p)) + 2.)))
        gaps = geometric_gaps(count, p, device)  # trials up to and including a drop, >= 1
        pos = gaps.cumsum_(0).to(torch.int64).add_(start - 1)  # 0-based positions of the dropped trials
        last = int(pos[-1])
        if last >= numel - 1:
            found.append(pos[:int(torch.searchsorted(pos, numel))])  # those before the end
            break
        found.append(pos)
        start = last + 1
        expected = (numel - start) * p
    return found[0] if len(found) == 1 else torch.cat(found)


def geometric_drop_mask(
        numel: int, p: float, dtype: torch.dtype, device: torch.device, margin: float = 8.) -> torch.Tensor:
    """A flat mask of ``numel`` iid entries, 0 with probability ``p`` and 1/(1−p) otherwise: 1/(1−p) everywhere
    but at :func:`drop_positions` (the same draws, so the same seed gives the same mask)."""
    mask = torch.full((numel,), 1. / (1. - p), dtype=dtype, device=device)
    return mask.index_fill_(0, drop_positions(numel, p, device, margin), 0.)


@torch.library.custom_op('timm_mlit::expert_drop_mask', mutates_args=())
def expert_drop_mask(gates: torch.Tensor, width: int, p: float) -> torch.Tensor:
    """Per-expert dropout mask for ``gates`` (N, k): (N, k, width) of 0 (prob. ``p``) and 1/(1−p), ``gates``' dtype.

    ``gates`` only gives the shape, dtype and device (its values are not read).
    """
    n, k = gates.shape
    if not 0. < p < 1.:
        raise ValueError(f'expert dropout rate must be in (0, 1), got {p}.')
    if gates.device.type == 'cpu':
        return geometric_drop_mask(n * k * width, p, gates.dtype, gates.device).view(n, k, width)
    return torch.empty((n, k, width), dtype=gates.dtype, device=gates.device).bernoulli_(1. - p).div_(1. - p)


@expert_drop_mask.register_fake
def _(gates: torch.Tensor, width: int, p: float) -> torch.Tensor:
    n, k = gates.shape
    return gates.new_empty((n, k, width))
