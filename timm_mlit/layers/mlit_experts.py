"""mLiT's SwiGLU experts with V and W2 shared across the layer (mLiT Eq. 13), computed without per-expert dispatch.

Paper: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783, Sec. 2.1.2 (mLiT Eqs. 1 and 13; the
per-expert dispatch form of mLiT Figure 3 is ``timm_mlit.testing.dispatch_reference``, the baseline this is tested
against). The expert dropout masks come from ``timm_mlit.layers.expert_drop``.

Expert i (mLiT Eq. 13 with biases): ``FFN_i(x) = (silu(x W_i + b_i) ⊙ (x V + b_V)) W2 + b_2``, with
``silu(x) = x·σ(x)`` (mLiT Eq. 14). Only
``W_i, b_i`` belong to the expert; ``V, b_V, W2, b_2`` are shared by the t experts of the layer. The MoE output is
``y = Σ_i G_i FFN_i(x)`` (mLiT Eq. 1).

Because V and W2 are shared and the k non-zero gates of a token sum to 1, without dropout

    y = [(Σ_i G_i silu(x W_i + b_i)) ⊙ (x V + b_V)] W2 + b_2

exactly: one matmul of width t·d_h for all the W_i, one of width d_h for V and one for W2; static shapes, no token
dispatch and no host sync. ``w`` stacks ``[W_1 … W_t]`` (rows ``i·d_h:(i+1)·d_h`` are expert i), ``v`` is V and
``w2`` is W2, each with its bias. (W and V are kept as two matmuls rather than one of width (t+1)·d_h: the
split output of a single one is strided, which slows silu's backward; docs/benchmarks.md has the measurement.)

Dropout (rate 0.1 in the paper) is applied to each expert's output before the gate weighting, Σ G_i drop(FFN_i).
``expert_drop_mode='expert'`` does exactly that without dispatch: the k chosen rows of ``x W + b`` are gathered, silu'd,
multiplied by ``x V + b_V`` and sent through W2 as N·k rows; each (token, chosen expert) output gets its own
dropout mask (0 or 1/(1−p), drawn by ``timm_mlit.layers.expert_drop`` from about p·N·k·m
random numbers), folded into the gate weights (``G_i · mask``) so that one multiply and a sum over k finish the
layer. In eager training on a CPU with autograd on, the mask is not formed: the same draws are kept as the dropped
positions, the outputs are zeroed there and weighted by ``G_i / (1 − p)`` (:class:`_DroppedAtGateSum`; one (N, k, m)
tensor saved for the backward instead of three; docs/benchmarks.md has the measurement).
``expert_drop_mode='combined'`` drops the combined output once, ``drop(y)``: same expectation, different training
noise, one W2 matmul over N rows.

Outside per-expert dropout the layer runs the form above on the k chosen experts only: their rows of ``x W + b``
are selected (``index_select``, whole rows; no scatter, no einsum; silu on k of the t rows), weighted by their
gates and summed. Adding the t − k zero-gated terms of mLiT Eq. 1 changes nothing, so this is the same function.

The expert matmul (``expert_matmul``) comes in two forms with the same parameters, state dict and results (up to
float rounding). ``'dense'`` is the one matmul of width t·d_h above, then the k chosen rows. ``'grouped'`` computes
only the k chosen ``x W_i + b_i`` of each token (mLiT Eq. 13's expert-owned term; the zero-gated terms of mLiT
Eq. 1 are never formed): k·N·m·d_h multiply-adds instead of t·N·m·d_h, by one grouped GEMM over the (token, expert)
pairs sorted by expert on the device, no per-expert Python loop and no host sync
(:mod:`timm_mlit.layers.grouped_expert_mm`, a custom op that ``torch.compile`` keeps whole). ``'auto'`` (default)
takes the grouped GEMM on a CPU in float32 only, where it is measured faster
(:func:`~timm_mlit.layers.grouped_expert_mm.grouped_pays_on_cpu`: (t − k)·d_h ≥ 64·k; at k=2, 14 of mLiT-S's 15
layers, 4 of XS's 12, none of XXS's), and the dense matmul elsewhere: on meta, under TorchScript scripting, FX
tracing, torch.jit tracing, torch.export and ONNX export (so exported graphs keep their static ops), and when ``w``
is not a plain ``nn.Linear`` (a dynamically quantised one). On CUDA (bf16 on sm90/sm100, where
:func:`~timm_mlit.layers.grouped_expert_mm.grouped_mm_supported` finds ``grouped_mm`` native) the grouped GEMM is
opt-in, ``expert_matmul='grouped'``: no GPU has measured or run it yet.
"""
from typing import Final, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .expert_drop import drop_positions  # the module also registers torch.ops.timm_mlit.expert_drop_mask
from ._tracing import is_graph_capture
from .grouped_expert_mm import grouped_expert_mm, grouped_mm_supported, grouped_pays_on_cpu
from .mlit_gate import GateOutput

__all__ = ['SharedSwiGLUExperts', 'EXPERT_DROP_MODES', 'EXPERT_MATMULS']

EXPERT_DROP_MODES = ('expert', 'combined')
EXPERT_MATMULS = ('auto', 'grouped', 'dense')


def chosen_rows(top_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Row n·t + i of the (N·t, d_h) table ``x W`` for each token n's chosen experts i (``top_idx``, (N, k)),
    flattened to (N·k,)."""
    return (torch.arange(top_idx.shape[0], device=top_idx.device).unsqueeze(-1) * num_experts + top_idx).reshape(-1)


# FX keeps the call whole: torch.fx of torch 2.5.1 cannot trace arange() on a traced size and device
torch.fx.wrap('chosen_rows')


class _SelectDistinctRows(torch.autograd.Function):
    """``table.index_select(0, rows)`` for ``rows`` without repeats, whose backward copies the gradient rows into a
    zero table (``index_copy_``) instead of adding them (``index_add_``, which the CPU runs as a scatter-add): with
    distinct rows each table row receives at most one gradient row, so the copy is the same sum."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.table_shape = table.shape
        return table.index_select(0, rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, = ctx.saved_tensors
        return grad.new_zeros(ctx.table_shape).index_copy_(0, rows, grad), None


def select_distinct_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (distinct) of the 2-D ``table``, as ``index_select`` (the backward a copy, not a scatter-add)."""
    if is_graph_capture() or not table.requires_grad:
        return table.index_select(0, rows)
    return _SelectDistinctRows.apply(table, rows)


def weighted_sum(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Σ_j w[:, j] ⊙ y[:, j]`` for y (N, k, d) and w (N, k) or (N, k, d): ``(y * w).sum(1)`` without the (N, k, d)
    product, by k multiply-adds into one (N, d) buffer (k is the gate's top k, 1 to 3 in practice)."""
    if w.dim() == 2:
        w = w.unsqueeze(-1)
    out = y[:, 0] * w[:, 0]
    for j in range(1, y.shape[1]):
        out.addcmul_(y[:, j], w[:, j])
    return out


class _GatedSiluSum(torch.autograd.Function):
    """``Σ_j g_j silu(h_j)`` (mLiT Eqs. 1, 13-14 before ``⊙ (x V + b_V)``), h (N, k, d_h), g (N, k): no (N, k, d_h)
    temporaries in the forward beyond silu's output, and in the backward the gate gradient as one batched dot
    product (``Σ_d silu(h_j) dy``) instead of a product and a sum."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        s = F.silu(h)
        ctx.save_for_backward(h, s, gates)
        return weighted_sum(s, gates)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        h, s, gates = ctx.saved_tensors
        dh = dg = None
        if ctx.needs_input_grad[1]:
            dg = torch.bmm(s, grad.unsqueeze(-1)).squeeze(-1)
        if ctx.needs_input_grad[0]:
            dh = torch.ops.aten.silu_backward(grad.unsqueeze(1) * gates.unsqueeze(-1), h)
        return dh, dg


class _DroppedGateSum(torch.autograd.Function):
    """``Σ_j (g_j mask_j) ⊙ y_j``, per-expert dropout folded into the gates: y (N, k, m) the chosen experts' outputs,
    g (N, k) their gates, mask (N, k, m) fixed (0 or 1/(1−p)). The weights ``g_j mask_j`` are formed at the gates'
    precision and cast to y's, as in the plain form; the gate gradient ``Σ_m dy ⊙ mask_j ⊙ y_j`` is one batched dot
    product, the (N, k, m) products of the plain form's backward are not formed."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, gates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = (gates.unsqueeze(-1) * mask).to(y.dtype)
        ctx.save_for_backward(y, w, mask)
        return weighted_sum(y, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, w, mask = ctx.saved_tensors
        dy = dg = None
        if ctx.needs_input_grad[1]:
            ym = y.to(mask.dtype) * mask
            dg = torch.bmm(ym, grad.to(mask.dtype).unsqueeze(-1)).squeeze(-1)
        if ctx.needs_input_grad[0]:
            dy = grad.unsqueeze(1) * w
        return dy, dg, None


class _DroppedAtGateSum(torch.autograd.Function):
    """:class:`_DroppedGateSum` with the mask given by its dropped positions: ``pos``, the flat indices into y (N, k, m)
    where ``mask`` is 0 (ascending, from :func:`~timm_mlit.layers.expert_drop.drop_positions`), ``scale`` = 1/(1−p)
    everywhere else. No (N, k, m) mask or weight tensor is formed: the forward zeroes a copy of y at ``pos`` (z =
    mask ⊙ y / scale) and sums z_j (g_j·scale) over j; the backward forms dy = dL/dout ⊗ (g_j·scale) and zeroes it at
    ``pos``. For finite y, output and dy equal :class:`_DroppedGateSum`'s with the dense mask bit for bit (up to the
    sign of a zero); a non-finite output at a dropped position gives 0 here where the dense form's ``inf · 0`` gives
    NaN. The gate gradient ``scale · Σ_m dy ⊙ z_j`` differs from its ``Σ_m dy ⊙ (mask_j ⊙ y_j)`` by float rounding.
    Saved for the backward: z, the (N, k) weights and ``pos`` (~p·N·k·m indices) instead of y, the (N, k, m) weights
    and the mask."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, gates: torch.Tensor, pos: torch.Tensor, scale: float) -> torch.Tensor:
        w = (gates * scale).to(y.dtype)  # g_j / (1 − p), (N, k), formed at the gates' precision as the dense form
        z = y.clone(memory_format=torch.contiguous_format)  # flat positions index the contiguous layout
        z.view(-1).index_fill_(0, pos, 0.)
        ctx.save_for_backward(z, w, pos)
        ctx.scale, ctx.gate_dtype = scale, gates.dtype
        return weighted_sum(z, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        z, w, pos = ctx.saved_tensors
        dy = dg = None
        if ctx.needs_input_grad[1]:
            dt = ctx.gate_dtype  # at the gates' precision, as the dense form
            dg = torch.bmm(z.to(dt), grad.to(dt).unsqueeze(-1)).squeeze(-1).mul_(ctx.scale)
        if ctx.needs_input_grad[0]:
            n, k, m = z.shape
            dy = torch.empty((n, k, m), dtype=torch.result_type(grad, w), device=grad.device)  # contiguous, as z
            torch.mul(grad.unsqueeze(1), w.unsqueeze(-1), out=dy)  # whatever grad's strides
            dy.view(-1).index_fill_(0, pos, 0.)
        return dy, dg, None, None


class SharedSwiGLUExperts(nn.Module):
    """t SwiGLU experts of hidden size d_h sharing V and W2 (mLiT Sec. 2.1.2), in the fused form."""
    per_expert_drop: Final[bool]

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            num_experts: int,
            expert_drop_rate: float = 0.1,
            expert_drop_mode: str = 'expert',
            expert_matmul: str = 'auto',
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width m.
            hidden_dim: Expert hidden size d_h.
            num_experts: Experts t.
            expert_drop_rate: Dropout on the experts' outputs (0.1 in the paper).
            expert_drop_mode: 'expert' drops each chosen expert's output (the paper); 'combined' drops the
                gate-weighted sum once (same expectation, one W2 matmul over N rows).
            expert_matmul: 'auto', 'grouped' or 'dense', the expert matmul (module docstring).

        The names are the model's ``create_model`` arguments (:class:`~timm_mlit.models.MLiT`), checked here only.
        """
        super().__init__()
        if expert_drop_mode not in EXPERT_DROP_MODES:
            raise ValueError(
                f"expert_drop_mode must be one of {EXPERT_DROP_MODES} ('expert': each chosen expert's output dropped, "
                f"the paper; 'combined': the combined output dropped once), got {expert_drop_mode!r}.")
        if expert_drop_mode == 'expert' and not 0. <= expert_drop_rate < 1.:
            raise ValueError(
                f"expert_drop_rate must be in [0, 1) with expert_drop_mode='expert' (each kept output is scaled by "
                f"1/(1 - rate)), got {expert_drop_rate!r}. Fix: a rate below 1, e.g. the paper's 0.1.")
        if expert_matmul not in EXPERT_MATMULS:
            raise ValueError(
                f"expert_matmul must be one of {EXPERT_MATMULS} ('auto' picks per device and shape; 'dense' always "
                f"computes every expert's x W_i; 'grouped' only the chosen ones'), got {expert_matmul!r}.")
        if expert_matmul == 'grouped' and not hasattr(F, 'grouped_mm'):
            raise ValueError(
                f"expert_matmul='grouped' needs F.grouped_mm, missing in torch {torch.__version__}: use 'auto' or "
                f"'dense', or a torch that has it.")
        dd = {'device': device, 'dtype': dtype}
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.num_experts = num_experts
        self.expert_drop_mode = expert_drop_mode
        self.per_expert_drop = expert_drop_mode == 'expert'
        self.expert_matmul = expert_matmul
        self.w = nn.Linear(dim, num_experts * hidden_dim, **dd)  # [W_1 … W_t], [b_1 … b_t]
        self.v = nn.Linear(dim, hidden_dim, **dd)  # V, b_V (shared)
        self.w2 = nn.Linear(hidden_dim, dim, **dd)  # W2, b_2 (shared)
        self.drop = nn.Dropout(expert_drop_rate)

    def extra_repr(self) -> str:
        return (f'num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, '
                f'expert_drop_mode={self.expert_drop_mode!r}, expert_matmul={self.expert_matmul!r}')

    @torch.jit.unused
    def use_grouped(self, x: torch.Tensor, top_k: int) -> bool:
        """Whether a forward on ``x`` with k = ``top_k`` takes the grouped GEMM (see ``expert_matmul``)."""
        if self.expert_matmul == 'dense' or not hasattr(F, 'grouped_mm'):
            return False
        if is_graph_capture() or torch.onnx.is_in_onnx_export():
            return False
        if type(self.w) is not nn.Linear or x.device.type not in ('cpu', 'cuda'):  # e.g. quantised Linear, meta
            return False
        if self.expert_matmul == 'grouped':
            return True
        if x.device.type != 'cpu' or not grouped_mm_supported(x.device, self._compute_dtype(x)):
            return False  # on CUDA the grouped GEMM is opt-in ('grouped') until it is measured on a GPU
        return grouped_pays_on_cpu(self.num_experts, top_k, self.hidden_dim)

    @torch.jit.unused
    def forward_combine(self, x: torch.Tensor, combine: torch.Tensor, tokens: int = 0) -> torch.Tensor:
        """The eval forward of the (N, m) or (B, N, m) tokens ``x`` from the dense (N, t) or (B, N, t) gate matrix
        ``combine`` (G of mLiT Eq. 2) alone; for 3-D ``x``, ``tokens`` is N (a Python int, so that the graph's
        reshapes have constant shapes). The fused form
        of the module docstring over all t experts, ``[(Σ_i G_i silu(x W_i + b_i)) ⊙ (x V + b_V)] W2 + b_2``.

        The export graph of :class:`~timm_mlit.layers.mlit_moe.MoEFeedForward` (eval only: no expert dropout). At the
        token counts of one image the t − k zero-gated experts cost less than selecting rows: no top-k indices,
        row gathers or data-dependent shapes. The gate-weighted sum is one batched matmul per token,
        (1, t) @ (t, d_h), which onnxruntime runs faster than a broadcast product and a sum over the expert axis
        (docs/benchmarks.md, "On the edge"). A zero gate adds an exact 0, so this equals :meth:`forward` up to float
        rounding.
        """
        t, d_h = self.num_experts, self.hidden_dim
        h, v = self.w(x), self.v(x)
        h = F.silu(h.reshape(-1, t, d_h))  # silu(x W_i + b_i) of every expert, one (t, d_h) matrix per token
        mixed = combine.to(h.dtype).reshape(-1, 1, t) @ h  # Σ_i G_i silu(x W_i + b_i), (tokens, 1, d_h)
        mixed = mixed.reshape(-1, d_h) if x.dim() == 2 else mixed.reshape(-1, tokens, d_h)
        return self.drop(self.w2(mixed * v))

    @torch.jit.unused
    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype ``self.w(x)`` would compute in: autocast's where it is on, else x's."""
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    @torch.jit.unused
    def _grouped_h(self, x: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """x W_i + b_i for the k chosen experts i of each token, (N, k, d_h), by one grouped GEMM."""
        dtype = self._compute_dtype(x)
        w, b = self.w.weight.to(dtype), self.w.bias.to(dtype)
        return grouped_expert_mm(x.to(dtype), w, b, top_idx, self.num_experts)

    def forward(self, x: torch.Tensor, gate: GateOutput, drop_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, m) tokens, gate: the NoisyTopKGate output for them. Returns (N, m).

        ``drop_mask`` (N, k, m), in training with per-expert dropout only, replaces the drawn mask: the output of the
        token's j-th chosen expert is multiplied by ``drop_mask[n, j]`` (so tests can fix the masks).
        """
        n, t, d_h = x.shape[0], self.num_experts, self.hidden_dim
        k = gate.top_idx.shape[-1]
        grouped = False
        if not torch.jit.is_scripting():
            grouped = self.use_grouped(x, k)
        if grouped:
            h_k = self._grouped_h(x, gate.top_idx)  # x W_i + b_i of the k chosen experts only
        else:
            h = self.w(x).reshape(n * t, d_h)  # x W_i + b_i for every expert i, row n·t + i
            rows = chosen_rows(gate.top_idx, t)
            # the k chosen experts' rows (whole-row copies; a token's k experts are distinct, so are its rows)
            if torch.jit.is_scripting():
                h_k = h.index_select(0, rows).reshape(n, k, d_h)
            else:
                h_k = select_distinct_rows(h, rows).reshape(n, k, d_h)
        v = self.v(x)  # x V + b_V
        fused = False
        if not torch.jit.is_scripting():
            fused = not is_graph_capture()  # traced and exported graphs keep the plain ops below
        if self.per_expert_drop and self.training and self.drop.p > 0.:
            y = self.w2(F.silu(h_k) * v.unsqueeze(1))  # FFN_i(x) of the chosen i, (N, k, m)
            top_gates = gate.top_gates  # float32: the mask's 1/(1-p) is applied at the gates' precision
            if drop_mask is None and fused and self._drop_at_positions(y, top_gates):
                return self._dropped_at_gate_sum(y, top_gates)  # Σ_j G_j mask_j ⊙ FFN_j(x), mask as positions
            if drop_mask is None:
                drop_mask = torch.ops.timm_mlit.expert_drop_mask(top_gates.detach(), y.shape[-1], float(self.drop.p))
            if fused:
                return self._dropped_gate_sum(y, top_gates, drop_mask)  # Σ_j G_j mask_j ⊙ FFN_j(x)
            weights = (top_gates.unsqueeze(-1) * drop_mask).to(y.dtype)  # G_j mask_j, (N, k, m)
            return (y * weights).sum(1)  # Σ_j G_j mask_j ⊙ FFN_j(x)
        top_gates = gate.top_gates.to(h_k.dtype)
        if fused:
            mixed = self._gated_silu_sum(h_k, top_gates)  # Σ_i G_i silu(x W_i + b_i)
        else:
            mixed = (F.silu(h_k) * top_gates.unsqueeze(-1)).sum(1)  # Σ_i G_i silu(x W_i + b_i)
        return self.drop(self.w2(mixed * v))

    @torch.jit.unused
    def _gated_silu_sum(self, h_k: torch.Tensor, top_gates: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (h_k.requires_grad or top_gates.requires_grad):
            return _GatedSiluSum.apply(h_k, top_gates)
        return weighted_sum(F.silu(h_k), top_gates)

    @torch.jit.unused
    def _drop_at_positions(self, y: torch.Tensor, top_gates: torch.Tensor) -> bool:
        """Whether per-expert dropout keeps its mask as the dropped positions (:class:`_DroppedAtGateSum`): in eager
        mode on a CPU with autograd on. Under torch.compile the mask stays the opaque ``expert_drop_mask`` op; on CUDA
        it is drawn per element (``bernoulli_``, no host read)."""
        return (y.device.type == 'cpu' and torch.is_grad_enabled() and (y.requires_grad or top_gates.requires_grad)
                and not torch.compiler.is_compiling())

    @torch.jit.unused
    def _dropped_at_gate_sum(self, y: torch.Tensor, top_gates: torch.Tensor) -> torch.Tensor:
        p = float(self.drop.p)
        pos = drop_positions(y.numel(), p, y.device)  # the draws expert_drop_mask makes, without the (N, k, m) mask
        return _DroppedAtGateSum.apply(y, top_gates, pos, 1. / (1. - p))

    @torch.jit.unused
    def _dropped_gate_sum(self, y: torch.Tensor, top_gates: torch.Tensor, drop_mask: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (y.requires_grad or top_gates.requires_grad):
            return _DroppedGateSum.apply(y, top_gates, drop_mask)
        return weighted_sum(y, (top_gates.unsqueeze(-1) * drop_mask).to(y.dtype))
