"""timm's model contract (the checks of timm's tests/test_models.py, which the timm wheel does not ship), for every
model this package registers. Inputs use each model's default cfg size, as timm's tests do."""
import math

import pytest
import torch
import timm
from timm.layers import get_channel_dim, get_spatial_dim, set_layer_config
from timm.models import get_notrace_functions, get_notrace_modules

import timm_mlit  # noqa: F401  registers the models

FAMILIES = ('mlit', 'maevit', 'mobile_vmoe')
MODELS = [name for family in FAMILIES for name in timm.list_models(module=family)]


def _input(model, batch_size=1):
    return torch.randn(batch_size, *model.pretrained_cfg['input_size'])


def test_models_are_registered():
    assert MODELS[:4] == ['mlit_s', 'mlit_xs', 'mlit_xxs', 'maevit_c100']
    assert len(MODELS) == 4 + 12 + 3  # Mobile V-MoE: the paper's 12 sizes and 3 on mLiT's 36x36 stem


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model)
    out = model(x)
    assert out.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    model.set_grad_checkpointing()
    assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_backward(model_name):
    model = timm.create_model(model_name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    out = model(_input(model, 2))
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'No gradient for {n}'
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert out.shape[-1] == 42
    assert not torch.isnan(out).any()


@pytest.mark.parametrize('model_name', MODELS)
def test_model_default_cfgs_non_std(model_name):
    model = timm.create_model(model_name).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.pretrained_cfg
    if cfg['input_size'] == (3, 36, 36):  # the papers' CIFAR stem
        assert cfg['crop_pct'] == 1.0 and cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    else:  # Mobile V-MoE's ImageNet sizes: timm's standard ViT cfg
        assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
        assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['num_classes'] == 1000
    assert model.patch_embed.img_size == cfg['input_size'][1:]
    x = _input(model)

    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[-1] == model.num_features
    assert pre.shape[1] == model.head_hidden_size

    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape[-1] == model.head_hidden_size and out.shape == pre.shape

    model = timm.create_model(model_name, num_classes=0).eval()
    assert model(x).shape[-1] == model.num_features

    assert cfg['classifier'] + '.weight' in state_dict
    assert cfg['first_conv'] + '.weight' in state_dict


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_torchscript(model_name):
    with set_layer_config(scriptable=True):
        model = timm.create_model(model_name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    out = scripted(x)
    assert out.shape == (1, model.num_classes)
    assert torch.allclose(out, model(x), atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_features(model_name):
    model = timm.create_model(model_name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = model.pretrained_cfg['input_size'][-1]
    x = torch.randn(1, 3, size, size)
    outputs = model(x)
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c
        assert o.shape[2] <= math.ceil(size / r) + 1 and o.shape[3] <= math.ceil(size / r) + 1
        assert not torch.isnan(o).any()


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_intermediates(model_name):
    model = timm.create_model(model_name).eval()
    feature_info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = feature_info.channels(), feature_info.reduction()
    x = _input(model)
    output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
    assert len(intermediates) == len(channels)
    spatial, feat_axis = get_spatial_dim('NCHW'), get_channel_dim('NCHW')
    for c, r, o in zip(channels, reductions, intermediates):
        assert o.shape[feat_axis] == c
        assert o.shape[spatial[0]] <= math.ceil(x.shape[-1] / r) + 1
    assert torch.allclose(output, model.forward_features(x))
    model.set_grad_checkpointing()
    output2, _ = model.forward_intermediates(x, output_fmt='NCHW')
    assert torch.allclose(output, output2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_prune_intermediate_layers(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model)
    _, full = model.forward_intermediates(x, indices=[1, 3])
    kept = model.prune_intermediate_layers(indices=[1, 3], prune_head=True)
    assert kept == [1, 3] and model.num_blocks() == 4 and model.num_classes == 0
    pruned = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    for a, b in zip(full, pruned):
        assert torch.allclose(a, b)


def _create_fx_model(model, train=False):
    """timm's helper: trace with its no-trace leaves and return the graph's output node(s)."""
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes = [eval_nodes[-1]]
    train_return_nodes = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        output_node_indices = [-graph_node_names.index(node_name) for node_name in output_node_names]
        train_return_nodes = [train_nodes[ix] for ix in output_node_indices]
    return create_feature_extractor(
        model, train_return_nodes=train_return_nodes, eval_return_nodes=eval_return_nodes,
        tracer_kwargs=tracer_kwargs)


@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing')
@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_fx(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model)
    with torch.inference_mode():
        out = model(x)
        fx_out = torch.cat(tuple(_create_fx_model(model)(x).values()))
    assert torch.all(fx_out == out)


@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing')
@pytest.mark.parametrize('model_name', MODELS)
def test_model_backward_fx(model_name):
    model = timm.create_model(model_name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model, train=True)
    out = torch.cat(tuple(fx_model(_input(model, 2)).values()))
    out.mean().backward()
    for n, p in fx_model.named_parameters():
        assert p.grad is not None, f'No gradient for {n}'
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape[-1] == 42


@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing', 'ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_fx_torchscript(model_name):
    with set_layer_config(scriptable=True):
        model = timm.create_model(model_name).eval()
    scripted = torch.jit.script(_create_fx_model(model))
    x = _input(model)
    with torch.inference_mode():
        out = torch.cat(tuple(scripted(x).values()))
        assert torch.allclose(out, model(x), atol=1e-5)
