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
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    'count_params', 'count_macs', 'saved_activation_bytes', 'time_ms', 'interleaved_ms', 'autocast_for',
    'train_step_fn', 'inference_fn',
]


def count_params(model: nn.Module, exclude_prefix: Optional[str] = None) -> int:
    """Number of parameters, optionally leaving out those whose name starts with ``exclude_prefix``."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_prefix and n.startswith(exclude_prefix)))


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one eval forward on ``x`` (torch's flop counter, FLOPs / 2): the work done on x's
    device, so an mLiT layer on the grouped expert matmul (CPU fp32, where it pays) counts only its k chosen
    experts' W and one on the static matmul (CUDA, export) all t."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
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
