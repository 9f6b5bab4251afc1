"""Whether a forward is being captured into a graph that cannot carry Python side effects.

Shared by mLiT's MoE layer and Mobile V-MoE's router and experts: their forwards record what the auxiliary losses
need (:mod:`timm_mlit.layers.aux_loss`) only outside graph capture. No paper equation lives here.
"""
import torch

__all__ = ['is_graph_capture']


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
