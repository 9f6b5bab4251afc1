"""``x W_i + b_i`` for the k experts each token chose only, as one grouped GEMM: mLiT's expert matmul without dispatch.

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, Sec. 2.1.2 (the expert-owned ``W_i, b_i`` of
mLiT Eq. 13); used by :class:`~timm_mlit.layers.mlit_experts.SharedSwiGLUExperts`.

:func:`grouped_expert_mm` takes the tokens ``x`` (N, m), the stacked ``[W_1 … W_t]`` (t·d_h, m) and biases, and the
gate's chosen experts ``top_idx`` (N, k), and returns ``h[n, j] = x_n W_i + b_i`` with ``i = top_idx[n, j]``, (N, k,
d_h): k·N·m·d_h multiply-adds instead of the t·N·m·d_h of ``x [W_1 … W_t]``. Inside, the N·k (token, expert) pairs
are sorted by expert (a stable argsort on the device), the tokens gathered in that order, the per-expert row counts
summed into offsets (``index_add``, no ``bincount``: no host sync on CUDA) and the products taken by one
``torch.nn.functional.grouped_mm`` (group i: the rows routed to expert i times ``W_i``); the result is put back in
(token, choice) order by a row gather with the inverse permutation; the biases are added as one matmul of the pairs'
one-hot expert rows with the (t, d_h) bias table (``addmm_``, no gather of N·k bias rows). An expert that gets no
token is an empty group.

The backward is the same grouped GEMM twice: ``dx`` from ``grouped_mm(dh, W)`` (scattered back to the tokens and
summed over their k choices) and ``dW_i = dh_iᵀ x_i`` from the 2-D × 2-D form with the same offsets; ``db_i`` is the
sum of expert i's rows of ``dh``, taken as (one-hot rows)ᵀ dh in float32. ``grouped_mm`` wants every row stride a
multiple of 16 bytes, which autograd's own formula does not meet for widths like d_h = 81; here the operands are laid
out padded (zero columns for m, unused padding columns for d_h, both sliced off), so any m and d_h work.

Both directions are PyTorch custom ops, so ``torch.compile`` keeps each as one opaque call (no graph break; the
data-dependent group sizes stay inside). ``grouped_mm`` is native on CUDA for bf16 on sm90/sm100; elsewhere on CUDA it
may fall back to a loop over the groups (a host sync), and on the CPU it is ATen's loop of one ``mm`` per group
(each group a plain GEMM on a slice, no copy).
:func:`grouped_mm_supported` and :func:`grouped_pays_on_cpu` say where the layer uses it by default.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

__all__ = ['grouped_expert_mm', 'grouped_mm_supported', 'grouped_pays_on_cpu']

_CUDA_DTYPES = (torch.bfloat16,)
_CPU_DTYPES = (torch.float32,)


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the expert matmul defaults to the grouped GEMM for tensors of ``device`` and ``dtype``: CPU float32
    (measured faster than the dense matmul there), CUDA bf16 on compute capability 9.x/10.x (native grouped GEMM).
    Nowhere else: meta, other devices and dtypes (there ``grouped_mm`` is missing, slow or syncs the host)."""
    if not hasattr(F, 'grouped_mm'):
        return False
    if device.type == 'cpu':
        return dtype in _CPU_DTYPES
    if device.type == 'cuda' and dtype in _CUDA_DTYPES:
        return _cuda_major(-1 if device.index is None else device.index) in (9, 10)
    return False


@torch.compiler.assume_constant_result  # a constant to torch.compile, not traced into
def _cuda_major(index: int) -> int:
    """Compute capability major of CUDA device ``index`` (-1: the current one); 0 without CUDA."""
    if not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_capability(torch.cuda.current_device() if index < 0 else index)[0]


def grouped_pays_on_cpu(num_experts: int, top_k: int, hidden_dim: int) -> bool:
    """Whether, on a CPU, the grouped GEMM beats the dense matmul plus row gather: when the width the dense matmul
    computes for nothing per chosen expert, (t − k)·d_h / k, is at least 64.

    The grouped path saves (t − k)·N·m·d_h multiply-adds per direction but moves the N·k pairs' rows of x, dx and
    dh through sorts and gathers, whose cost does not shrink with d_h. The threshold of 64 comes from timing both
    forms, forward + backward, at the shapes of ``benchmarks/bench_moe_layer.py``: the grouped GEMM was ahead at
    every shape above it and behind at every shape below it (the figures and the machine: docs/benchmarks.md).
    """
    return (num_experts - top_k) * hidden_dim >= 64 * top_k


def _pad_to(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _route(top_idx: torch.Tensor, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (token, choice) pairs sorted by expert (``order``, stable) and the int32 end offset of each expert's rows."""
    flat = top_idx.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.zeros(t, dtype=torch.int64, device=flat.device).index_add_(0, flat, torch.ones_like(flat))
    return order, counts.cumsum(0).to(torch.int32)


def _padded(x: torch.Tensor, w3: torch.Tensor, align: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (N, m) and W (t, d_h, m) with m zero-padded to a multiple of ``align`` (as they are when it already is)."""
    m = x.shape[-1]
    mp = _pad_to(m, align)
    if mp == m:
        return x, w3
    return F.pad(x, (0, mp - m)), F.pad(w3, (0, mp - m))


def _one_hot(top_idx: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """(N·k, t): row n·k + j is the one-hot vector of expert ``top_idx[n, j]``."""
    return (top_idx.reshape(-1, 1) == torch.arange(t, device=top_idx.device)).to(dtype)


@torch.library.custom_op('timm_mlit::grouped_expert_mm', mutates_args=())
def _forward(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_idx: torch.Tensor, num_experts: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h (N, k, d_h), order (N·k,), offs (t,)): ``h[n, j] = x_n W_i + b_i`` with i = top_idx[n, j]; ``order`` and
    ``offs`` (the routing) are kept for the backward."""
    n, k = top_idx.shape
    t = num_experts
    d_h = weight.shape[0] // t
    order, offs = _route(top_idx, t)
    align = 16 // x.element_size()
    xp, w3 = _padded(x, weight.view(t, d_h, -1), align)
    xs = F.embedding(order.div(k, rounding_mode='floor'), xp)  # the token of each sorted pair (a row gather)
    hs = F.grouped_mm(xs, w3.transpose(-2, -1), offs=offs)  # (N·k, d_h), rows sorted by expert
    # back to (token, choice) order, h[order[i]] = hs[i], as a row gather with the inverse permutation
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    h = hs.index_select(0, inv)
    h.addmm_(_one_hot(top_idx, t, h.dtype), bias.view(t, d_h))  # + b_i: one-hot rows times the bias table
    return h.view(n, k, d_h), order, offs


@_forward.register_fake
def _(x, weight, bias, top_idx, num_experts):
    n, k = top_idx.shape
    return (x.new_empty((n, k, weight.shape[0] // num_experts)), top_idx.new_empty((n * k,)),
            top_idx.new_empty((num_experts,), dtype=torch.int32))


@torch.library.custom_op('timm_mlit::grouped_expert_mm_backward', mutates_args=())
def _backward(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, top_idx: torch.Tensor, order: torch.Tensor,
        offs: torch.Tensor, num_experts: int, need_x: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW, db) of :func:`_forward` for ``grad`` = dL/dh (N, k, d_h); dx is zeros if not ``need_x``."""
    n, k, d_h = grad.shape
    t = num_experts
    m = x.shape[-1]
    align = 16 // grad.element_size()
    g = grad.reshape(n * k, d_h)
    # db_i: the sum of expert i's rows, accumulated in float32 (bf16 would round at every one of ~N·k/t additions),
    # as (one-hot rows)ᵀ dh: one matmul, not a row-by-row scatter-add
    db = _one_hot(top_idx, t, torch.float32).t().mm(g.float())
    gs = g.index_select(0, order)  # rows sorted by expert
    dp = _pad_to(d_h, align)
    if dp != d_h:  # row stride a multiple of 16 bytes; the padding columns are never read
        gs = torch.empty((n * k, dp), dtype=grad.dtype, device=grad.device)[:, :d_h].copy_(gs)
    xp, w3 = _padded(x, weight.view(t, d_h, m), align)
    tok = order.div(k, rounding_mode='floor')
    xs = F.embedding(tok, xp)
    dw = F.grouped_mm(gs.t(), xs, offs=offs)[..., :m]  # dW_i = dh_iᵀ x_i, (t, d_h, m)
    if need_x:
        dxs = F.grouped_mm(gs, w3, offs=offs)[:, :m]  # dh_i W_i, rows sorted by expert
        dx = torch.zeros((n, m), dtype=grad.dtype, device=grad.device).index_add_(0, tok, dxs)
    else:
        dx = torch.zeros((n, m), dtype=grad.dtype, device=grad.device)
    return dx, dw.reshape(t * d_h, m), db.to(grad.dtype).reshape(t * d_h)


@_backward.register_fake
def _(grad, x, weight, top_idx, order, offs, num_experts, need_x):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],))


@register_flop_formula(torch.ops.timm_mlit.grouped_expert_mm)
def _forward_flops(x_shape, weight_shape, bias_shape, top_idx_shape, num_experts, *args, out_shape=None, **kwargs):
    """torch's flop counter: 2 FLOPs per multiply-add, k·N·m·d_h of them (the chosen experts only)."""
    (n, m), k = x_shape, top_idx_shape[-1]
    return 2 * n * k * m * (weight_shape[0] // num_experts)


@register_flop_formula(torch.ops.timm_mlit.grouped_expert_mm_backward)
def _backward_flops(grad_shape, x_shape, *args, out_shape=None, **kwargs):
    """torch's flop counter: dW (and dx when asked), k·N·m·d_h multiply-adds each."""
    (n, k, d_h), m, need_x = grad_shape, x_shape[-1], args[-1]
    return 2 * n * k * m * d_h * (2 if need_x else 1)


def _setup_context(ctx, inputs, output):
    x, weight, _, top_idx, num_experts = inputs
    _, order, offs = output
    ctx.save_for_backward(x, weight, top_idx, order, offs)
    ctx.num_experts = num_experts


def _grad(ctx, grad, _order_grad, _offs_grad):
    x, weight, top_idx, order, offs = ctx.saved_tensors
    dx, dw, db = _backward(grad.contiguous(), x, weight, top_idx, order, offs, ctx.num_experts,
                           ctx.needs_input_grad[0])
    return dx if ctx.needs_input_grad[0] else None, dw, db, None, None


_forward.register_autograd(_grad, setup_context=_setup_context)


def grouped_expert_mm(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_idx: torch.Tensor, num_experts: int,
) -> torch.Tensor:
    """``h[n, j] = x_n W_i + b_i`` for ``i = top_idx[n, j]``: x (N, m), weight (t·d_h, m) stacking ``[W_1 … W_t]``
    (rows ``i·d_h:(i+1)·d_h`` are expert i, as in ``nn.Linear``), bias (t·d_h,), top_idx (N, k) int64, t =
    ``num_experts``. Returns (N, k, d_h), differentiable in x, weight and bias, which must share one dtype (cast them
    first under autocast)."""
    return _forward(x, weight, bias, top_idx, num_experts)[0]
