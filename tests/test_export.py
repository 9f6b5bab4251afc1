"""Deploying: ONNX export into onnxruntime, torch.export, timm's onnx_export path, dynamic image size, and int8 in
PyTorch and onnxruntime, for every registered model (timm_mlit/export.py).

The broad test exports each model once (TorchScript exporter, the default of timm's onnx_export.py; a few seconds
each) and marks itself slow; mlit_xxs goes through every path.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.export import (
    EDGE_UNFRIENDLY_OPS, compare_onnx, export_onnx, onnx_op_counts, onnx_run, onnx_session, quantize_dynamic,
    quantize_onnx, routing_modules,
)
from timm_mlit.layers import NoisyTopKGate

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

FAMILIES = ('mlit', 'maevit', 'mobile_vmoe')
MODELS = [name for family in FAMILIES for name in timm.list_models(module=family)]
ROOT = Path(__file__).resolve().parents[1]


def _images(model, batch_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *model.pretrained_cfg['input_size'], generator=g)


def _untie_gates(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give mLiT's zero-initialised gates trained-like weights, so that tokens choose different experts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in routing_modules(model).values():
            if isinstance(m, NoisyTopKGate):
                m.w_gate.weight.copy_(torch.randn(m.w_gate.weight.shape, generator=g) * 0.5)
    return model


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _quantisable_linears(model: nn.Module) -> int:
    routing = tuple(routing_modules(model))
    return sum(isinstance(m, nn.Linear) and not any(n == r or n.startswith(r + '.') for r in routing)
               for n, m in model.named_modules())


def _int8_weights(path) -> dict:
    """The stored int8 weight (input B) of every MatMulInteger of the ONNX file, by initializer name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {i.name: i for i in graph.initializer}
    return {n.input[1]: numpy_helper.to_array(init[n.input[1]])
            for n in graph.node if n.op_type == 'MatMulInteger' and n.input[1] in init}


@torch.no_grad()
def _layer_errors(model: nn.Module, q_model: nn.Module, x: torch.Tensor) -> dict:
    """Each quantised Linear of ``q_model`` against its float32 original in ``model`` on the same input (what reaches
    it in the int8 forward): ||int8(a) - fp32(a)|| / ||fp32(a)||, by module name. Dynamic int8 gives about 0.02
    (7-bit activations per tensor, 8-bit weights per channel), up to 0.07 where the input is a product with outliers
    (mLiT's w2 after the gated SwiGLU); a wrong weight layout, scale or zero point gives about 1."""
    quantised = {n: m for n, m in q_model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
             for n, m in quantised.items()]
    try:
        q_model(x)
    finally:
        for h in hooks:
            h.remove()
    fp32 = dict(model.named_modules())
    errors = {}
    for name, (a, out) in seen.items():
        ref = fp32[name](a)
        errors[name] = float((out - ref).norm() / ref.norm())
    return errors


def _check_parity(model, path, x):
    result = compare_onnx(model, path, x)
    assert result['max_abs_diff'] <= 1e-4, result
    assert result['argmax_agree'] == 1.0, result


@pytest.mark.slow
@pytest.mark.parametrize('model_name', MODELS)
def test_export_and_int8_every_model(model_name, tmp_path):
    """Fresh model -> ONNX (dynamic batch) -> onnxruntime equal to PyTorch; the same with untied gates for mLiT;
    int8 in onnxruntime and in PyTorch build, run and stay close to fp32, routing left in fp32: onnxruntime's weights in
    7 bits (no int16 saturation on CPUs without VNNI), each PyTorch int8 layer within 0.15 of its fp32 original."""
    torch.manual_seed(0)
    # Mobile V-MoE: the static gather experts (its auto choice under any graph capture)
    kwargs = dict(expert_dispatch='gather') if model_name.startswith('mobile_vmoe') else {}
    model = timm.create_model(model_name, num_classes=10, **kwargs).eval()
    variants = [('fresh', model)]
    if any(isinstance(m, NoisyTopKGate) for m in model.modules()):
        variants.append(('untied', _untie_gates(timm.create_model(model_name, num_classes=10).eval())))
    for label, m in variants:
        path = export_onnx(m, tmp_path / f'{label}.onnx', batch_size=2, dynamo=False)
        _check_parity(m, path, _images(m, 3))  # batch 3: not the traced batch
        assert not set(EDGE_UNFRIENDLY_OPS) & set(onnx_op_counts(path)), model_name

    model = variants[-1][1]
    x = _images(model, 4, seed=1)
    with torch.no_grad():
        ref = model(x).numpy()

    q_path = quantize_onnx(path, tmp_path / 'int8.onnx', model=model)
    ops = onnx_op_counts(q_path)
    assert ops['MatMulInteger'] == _quantisable_linears(model), ops
    # 7-bit weights: onnxruntime's uint8 x int8 kernel on x86 without VNNI sums pairs of products in int16, and
    # 2 x 255 x |w| must stay <= 32767 or it saturates (full-range weights gave cosines 0.83-0.93 on such a CPU)
    weights = _int8_weights(q_path)
    assert len(weights) == ops['MatMulInteger'] and max(int(np.abs(w).max()) for w in weights.values()) <= 64
    out = onnx_run(onnx_session(q_path), x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert _cosine(out, ref) > 0.95  # random init: small logits, routing flips; a wrong weight layout gives ~0

    q_model = quantize_dynamic(model)
    for name, m in q_model.named_modules():
        if isinstance(m, tuple(type(r) for r in routing_modules(model).values())):
            assert all(type(lin) is nn.Linear for lin in m.modules() if isinstance(lin, nn.Linear)), name
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q_model.modules()) == \
        _quantisable_linears(model)
    errors = _layer_errors(model, q_model, x)
    assert len(errors) == _quantisable_linears(model)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.15, (worst, errors[worst])  # each layer on its own: no accumulation, no routing flips
    with torch.no_grad():
        out = q_model(x).numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert _cosine(out, ref) > 0.95  # random init: small logits, routing flips; a wrong weight layout gives ~0


@pytest.mark.parametrize('model_name', ['mlit_xxs', 'maevit_c100', 'mobile_vmoe_6x64_patch3_36'])
def test_plain_torch_quantize_dynamic(model_name):
    """What a PyTorch user types first: every nn.Linear (routing too) quantised, and the model still runs."""
    model = timm.create_model(model_name, num_classes=10).eval()
    q_model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        out = q_model(_images(model, 2))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_mobile_vmoe_default_dispatch_torchscript_onnx_export(tmp_path):
    """timm's onnx_export.py default (TorchScript exporter) on a Mobile V-MoE as created by default: under
    torch.jit tracing the 'auto' dispatch takes the static gather path (no argsort/bincount/host sync)."""
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=10).eval()
    _check_parity(model, export_onnx(model, tmp_path / 'm.onnx', dynamo=False), _images(model, 3))


@pytest.mark.parametrize('dynamo', [False, True])
def test_mlit_xxs_onnx_parity_and_edge_ops(dynamo, tmp_path):
    """Both exporters, fresh (tied) and untied gates: parity at another batch size, and an eval graph without the
    ops edge converters reject (TopK, scatter, einsum)."""
    for label, untie in (('fresh', False), ('untied', True)):
        torch.manual_seed(0)
        model = timm.create_model('mlit_xxs', num_classes=10).eval()
        if untie:
            _untie_gates(model)
        path = export_onnx(model, tmp_path / f'{label}.onnx', dynamo=dynamo)
        _check_parity(model, path, _images(model, 5))
        ops = onnx_op_counts(path)
        assert not set(EDGE_UNFRIENDLY_OPS) & set(ops), ops


def test_mlit_xxs_torch_export_dynamic_batch():
    model = _untie_gates(timm.create_model('mlit_xxs', num_classes=10).eval())
    batch = torch.export.Dim('batch', min=1, max=1024)
    program = torch.export.export(model, (_images(model, 2),), dynamic_shapes=({0: batch},))
    x = _images(model, 5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def _train_py_checkpoint(model, path: Path) -> Path:
    """What timm's train.py saves: a dict with 'state_dict' (and more), as .pth.tar."""
    torch.save({'epoch': 1, 'arch': 'mlit_xxs', 'state_dict': model.state_dict()}, path)
    return path


def test_timm_onnx_export_script_path_in_process(tmp_path):
    """What timm's onnx_export.py does with --checkpoint (create_model(..., checkpoint_path=, exportable=True), then
    timm.utils.onnx.onnx_export with --check-forward), on an mLiT with trained-like gates."""
    from timm.utils.onnx import onnx_export

    trained = _untie_gates(timm.create_model('mlit_xxs', num_classes=10))
    ckpt = _train_py_checkpoint(trained, tmp_path / 'last.pth.tar')
    model = timm.create_model(
        'mlit_xxs', num_classes=10, in_chans=3, pretrained=False, checkpoint_path=str(ckpt), exportable=True)
    onnx_export(model, str(tmp_path / 'm.onnx'), batch_size=1, check_forward=True)
    _check_parity(trained.eval(), tmp_path / 'm.onnx', _images(model, 3))


def _timm_scripts() -> Path:
    return Path(os.environ.get('TIMM_SCRIPTS', ROOT / 'timm-scripts'))


@pytest.mark.slow
@pytest.mark.skipif(not (_timm_scripts() / 'onnx_export.py').is_file(),
                    reason="timm's onnx_export.py not found (set TIMM_SCRIPTS to pytorch-image-models' folder)")
def test_timm_onnx_export_script_through_run(tmp_path):
    """docs/deploying.md's command: python -m timm_mlit.run onnx_export.py --model mlit_xxs --checkpoint ... --dynamo."""
    trained = _untie_gates(timm.create_model('mlit_xxs', num_classes=10))
    ckpt = _train_py_checkpoint(trained, tmp_path / 'last.pth.tar')
    out = tmp_path / 'mlit_xxs.onnx'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    subprocess.run(
        [sys.executable, '-m', 'timm_mlit.run', str(_timm_scripts() / 'onnx_export.py'), str(out), '--model',
         'mlit_xxs', '--num-classes', '10', '--checkpoint', str(ckpt), '--check-forward'],
        check=True, env=env, cwd=tmp_path, capture_output=True)
    _check_parity(trained.eval(), out, _images(trained, 2))


def test_dynamic_img_size(tmp_path):
    """dynamic_img_size=True: identical at the trained size; at another size equal to a model built for that size
    whose position table was resampled from the same checkpoint (the dummy patch's entry kept); clear errors."""
    torch.manual_seed(0)
    fixed = _untie_gates(timm.create_model('mlit_xxs', num_classes=10)).eval()
    dynamic = timm.create_model('mlit_xxs', num_classes=10, dynamic_img_size=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = _images(fixed, 2)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)
        big = timm.create_model('mlit_xxs', num_classes=10, img_size=48, pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(_save(fixed, tmp_path)), num_classes=10)).eval()
        torch.testing.assert_close(big.pos_embed[:, 0], fixed.pos_embed[:, 0])
        x48 = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(dynamic(x48), big(x48), rtol=1e-5, atol=1e-5)
        assert dynamic(torch.randn(1, 3, 30, 42)).shape == (1, 10)
        feats = dynamic.forward_intermediates(torch.randn(1, 3, 30, 42), indices=1, intermediates_only=True)
        assert feats[0].shape == (1, 108, 10, 14)
    with pytest.raises(ValueError, match=r'multiples of the 3x3 patch.*\(1, 3, 37, 36\).*dynamic_img_pad=True'):
        dynamic(torch.randn(1, 3, 37, 36))
    with pytest.raises(ValueError, match=r'3-channel.*\(1, 1, 36, 36\)'):
        dynamic(torch.randn(1, 1, 36, 36))
    padded = timm.create_model('mlit_xxs', num_classes=10, dynamic_img_size=True, dynamic_img_pad=True).eval()
    assert padded(torch.randn(1, 3, 37, 35)).shape == (1, 10)


def _save(model, folder: Path) -> Path:
    from safetensors.torch import save_file
    path = folder / 'model.safetensors'
    save_file(model.state_dict(), str(path))
    return path


@pytest.mark.slow
@pytest.mark.skipif(torch.__version__.startswith('2.5.'), reason="torch 2.5's dynamo ONNX exporter writes a Reshape "
                    'that onnxruntime rejects for a dynamic image size (seen on 2.5.1)')
def test_dynamic_img_size_onnx(tmp_path):
    """ONNX with dynamic batch, height and width (dynamo exporter): equal to PyTorch at three sizes; the TorchScript
    exporter and a fixed-size model are refused with the fix named."""
    model = _untie_gates(timm.create_model('mlit_xxs', num_classes=10, dynamic_img_size=True)).eval()
    path = export_onnx(model, tmp_path / 'dyn.onnx', dynamo=True, dynamic_size=True)
    for side in (36, 48, 30):
        _check_parity(model, path, torch.randn(3, 3, side, side))
    with pytest.raises(ValueError, match='dynamo=True'):
        export_onnx(model, tmp_path / 'x.onnx', dynamo=False, dynamic_size=True)
    with pytest.raises(ValueError, match='dynamic_img_size=True'):
        export_onnx(timm.create_model('mlit_xxs'), tmp_path / 'y.onnx', dynamic_size=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dyn.onnx']  # nothing half-written left


def test_quantize_onnx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='export one first'):
        quantize_onnx(tmp_path / 'none.onnx', tmp_path / 'int8.onnx')
