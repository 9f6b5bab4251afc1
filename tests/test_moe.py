"""The MoE feed-forward as a unit: its loss leaves the layer for the training loop; static shapes, float32 gate."""
import copy
import pickle
from functools import partial

import pytest
import torch
import torch.nn as nn
from timm.layers import get_notrace_modules

from timm_mlit.layers import MoEFeedForward, NoisyTopKGate, SharedSwiGLUExperts, aux_losses, expert_load, moe_loss


def _layer(drop_mode='expert', device=None):
    torch.manual_seed(0)
    return MoEFeedForward(
        32, 24, 4, gate_layer=partial(NoisyTopKGate, top_k=2),
        experts_layer=partial(SharedSwiGLUExperts, expert_drop_mode=drop_mode), device=device)


def test_training_forward_leaves_the_loss_and_eval_clears_it():
    moe = _layer().train()
    x = torch.randn(2, 10, 32)
    assert moe_loss(moe).item() == 0.0  # no forward yet
    y = moe(x)
    assert y.shape == x.shape
    loss = moe_loss(moe)
    assert loss.requires_grad and loss.item() > 0
    assert torch.equal(loss, moe.aux_record.loss)
    moe.eval()
    moe(x)
    assert moe_loss(moe).item() == 0.0


def test_loss_sums_over_layers_and_follows_wrappers():
    net = nn.Sequential(_layer(), _layer()).train()
    net(torch.randn(4, 7, 32))
    expected = net[0].aux_record.loss + net[1].aux_record.loss
    assert torch.allclose(moe_loss(net), expected)
    holder = nn.Module()
    holder.module = net  # a DDP-style wrapper
    assert torch.allclose(moe_loss(holder), expected)


def test_expert_load_reports_shares_of_routed_slots():
    moe = _layer().train()
    moe(torch.randn(3, 50, 32))
    load = expert_load(moe)
    assert list(load) == ['']
    share = load['']
    assert share.shape == (4,)
    assert torch.allclose(share.sum(), torch.tensor(1.0))
    counts = moe.aux_record.counts
    assert counts.sum().item() == 150 * 2  # every token picks k = 2 experts


def test_deepcopy_and_pickle_after_a_training_forward():
    moe = _layer().train()
    moe(torch.randn(2, 5, 32))
    twin = copy.deepcopy(moe)  # what ModelEmaV3 does
    assert twin.aux_record.loss is None
    again = pickle.loads(pickle.dumps(moe))
    assert again.aux_record.loss is None
    assert torch.equal(again.experts.w.weight, moe.experts.w.weight)


def test_compiles_as_one_graph_in_training():
    """fullgraph=True fails on a graph break: no data-dependent shapes, no .item(), no host sync."""
    moe = _layer().train()
    compiled = torch.compile(moe, backend='eager', fullgraph=True)
    x = torch.randn(2, 9, 32)
    torch.manual_seed(3)
    y = compiled(x)
    loss_compiled = moe_loss(moe)
    torch.manual_seed(3)
    y_eager = moe(x)
    assert torch.allclose(y, y_eager, atol=1e-6)
    assert torch.allclose(loss_compiled, moe_loss(moe))


def test_fx_traces_the_layer():
    class LeafTracer(torch.fx.Tracer):  # timm's FX convention: registered no-trace modules stay whole
        def is_leaf_module(self, m, name):
            return isinstance(m, tuple(get_notrace_modules())) or super().is_leaf_module(m, name)

    moe = _layer().eval()
    gm = torch.fx.GraphModule(moe, LeafTracer().trace(moe))
    x = torch.randn(2, 6, 32)
    assert torch.equal(gm(x), moe(x))


def test_bfloat16_autocast_keeps_gate_in_float32():
    moe = _layer().train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = moe(torch.randn(2, 8, 32))
    assert y.dtype == torch.bfloat16
    assert moe.aux_record.loss.dtype == torch.float32


@pytest.mark.parametrize('mode', ['expert', 'combined'])
def test_gradients_reach_every_parameter(mode):
    moe = _layer(drop_mode=mode).train()
    y = moe(torch.randn(2, 16, 32))
    (y.square().mean() + moe_loss(moe)).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning', 'ignore::FutureWarning')
def test_eval_onnx_graph_has_edge_friendly_ops_and_routes_as_pytorch(tmp_path):
    """No TopK, scatter or Einsum in the eval graph; a fresh layer's tied zero gates pick the same experts in
    onnxruntime as in PyTorch (the lowest indices), so both give the same output."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    moe = _layer().eval()  # zero-initialised gate: all logits tie
    x = torch.randn(2, 10, 32)
    path = tmp_path / 'tied.onnx'  # a file: torch 2.5's dynamo exporter takes no BytesIO
    torch.onnx.export(moe, (x,), str(path), dynamo=True, verbose=False)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {'TopK', 'ScatterElements', 'ScatterND', 'Scatter', 'Einsum'}, ops
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), moe(x), atol=1e-5)
    with torch.no_grad():
        moe.gate.w_gate.weight.normal_()
    path = tmp_path / 'random.onnx'
    torch.onnx.export(moe, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), moe(x), atol=1e-5)


def test_meta_forward_records_no_loss_values_but_runs():
    moe = _layer(device='meta').train()
    y = moe(torch.empty(2, 5, 32, device='meta'))
    assert y.is_meta and y.shape == (2, 5, 32)


def test_one_record_type_and_one_reader_for_both_auxiliary_losses():
    """The MoE layer and Mobile V-MoE's router keep the same record; aux_losses reads both by name."""
    from timm_mlit.layers import AuxRecord, PerImageRouter, aux_modules
    moe = _layer().train()
    router = PerImageRouter(32, 4, superclass_of=torch.tensor([0, 1, 2, 3, 0, 1])).train()
    net = nn.Module()
    net.moe, net.router = moe, router
    assert aux_losses(net) == {}  # no forward yet
    x = torch.randn(3, 5, 32)
    moe(x)
    router(x)
    assert aux_modules(net) == [moe, router]
    assert isinstance(moe.aux_record, AuxRecord) and isinstance(router.aux_record, AuxRecord)
    target = torch.tensor([0, 4, 5])
    losses = aux_losses(net, target)
    assert list(losses) == ['moe_loss', 'router_loss']
    assert torch.equal(losses['moe_loss'], moe.aux_record.loss)  # computed by the gate, mLiT Eq. 12
    assert torch.equal(losses['router_loss'], router.aux_loss(target))
    assert 'router_loss' not in aux_losses(net)  # the guided router's loss needs the targets
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):  # EMA copy, torch.save(model)
        assert aux_losses(twin, target) == {}
        assert twin.moe.aux_record.counts is None and twin.router.aux_record.logits is None


def test_factories_set_the_options_once():
    moe = MoEFeedForward(
        16, 8, 3, gate_layer=partial(NoisyTopKGate, top_k=1, gate_noise_eps=0.5, moe_cv_squared=True),
        experts_layer=partial(SharedSwiGLUExperts, expert_drop_rate=0.2, expert_drop_mode='combined'))
    assert (moe.gate.top_k, moe.gate.gate_noise_eps, moe.gate.moe_cv_squared) == (1, 0.5, True)
    assert (moe.experts.drop.p, moe.experts.expert_drop_mode, moe.experts.hidden_dim) == (0.2, 'combined', 8)
