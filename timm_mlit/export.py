"""Deploying the zoo's models where mLiT is meant to run (mLiT, arXiv 2407.17783, Sec. 1: edge intelligence):
ONNX export with a dynamic batch, int8 dynamic quantisation in PyTorch and in onnxruntime, and the checks that a
deployed copy computes what the PyTorch model computes.

Export goes through timm's own ``timm.utils.onnx.onnx_export`` (the function behind timm's ``onnx_export.py``),
written by :func:`timm_mlit._io.atomic_write` (a temporary name, renamed), so a failed export leaves no half-written
file, and a device, FIFO or symlink at the path is refused, never replaced.

int8 is *dynamic* quantisation (weights int8, activations quantised per batch at run time; no calibration data):
every ``nn.Linear`` (PyTorch) or MatMul / Gemm (onnxruntime) is quantised **except the routing**: mLiT's gates
``x W_g`` (mLiT Eqs. 2-3) and Mobile V-MoE's per-image router ``W x`` (Mobile V-MoE Eq. 2) stay float32. They are tiny ((m, t)
matrices) and they make discrete choices: int8 logits tie or swap the top-k experts of a token, which changes the
output far more than the rounding of a weight does. This follows the rule the layers already keep under autocast
(the gate runs in float32).

Needs ``pip install 'timm-mlit[export]'`` (onnx, onnxruntime, onnxscript) for the ONNX parts; without them each ONNX
function raises :class:`~timm_mlit.errors.MissingExtraError` naming that command. PyTorch's int8 needs nothing more.
"""
import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from timm_mlit._io import atomic_write
from timm_mlit.errors import require
from timm_mlit.layers import NoisyTopKGate, PerImageRouter
from timm_mlit.layers.mlit_gate import rank_selection_matrices

__all__ = [
    'EDGE_UNFRIENDLY_OPS', 'routing_modules', 'routing_weights', 'quantize_dynamic', 'export_onnx', 'quantize_onnx',
    'onnx_session', 'onnx_run', 'onnx_op_counts', 'compare_onnx',
]

# ops that edge converters (TFLite, Core ML, NPU compilers) most often reject or run on the CPU fallback
EDGE_UNFRIENDLY_OPS = ('TopK', 'ScatterElements', 'ScatterND', 'Einsum')

ROUTING_TYPES = (NoisyTopKGate, PerImageRouter)


def routing_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The modules that pick experts (mLiT's noisy top-k gates, Mobile V-MoE's per-image router), by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ROUTING_TYPES)}


def routing_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The routing matrices (``W_g``, ``W_noise``, the router's ``W``) by parameter name, and the constant matrices
    an mLiT gate's exported top-k selection multiplies by (:func:`~timm_mlit.layers.mlit_gate.rank_selection_matrices`),
    named ``GATE.selection.NAME``."""
    out = {f'{name}.{p_name}': p.detach() for name, m in routing_modules(model).items()
           for p_name, p in m.named_parameters()}
    for name, m in routing_modules(model).items():
        if isinstance(m, NoisyTopKGate) and m.top_k < m.num_experts:
            for key, value in rank_selection_matrices(m.num_experts, m.top_k).items():
                if value.dim() == 2:
                    out[f'{name}.selection.{key}'] = value
    return out


def quantize_dynamic(
        model: nn.Module,
        dtype: torch.dtype = torch.qint8,
        per_channel: bool = True,
        keep_routing_fp32: bool = True,
) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference: PyTorch dynamic quantisation of every ``nn.Linear`` (weights
    int8, per output channel by default; activations quantised per batch), routing left in float32 (module
    docstring). The model itself is not changed; the copy is in eval mode.
    """
    model = copy.deepcopy(model).eval()
    routing = tuple(routing_modules(model)) if keep_routing_fp32 else ()
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    spec = {name: qconfig for name, m in model.named_modules() if isinstance(m, nn.Linear)
            and not any(name == r or name.startswith(r + '.') for r in routing)}
    if not spec:
        raise ValueError(f'{type(model).__name__} has no nn.Linear outside its routing: nothing to quantise.')
    return torch.ao.quantization.quantize_dynamic(model, qconfig_spec=spec, dtype=dtype, inplace=True)


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if input_size is not None:
        return tuple(input_size)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if 'input_size' not in cfg:
        raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size: pass input_size=(C, H, W).')
    return tuple(cfg['input_size'])


def export_onnx(
        model: nn.Module,
        path: Union[str, Path],
        input_size: Optional[Sequence[int]] = None,
        batch_size: int = 2,
        dynamo: bool = True,
        dynamic_size: bool = False,
        opset: Optional[int] = None,
        check: bool = True,
) -> Path:
    """Export ``model`` (eval mode) to ONNX at ``path`` with a dynamic batch axis, through timm's ``onnx_export``.

    ``dynamo=True`` uses PyTorch's torch.export-based exporter (the default from PyTorch 2.9), False the TorchScript
    one; ``dynamic_size`` also makes height and width dynamic (needs the dynamo exporter and a model created with
    ``dynamic_img_size=True``). The ONNX checker runs on the result. The file appears only when the export succeeded.
    """
    require(*(['onnx'] if check else []), *(['onnx', 'onnxscript'] if dynamo else []), what='ONNX export')
    from timm.utils.onnx import onnx_export

    if dynamic_size and not getattr(model, 'dynamic_img_size', False):
        raise ValueError(
            f'dynamic_size=True exports height and width as dynamic axes, but this {type(model).__name__} was built '
            f'for one image size: create it with timm.create_model(..., dynamic_img_size=True).')
    if dynamic_size and not dynamo:
        raise ValueError(
            'dynamic_size=True needs the dynamo exporter (dynamo=True): the TorchScript exporter traces the position '
            'table at the example size only, and the graph then fails on any other size.')

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    try:
        return atomic_write(path, lambda tmp: onnx_export(
            model,
            tmp,
            input_size=_input_size(model, input_size),
            batch_size=batch_size,
            use_dynamo=dynamo,
            dynamic_size=dynamic_size,
            opset=opset,
            check=check,
            external_data=False,
        ), overwrite=True, suffix='.onnx')
    finally:
        model.train(was_training)


def _gemm_to_matmul(graph) -> None:
    """Rewrite each ``Gemm(A, W, b)`` by a stored weight (alpha = beta = 1, A not transposed) as
    ``MatMul(A, W') + b``, in place. Both exporters emit Gemm for a Linear on 2-D input (mLiT's experts and gates
    see (N, m) tokens), and onnxruntime's dynamic quantisation has integer kernels for MatMul but not for Gemm, so
    without this the experts, most of mLiT's compute, would stay float32."""
    from onnx import helper, numpy_helper

    init = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != 'Gemm' or node.input[1] not in init or attrs.get('transA', 0)
                or attrs.get('alpha', 1.) != 1. or attrs.get('beta', 1.) != 1.):
            graph.node.append(node)
            continue
        w = numpy_helper.to_array(init[node.input[1]])
        if attrs.get('transB', 0):
            w = w.T
        w_name = f'{node.input[1]}__matmul'
        if w_name not in init:
            init[w_name] = numpy_helper.from_array(np.ascontiguousarray(w), w_name)
            graph.initializer.append(init[w_name])
        has_bias = len(node.input) > 2 and node.input[2] != ''
        mm_out = f'{node.output[0]}__matmul' if has_bias else node.output[0]
        graph.node.append(helper.make_node('MatMul', [node.input[0], w_name], [mm_out], name=node.name))
        if has_bias:
            graph.node.append(helper.make_node(
                'Add', [mm_out, node.input[2]], [node.output[0]], name=f'{node.name}__bias'))
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]  # drop the Gemm-layout copies nothing reads now
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _weight_nodes(graph, routing: Dict[str, torch.Tensor]) -> Tuple[list, list]:
    """(names of the MatMul / Gemm / Conv nodes of ``graph`` that multiply by a stored weight, the subset of them
    whose weight is a routing matrix: a gate's weight or a constant of its top-k selection, :func:`routing_weights`).
    Routing is matched by the parameter name the dynamo exporter keeps, or else by value (the TorchScript exporter
    renames and may transpose weights; the selection's constants have no parameter name)."""
    from onnx import numpy_helper

    arrays = [w.float().cpu().numpy() for w in routing.values()]
    init = {i.name: i for i in graph.initializer}
    weighted, routed = [], []
    for node in graph.node:
        if node.op_type not in ('MatMul', 'Gemm', 'Conv'):
            continue
        consts = [inp for inp in node.input[:2] if inp in init]
        if not consts:  # activation x activation (attention scores): left in float32
            continue
        weighted.append(node.name)
        for inp in consts:
            value = numpy_helper.to_array(init[inp])
            if inp in routing or any(
                    value.shape in (a.shape, a.T.shape) and (np.array_equal(value, a) or np.array_equal(value, a.T))
                    for a in arrays):
                routed.append(node.name)
                break
    return weighted, routed


def quantize_onnx(
        src: Union[str, Path],
        dst: Union[str, Path],
        model: Optional[nn.Module] = None,
        per_channel: bool = True,
        reduce_range: bool = True,
) -> Path:
    """onnxruntime's dynamic int8 quantisation of an exported model: every MatMul / Gemm / Conv by a stored weight
    (QInt8 weights), except the routing matmuls of ``model`` (the PyTorch model ``src`` was exported from), which
    stay float32 (without ``model`` they are quantised too); products of two activations (attention) stay float32.
    Written to a temporary name and renamed.

    ``reduce_range`` (default) stores the weights in [-64, 64] (7 bits). onnxruntime multiplies uint8 activations by
    int8 weights with VPMADDUBSW on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), which adds adjacent pairs of
    products in int16 and saturates there: with full-range weights (2 x 255 x 127 > 32767) the sums clip, and the
    result depends on the CPU. With 7-bit weights a pair is at most 2 x 255 x 64 = 32640: the same result on every
    CPU (onnxruntime's own advice for U8S8 on non-VNNI CPUs; PyTorch's x86 kernels reduce the activations' range for
    the same reason). ``per_channel`` (default) gives each output column its own scale, which wins back the lost bit.
    The measured effect of both: docs/benchmarks.md ("int8 weights on CPUs without VNNI")."""
    require('onnx', 'onnxruntime', what='int8 quantisation of an ONNX model')
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f'No ONNX model at {src}: export one first (timm_mlit.export.export_onnx).')
    proto = onnx.load(str(src))
    # the dynamo exporter's stored shapes trip the quantiser's shape inference ("inferred shape and existing shape
    # differ"); onnxruntime infers them again
    del proto.graph.value_info[:]
    _gemm_to_matmul(proto.graph)
    weighted, routed = _weight_nodes(proto.graph, routing_weights(model) if model is not None else {})
    nodes = [n for n in weighted if n not in set(routed)]
    dst.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # silence its per-call advice to pre-process (optional here)
        try:
            ort_quantize_dynamic(
                proto, tmp, weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
                nodes_to_quantize=nodes, op_types_to_quantize=['MatMul', 'Gemm', 'Conv'])
        finally:
            root.setLevel(level)
    return atomic_write(dst, write, overwrite=True, suffix='.onnx')


def onnx_session(path: Union[str, Path], num_threads: Optional[int] = None):
    """An onnxruntime CPU session, with ``num_threads`` intra-op threads (None: onnxruntime's default, all cores)."""
    require('onnxruntime', what='running an ONNX model')
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def onnx_run(session, x: torch.Tensor) -> np.ndarray:
    """The session's first output for the image batch ``x``."""
    return session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0]


def onnx_op_counts(path: Union[str, Path]) -> Counter:
    """How often each ONNX op type occurs in the model's graph (and its sub-graphs' functions)."""
    require('onnx', what='reading an ONNX model')
    import onnx

    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    for f in model.functions:
        ops.update(n.op_type for n in f.node)
    return ops


@torch.no_grad()
def compare_onnx(model: nn.Module, path: Union[str, Path], x: torch.Tensor) -> Dict[str, float]:
    """Run ``x`` through the PyTorch model (eval) and the ONNX file; the largest absolute difference of the outputs
    and the share of rows whose argmax agrees."""
    require('onnxruntime', what='running an ONNX model')
    was_training = model.training
    ref = model.eval()(x).float().numpy()
    model.train(was_training)
    out = onnx_run(onnx_session(path), x)
    return {
        'max_abs_diff': float(np.abs(out - ref).max()),
        'argmax_agree': float((out.argmax(-1) == ref.argmax(-1)).mean()),
    }
