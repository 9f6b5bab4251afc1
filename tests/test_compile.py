"""torch.compile as a supported path: mLiT and the MAE model compile as one graph in training and eval (no graph
break), the MoE loss is recorded, per-expert dropout's mask is one opaque op (its RNG outside the graph), and so is
the grouped expert matmul (its data-dependent group sizes inside)."""
import pytest
import timm
import torch

import timm_mlit  # noqa: F401
from timm_mlit.layers import SharedSwiGLUExperts, moe_loss
from timm_mlit.mae import create_mae
from timm_mlit.mae.pretrain import parse_args

from helpers import needs_grouped_mm

GROUPED = pytest.param('grouped', marks=needs_grouped_mm)


def _graph_ops(model, *args):
    """Dynamo's graphs for ``model(*args)`` (one per compiled region) and the targets they call."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    out = torch.compile(model, backend=backend, fullgraph=True)(*args)
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == 'call_function'}
    return out, graphs, targets


def _expert_matmul(model, expert_matmul: str):
    for m in model.modules():
        if isinstance(m, SharedSwiGLUExperts):
            m.expert_matmul = expert_matmul
    return model


@pytest.mark.parametrize('expert_matmul', ['auto', GROUPED])
@pytest.mark.parametrize('training', [True, False])
def test_mlit_compiles_as_one_graph_and_keeps_the_moe_loss(training, expert_matmul):
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs', depth=3).train(training)  # one layer per expert stage
    _expert_matmul(model, expert_matmul)  # XXS's layers: 'auto' is dense on a CPU
    x = torch.randn(2, 3, 36, 36)
    torch.manual_seed(1)
    out, graphs, targets = _graph_ops(model, x)
    loss = moe_loss(model)
    assert len(graphs) == 1
    assert any('grouped_expert_mm' in t for t in targets) == (expert_matmul == 'grouped')
    torch.manual_seed(1)
    ref = model(x)
    assert torch.allclose(out, ref, atol=1e-5)
    if training:
        assert any('expert_drop_mask' in t for t in targets)  # the mask: one custom-op call per layer
        assert not any('bernoulli' in t for t in targets)
        assert loss.requires_grad and torch.allclose(loss, moe_loss(model), atol=1e-6)
    else:
        assert float(loss) == 0.


def test_mae_compiles_as_one_graph_in_training():
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs', depth=3).train()
    x = torch.randn(2, 3, 36, 36)
    torch.manual_seed(1)
    out, graphs, _ = _graph_ops(mae, x)
    assert len(graphs) == 1
    torch.manual_seed(1)
    assert torch.allclose(out.loss, mae(x).loss, atol=1e-5)


@pytest.mark.parametrize('expert_matmul', ['dense', GROUPED])
def test_compiled_training_step_backpropagates_through_the_custom_ops(expert_matmul):
    torch.manual_seed(0)
    model = _expert_matmul(timm.create_model('mlit_xxs', depth=3).train(), expert_matmul)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 36, 36)
    torch.manual_seed(1)
    (compiled(x).sum() + moe_loss(model)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    (model(x).sum() + moe_loss(model)).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-4), n


def test_pretrain_command_takes_torchcompile():
    assert parse_args(['--torchcompile']).torchcompile == 'inductor'
    assert parse_args(['--torchcompile', 'aot_eager']).torchcompile == 'aot_eager'
    assert parse_args([]).torchcompile is None
