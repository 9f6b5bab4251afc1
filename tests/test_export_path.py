"""The export-only eval path of mLiT's layers (timm_mlit/layers: ``MoEFeedForward._forward_export``,
``GroupedQueryAttention._forward_export``, ``rank_top_k_softmax``) computes what the normal eval forward computes:
the same experts (ties included) and the same outputs, and exported graphs take it."""
import pytest
import torch
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.layers import NoisyTopKGate
from timm_mlit.layers._tracing import is_export
from timm_mlit.layers.mlit_gate import first_max_top_k, one_hot_combine, rank_top_k_softmax


def _logits(t: int):
    g = torch.Generator().manual_seed(t)
    return {
        'normal': torch.randn(400, t, generator=g),
        'all tied (fresh gates)': torch.zeros(20, t),
        'many ties': torch.randint(-2, 3, (400, t), generator=g).float(),
        'signed zeros': torch.randint(0, 2, (100, t), generator=g).float() * -0.,
        'subnormal': torch.randint(-3, 4, (200, t), generator=g).float() * 1e-45,
        'tiny': torch.randn(200, t, generator=g) * 1e-40,
        'large': torch.randn(200, t, generator=g) * 1e30,
    }


@pytest.mark.parametrize('t', [1, 2, 3, 4, 5, 8])
def test_rank_top_k_softmax_picks_what_first_max_top_k_picks(t):
    for k in range(1, t + 1):
        for label, h in _logits(t).items():
            values, idx = first_max_top_k(h, k)
            ref = one_hot_combine(idx, values.softmax(-1), t)
            chosen = torch.zeros(h.shape, dtype=torch.bool).scatter(-1, idx, True)
            got = rank_top_k_softmax(h, k, t)
            assert torch.equal(got[~chosen], torch.zeros_like(got[~chosen])), (t, k, label)  # only the chosen
            if label != 'large':  # (there a chosen gate may underflow to 0)
                assert (got[chosen] > 0).all(), (t, k, label)
            # k = 2: the sigmoid of the two chosen logits' difference, within about 1e-7 of the softmax
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_rank_top_k_softmax_can_fail():
    """A wrong tie rule is caught: ties must go to the lowest index."""
    h = torch.zeros(1, 4)
    assert torch.equal(rank_top_k_softmax(h, 2, 4) > 0, torch.tensor([[True, True, False, False]]))
    assert not torch.equal(rank_top_k_softmax(h.flip(-1) + torch.tensor([0., 0., 0., 1e-7]), 2, 4) > 0,
                           torch.tensor([[True, True, False, False]]))


def _untied(name='mlit_xxs', seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NoisyTopKGate):
                m.w_gate.weight.copy_(torch.randn(m.w_gate.weight.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize('untie', [False, True])
@torch.no_grad()
def test_moe_export_path_equals_forward(untie):
    model = _untied() if untie else timm.create_model('mlit_xxs', num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    for shape in [(2, 145, 108), (7, 108), (2, 3, 5, 108)]:
        x = torch.randn(*shape, generator=g)
        for blk in model.blocks:
            ref = blk.mlp(x)
            got = blk.mlp._forward_export(x)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
            gate = blk.mlp.gate
            got, ref = gate.eval_combine(x.reshape(-1, 108)), gate(x.reshape(-1, 108)).combine
            assert torch.equal(got > 0, ref > 0)  # the same experts
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


@torch.no_grad()
def test_attention_export_path_equals_forward():
    model = timm.create_model('mlit_xs', num_classes=10).eval()  # H = 8, G = 4
    x = torch.randn(2, 145, model.embed_dim, generator=torch.Generator().manual_seed(2))
    for blk in model.blocks[:3]:
        torch.testing.assert_close(blk.attn._forward_export(x), blk.attn(x), rtol=1e-5, atol=1e-6)
    q_model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    attn = q_model.blocks[0].attn  # a quantised qkv: the output columns are reordered instead of the weight rows
    # (float rounding of the attention may move proj's dynamic int8 input by one step here and there)
    torch.testing.assert_close(attn._forward_export(x), attn(x), rtol=0, atol=2e-3)


@torch.no_grad()
def test_traced_model_takes_the_export_path_and_matches_eager():
    model = _untied()
    x = torch.randn(2, 3, 36, 36, generator=torch.Generator().manual_seed(3))
    seen = []
    hook = model.blocks[0].mlp.register_forward_hook(lambda *a: seen.append(is_export()))
    traced = torch.jit.trace(model, x, check_trace=False)
    hook.remove()
    assert seen == [True]
    assert not is_export()
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert 'aten::argmax' not in kinds and 'aten::index_select' not in kinds, kinds  # not the eager eval path
    torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dynamo', [True, False])
def test_quantize_onnx_keeps_the_gate_selection_float32(tmp_path, dynamo):
    """An exporter may store the selection's constant matrices as initializers: quantize_onnx must still leave
    them float32 (int8 would change the chosen experts), so exactly one int8 matmul per Linear outside the routing.
    The dynamo exporter does (the value matching of ``routing_weights`` is what keeps them float32); the TorchScript
    exporter stores them as Constant nodes, which the quantiser leaves alone, so that case checks the count only."""
    if dynamo:
        pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    from timm_mlit.export import export_onnx, onnx_op_counts, quantize_onnx, routing_modules

    model = _untied()
    path = export_onnx(model, tmp_path / 'm.onnx', dynamo=dynamo)
    q_path = quantize_onnx(path, tmp_path / 'm.int8.onnx', model=model)
    routing = tuple(routing_modules(model))
    linears = sum(isinstance(m, torch.nn.Linear) and not any(n == r or n.startswith(r + '.') for r in routing)
                  for n, m in model.named_modules())
    assert onnx_op_counts(q_path)['MatMulInteger'] == linears
