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
truncated). On CUDA, where a Bernoulli draw per element is cheap and a data-dependent loop would sync the host,
it is ``bernoulli_`` per element.

It is a PyTorch custom op, so ``torch.compile`` keeps it out of the compiled graph as one opaque call (no graph
break, no RNG lowered into the graph), FX and ``torch.export`` record it as a single node, and it runs on ``meta``.
The draw uses the default generator of the device, so ``torch.manual_seed`` reproduces it.
"""
import math

import torch

__all__ = ['expert_drop_mask', 'geometric_drop_mask']


def geometric_drop_mask(
        numel: int, p: float, dtype: torch.dtype, device: torch.device, margin: float = 8.) -> torch.Tensor:
    """A flat mask of ``numel`` iid entries, 0 with probability ``p`` and 1/(1−p) otherwise, from Geometric gaps.

    Each round draws the expected number of drops plus ``margin`` (standard deviations + 2) gaps, and rounds
    repeat until the gaps pass the end; ``margin`` changes only the speed, never the distribution.
    """
    mask = torch.full((numel + 1,), 1. / (1. - p), dtype=dtype, device=device)  # last slot: overflow bin
    if numel == 0:
        return mask[:0]
    expected = numel * p
    start = torch.zeros((), dtype=torch.int64, device=device)  # position of the next trial
    while True:
        # the drops among the remaining trials are Binomial(trials, p): mean + 8 (std + 2) gaps pass the end but
        # for a ~1e-15 chance, and a shortfall draws more
        count = max(1, int(expected + margin * (math.sqrt(expected * (1. - p)) + 2.)))
        gaps = torch.empty(count, dtype=torch.float64, device=device).geometric_(p)  # trials up to a drop, >= 1
        pos = gaps.cumsum(0).to(torch.int64) + (start - 1)  # 0-based positions of the dropped entries
        mask.index_fill_(0, pos.clamp_max(numel), 0.)
        last = int(pos[-1])  # a host read: this path runs on the CPU only
        if last >= numel - 1:
            break
        start = pos[-1] + 1
        expected = (numel - 1 - last) * p
    return mask[:numel]


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
