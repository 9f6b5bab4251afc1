"""Whether a forward is being captured into a graph that cannot carry Python side effects.

Shared by mLiT's MoE layer and Mobile V-MoE's router and experts: their forwards record what the auxiliary losses
need (:mod:`timm_mlit.layers.aux_loss`) only outside graph capture. No paper equation lives here.
"""
import warnings

import torch

__all__ = ['is_graph_capture', 'is_export', 'traced_size']


def is_graph_capture() -> bool:
    """True under torch.fx symbolic tracing, torch.jit tracing (the TorchScript ONNX exporter) or torch.export;
    False in eager mode and under torch.compile (which replays Python side effects after the compiled graph)."""
    if torch.jit.is_tracing():
        return True
    fx = torch.fx._symbolic_trace
    # older torch has only is_fx_tracing(), which there means symbolic tracing alone
    symbolic = getattr(fx, 'is_fx_symbolic_tracing', None) or fx.is_fx_tracing
    if symbolic():
        return True
    is_exporting = getattr(torch.compiler, 'is_exporting', None)
    return bool(is_exporting is not None and is_exporting())


def is_export() -> bool:
    """True while a graph is exported for deployment: torch.jit tracing (the TorchScript ONNX exporter),
    torch.export (the dynamo ONNX exporter) or ``torch.onnx.export`` itself; False in eager mode, under torch.compile
    and under torch.fx symbolic tracing (whose graphs are run again in PyTorch, and must keep the eager ops)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, 'is_exporting', None)
    return bool(is_exporting is not None and is_exporting())


def traced_size(x: torch.Tensor, dim: int):
    """``x.shape[dim]``, as a constant (a Python int) under torch.jit tracing, where it would otherwise be recorded as
    shape arithmetic (Shape, Gather, Unsqueeze, Concat in an exported graph). A TorchScript trace of these models
    holds for its example image size only anyway (the position table is traced at that size); torch.export keeps
    its symbolic size, so a dynamic axis stays dynamic there."""
    size = x.shape[dim]
    if isinstance(size, torch.Tensor):  # torch.jit tracing
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            size = int(size)
    return size
