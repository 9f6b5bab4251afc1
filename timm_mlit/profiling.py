"""Measuring models: parameters, MACs, activation memory and timings, shared by the main job and benchmarks/.

Single timings use ``torch.utils.benchmark`` (warm-up, CUDA synchronisation, median of blocked runs). Comparisons
call the candidates in turn, one call each, and take each one's median, so that load from elsewhere on a busy
machine hits all sides alike.
"""
import time
from contextlib import nullcontext
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

__all__ = [
    'count_params', 'count_macs', 'flop_counter', 'UncountedOpError', 'saved_activation_bytes', 'time_ms',
    'interleaved_ms', 'autocast_for', 'train_step_fn', 'inference_fn',
]


class UncountedOpError(RuntimeError):
    """An attention kernel ran that the flop counter has no formula for: the MACs would leave attention out."""


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Forward attention kernels whose first three inputs are q, k, v (B, H, L, E): torch's own SDPA formula,
    ``QKᵀ`` and ``AV``, 2 FLOPs per multiply-add."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Backward attention kernels whose first four inputs are dO, q, k, v: torch's own SDPA backward formula."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# Attention kernels torch's counter has had no formula for (torch 2.4 ... 2.14 at least): the CPU's fused kernel,
# which F.scaled_dot_product_attention dispatches to on the CPU (so a CPU count left attention out), and the MPS
# and out-of-tree (PrivateUse1) kernels with the same leading inputs. Names a torch lacks are skipped.
_ATTENTION_FORMULAS = {
    '_scaled_dot_product_flash_attention_for_cpu': _sdpa_flops,
    '_scaled_dot_product_flash_attention_for_cpu_backward': _sdpa_backward_flops,
    '_scaled_dot_product_attention_math_for_mps': _sdpa_flops,
    '_scaled_dot_product_fused_attention_overrideable': _sdpa_flops,
    '_scaled_dot_product_fused_attention_overrideable_backward': _sdpa_backward_flops,
}


def _packet_formula(formula: Callable) -> Callable:
    """An already shape-wrapped formula from torch's registry, passed through custom_mapping as it is."""
    def raw(*args, **kwargs):
        return formula(*args, **kwargs)
    raw._get_raw = True  # FlopCounterMode's marker: do not wrap again
    return raw


def _extra_formulas() -> Dict[object, Callable]:
    """Formulas the counter is given on top of torch's registry, keyed by op packet as the counter looks them up.

    1. the attention kernels in ``_ATTENTION_FORMULAS`` that this torch has and has no formula for;
    2. formulas ``register_flop_formula`` filed under op overloads (torch 2.4 does, e.g. for our
       ``timm_mlit::grouped_expert_mm``), where the counter, which looks up packets, never finds them.
    """
    extra: Dict[object, Callable] = {}
    for name, formula in _ATTENTION_FORMULAS.items():
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            extra[packet] = formula
    for key, formula in flop_registry.items():
        packet = getattr(key, '_overloadpacket', None)
        if isinstance(key, torch._ops.OpOverload) and packet not in flop_registry and packet not in extra:
            extra[packet] = _packet_formula(formula)
    return extra


def flop_counter() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` (no display) that also counts the kernels it misses on some torch versions (see
    ``_extra_formulas``), so the count is the same on every supported torch. Passed in through the counter's public
    ``custom_mapping``: torch's global registry is left as it is."""
    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


class _AttentionWatch(TorchDispatchMode):
    """Records the attention kernels a forward dispatches to, to check the counter knows every one."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if 'attention' in name:
            self.seen.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def count_params(model: nn.Module, exclude_prefix: Optional[str] = None) -> int:
    """Number of parameters, optionally leaving out those whose name starts with ``exclude_prefix``."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_prefix and n.startswith(exclude_prefix)))


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one eval forward on ``x`` (torch's flop counter, FLOPs / 2, attention included on
    every supported torch, see :func:`flop_counter`): the work done on x's device, so an mLiT layer on the grouped
    expert matmul (CPU fp32, where it pays) counts only its k chosen experts' W and one on the static matmul (CUDA,
    export) all t. The matrix products count (linear, conv, matmul, attention's ``QKᵀ`` and ``AV``); softmax,
    norms and activations do not.

    Raises ``UncountedOpError`` if the forward ran an attention kernel the counter has no formula for (a torch
    newer than this code that dispatches elsewhere), rather than return a count without attention."""
    was_training = model.training
    model.eval()
    counter, watch = flop_counter(), _AttentionWatch()
    try:
        with counter, watch:
            model(x)
    finally:
        model.train(was_training)
    uncounted = sorted(str(p) for p in watch.seen if p not in counter.flop_registry)
    if uncounted:
        raise UncountedOpError(
            f'count_macs: the forward ran attention kernel(s) {uncounted} that torch {torch.__version__}\'s flop '
            f'counter has no formula for, so the MACs would leave attention out. Expected one of the kernels '
            f'timm_mlit.profiling knows. Fix: add the kernel to timm_mlit.profiling._ATTENTION_FORMULAS (its '
            f'formula is torch\'s sdpa_flop_count when its first inputs are q, k, v).')
    return counter.get_total_flops() // 2


def saved_activation_bytes(model: nn.Module, fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()``, the model's parameters left
    out: the activation memory a training step holds at its peak, on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (the benchmarks' GPU setting), nothing on CPU."""
    if device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return nullcontext()


def train_step_fn(model: nn.Module, x: torch.Tensor, loss_extra: Optional[Callable[[], torch.Tensor]] = None):
    """A forward + backward closure in train mode: mean of the logits plus, if given, ``loss_extra()``
    (e.g. the MoE loss)."""

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast_for(x.device):
            out = model(x)
            loss = out.float().mean()
            if loss_extra is not None:
                loss = loss + loss_extra()
        loss.backward()
    return step


def inference_fn(model: nn.Module, x: torch.Tensor):
    """An eval-mode forward closure under ``inference_mode``."""

    def run():
        model.eval()
        with torch.inference_mode(), autocast_for(x.device):
            model(x)
    return run


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], None], min_run_time: float = 1.0) -> float:
    """Median milliseconds per call of ``fn``."""
    fn()  # warm-up outside the timer
    timer = benchmark.Timer(stmt='fn()', globals={'fn': fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved_ms(fns: Dict[str, Callable[[], None]], calls: int = 20, warmup: int = 3) -> Dict[str, float]:
    """Median milliseconds per call of each function, the functions called in turn (A, B, C, A, B, C, …) so that
    load from elsewhere on a busy machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, list] = {k: [] for k in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}
