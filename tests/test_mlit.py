"""mLiT as the paper specifies it (Table 1, Eq. 15, Figure 4, Sec. 2-3), and what its users rely on beyond timm's tests."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
import timm
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2

import timm_mlit
from timm_mlit.layers import MoEFeedForward
from timm_mlit.models.mlit import checkpoint_filter_fn, experts_per_layer, hidden_sizes

from helpers import needs_grouped_mm

# name: (params without head: Table 1, with a 100-class head: Table 8)
PAPER_PARAMS = {'mlit_s': (2.36e6, 2.38e6), 'mlit_xs': (1.21e6, 1.22e6), 'mlit_xxs': (0.66e6, 0.67e6)}
# exact counts of this implementation (docs/models.md quotes them; test_docs.py checks it does)
OUR_PARAMS = {'mlit_s': (2_358_182, 2_372_682), 'mlit_xs': (1_202_348, 1_215_248), 'mlit_xxs': (651_373, 662_273)}
TABLE1 = {  # embed, layers, d_h first, d_h last, heads, groups
    'mlit_s': (144, 15, 144, 72, 8, 4), 'mlit_xs': (128, 12, 96, 32, 8, 4), 'mlit_xxs': (108, 9, 81, 27, 6, 3)}


def _x(batch=2):
    return torch.randn(batch, 3, 36, 36)


@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_parameter_counts_match_tables_1_and_8(name):
    headless = timm.create_model(name, num_classes=0)
    with_head = timm.create_model(name)  # default cfg: 100 classes, as Table 8
    n0 = sum(p.numel() for p in headless.parameters())
    n100 = sum(p.numel() for p in with_head.parameters())
    assert (n0, n100) == OUR_PARAMS[name]
    t1, t8 = PAPER_PARAMS[name]
    assert abs(n0 - t1) / t1 < 0.015
    assert abs(n100 - t8) / t8 < 0.015


@pytest.mark.parametrize('name', list(TABLE1))
def test_table1_configuration(name):
    m, depth, first, last, heads, groups = TABLE1[name]
    model = timm.create_model(name)
    assert model.embed_dim == m and len(model.blocks) == depth
    assert model.hidden_dims[0] == first and model.hidden_dims[-1] == last
    stage = depth // 3
    assert model.num_experts == [3] * stage + [4] * stage + [5] * stage
    for blk, d_h, t in zip(model.blocks, model.hidden_dims, model.num_experts):
        assert blk.attn.num_heads == heads and blk.attn.num_kv_heads == groups and blk.attn.head_dim == m // heads
        assert blk.mlp.experts.hidden_dim == d_h and blk.mlp.gate.num_experts == t and blk.mlp.gate.top_k == 2
        assert blk.mlp.experts.drop.p == 0.1


def test_eq15_hidden_sizes_and_figure4_experts():
    assert hidden_sizes(9, 81, 27) == [81, 74, 67, 60, 54, 47, 40, 33, 27]
    assert experts_per_layer(9, (3, 4, 5)) == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert hidden_sizes(15, 144, 72)[:3] == [144, 138, 133]


def test_biases_where_the_paper_puts_them():
    model = timm.create_model('mlit_xxs')
    assert model.patch_embed.proj.bias is None
    for name, mod in model.blocks.named_modules():
        if isinstance(mod, nn.Linear) and '.gate.' not in f'.{name}.':
            assert mod.bias is not None, name
    gate = model.blocks[0].mlp.gate
    assert gate.w_gate.bias is None and gate.w_noise.bias is None
    assert not gate.w_gate.weight.any() and not gate.w_noise.weight.any()


def test_patch_projection_is_a_bias_free_linear_map_of_flattened_3x3_patches():
    model = timm.create_model('mlit_xxs').eval()
    x = _x(1)
    patches = x.unfold(2, 3, 3).unfold(3, 3, 3)  # (1, 3, 12, 12, 3, 3)
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 144, 27)
    w = model.patch_embed.proj.weight.reshape(108, 27)
    assert torch.allclose(model.patch_embed(x), flat @ w.T, atol=1e-5)


def test_dummy_patch_embeds_to_its_position_and_feeds_the_classifier():
    model = timm.create_model('mlit_xxs').eval()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault('x', args[0]))
    x = _x()
    feats = model.forward_features(x)
    assert seen['x'].shape == (2, 145, 108)
    assert torch.equal(seen['x'][:, 0], model.pos_embed[0, 0].expand(2, -1))  # zero patch, no bias: 0 + pos
    assert torch.equal(model.forward_head(feats, pre_logits=True), feats[:, 0])
    assert torch.allclose(model(x), model.head(feats[:, 0]))


@pytest.mark.parametrize('shape,needle', [
    ((2, 3, 32, 32), 'got shape (2, 3, 32, 32)'),
    ((2, 1, 36, 36), 'got shape (2, 1, 36, 36)'),
    ((3, 36, 36), 'got shape (3, 36, 36)'),
])
def test_wrong_input_gets_an_error_naming_what_the_model_expects(shape, needle):
    model = timm.create_model('mlit_xxs').eval()
    with pytest.raises(ValueError) as err:
        model(torch.randn(*shape))
    msg = str(err.value)
    assert 'mlit_xxs expects' in msg and '(B, 3, 36, 36)' in msg and needle in msg
    with pytest.raises(ValueError, match='expects'):
        model.forward_intermediates(torch.randn(*shape))


def test_other_input_sizes_and_channels_by_construction():
    model = timm.create_model('mlit_xxs', img_size=48, in_chans=1).eval()
    assert model.pos_embed.shape == (1, 16 * 16 + 1, 108)
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 100)


def test_moe_loss_on_the_model():
    model = timm.create_model('mlit_xxs').train()
    model(_x())
    loss = model.moe_loss()
    per_layer = [blk.mlp.aux_record.loss for blk in model.blocks]
    assert loss.requires_grad and torch.allclose(loss, torch.stack(per_layer).sum())
    assert torch.equal(timm_mlit.moe_loss(model), loss)
    assert len(model.expert_load()) == len(model.blocks)
    model.eval()
    model(_x())
    assert model.moe_loss().item() == 0.0


def test_every_parameter_gets_a_gradient_from_one_backward():
    model = timm.create_model('mlit_xs').train()
    out = model(_x(4))
    (nn.functional.cross_entropy(out, torch.arange(4)) + model.moe_loss()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the MoE loss alone reaches both gate weights of every layer
    model.zero_grad()
    model(_x(4))
    model.moe_loss().backward()
    for blk in model.blocks:
        assert blk.mlp.gate.w_gate.weight.grad.abs().sum() > 0
        assert blk.mlp.gate.w_noise.weight.grad.abs().sum() > 0


def test_expert_dropout_is_not_train_py_drop_rate():
    model = timm.create_model('mlit_xxs', drop_rate=0.0)  # what train.py passes by default
    assert all(blk.mlp.experts.drop.p == 0.1 for blk in model.blocks)
    assert model.head_drop.p == 0.0
    model = timm.create_model('mlit_xxs', expert_drop_rate=0.0, expert_drop_mode='combined', drop_rate=0.2)
    assert all(blk.mlp.experts.drop.p == 0.0 and blk.mlp.experts.expert_drop_mode == 'combined' for blk in model.blocks)
    assert model.head_drop.p == 0.2


def test_moe_loss_options_reach_every_gate():
    model = timm.create_model('mlit_xxs', moe_cv_squared=True, moe_load_weight=0.5, top_k=1)
    for blk in model.blocks:
        g = blk.mlp.gate
        assert g.moe_cv_squared and g.moe_load_weight == 0.5 and g.moe_importance_weight == 1e-2 and g.top_k == 1


def test_grad_checkpointing_in_training_gives_the_same_step():
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs').train()
    x = _x()

    def step():
        model.zero_grad()
        torch.manual_seed(5)
        out = model(x)
        (out.square().mean() + model.moe_loss()).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_a, grads_a = step()
    model.set_grad_checkpointing()
    out_b, grads_b = step()
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-6), n


def test_deepcopy_and_save_after_a_training_forward():
    model = timm.create_model('mlit_xxs').train()
    model(_x())
    ema = copy.deepcopy(model)  # timm's ModelEmaV3 deep-copies the live model
    assert ema.moe_loss().item() == 0.0
    again = pickle.loads(pickle.dumps(model))  # what torch.save(model) does: the record pickles empty
    assert torch.equal(again.pos_embed, model.pos_embed)


def test_meta_device_then_materialize():
    model = timm.create_model('mlit_xxs', device='meta')
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device='cpu')
    model.init_weights()
    assert not model.blocks[0].mlp.gate.w_gate.weight.any()
    out = model.eval()(_x())
    assert torch.isfinite(out).all()


def test_device_and_dtype_arguments():
    model = timm.create_model('mlit_xxs', device='cpu', dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out = model(_x().bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    model.reset_classifier(10)
    assert model.head.weight.dtype == torch.bfloat16


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model('mlit_xxs', not_an_argument=1)


def test_torch_compile_matches_eager_and_keeps_the_moe_loss():
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs')
    compiled = torch.compile(model, backend='aot_eager')
    x = _x()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    model.train()
    torch.manual_seed(1)
    out = compiled(x)
    loss = model.moe_loss()
    torch.manual_seed(1)
    ref = model(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert loss.requires_grad and torch.allclose(loss, model.moe_loss(), atol=1e-6)
    (out.sum() + loss).backward()


def test_torch_export_matches_eager():
    model = timm.create_model('mlit_xxs').eval()
    x = _x()
    program = torch.export.export(model, (x,))
    assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_layer_decay_gives_maes_scales():
    model = timm.create_model('mlit_xxs')
    depth, decay = len(model.blocks), 0.9
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=decay)
    scale_of = {}
    for group in opt.param_groups:
        for p in group['params']:
            scale_of[p] = group['lr_scale']
    named = dict(model.named_parameters())
    assert scale_of[named['pos_embed']] == pytest.approx(decay ** (depth + 1))
    assert scale_of[named['patch_embed.proj.weight']] == pytest.approx(decay ** (depth + 1))
    for j in range(depth):
        assert scale_of[named[f'blocks.{j}.mlp.gate.w_gate.weight']] == pytest.approx(decay ** (depth - j))
    assert scale_of[named['norm.weight']] == pytest.approx(1.0)
    assert scale_of[named['head.weight']] == pytest.approx(1.0)
    no_wd = [g for g in opt.param_groups if g['weight_decay'] == 0.0]
    assert any(named['pos_embed'] is p for g in no_wd for p in g['params'])


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_checkpoint_load_resamples_positions_and_unwraps_containers(tmp_path):
    src = timm.create_model('mlit_xxs')
    path = _save(src, tmp_path / 'mlit_xxs.safetensors')
    same = timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert torch.equal(same.blocks[3].mlp.experts.w.weight, src.blocks[3].mlp.experts.w.weight)
    bigger = timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=path), img_size=48)
    assert bigger.pos_embed.shape == (1, 257, 108)
    assert torch.equal(bigger.pos_embed[:, 0], src.pos_embed[:, 0])  # the dummy patch's position is kept
    wrapped = {'model': {f'module.{k}': v for k, v in src.state_dict().items()}}
    assert torch.equal(checkpoint_filter_fn(wrapped, src)['pos_embed'], src.pos_embed)


def test_checkpoint_of_another_model_is_refused_clearly(tmp_path):
    path = _save(timm.create_model('mlit_s'), tmp_path / 'mlit_s.safetensors')
    with pytest.raises(timm_mlit.models.PretrainedWeightsError,
                       match=r'mlit_s.safetensors does not hold .*embed_dim=144 and 15 blocks.*embed_dim=108 and 9'):
        timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=0)
    with pytest.raises(ValueError, match='not an mLiT encoder'):
        checkpoint_filter_fn(vit.state_dict(), timm.create_model('mlit_xxs'))


def test_pretrained_weights_not_published_yet_say_so_without_a_download():
    with pytest.raises(timm_mlit.models.PretrainedWeightsError) as err:
        timm.create_model('mlit_xxs', pretrained=True)
    msg = str(err.value)
    assert 'No weights are published yet for mlit_xxs.mae_c100_ft_c100_300e' in msg
    assert 'timm-mlit/mlit_xxs.mae_c100_ft_c100_300e' in msg and 'mlit-config table4_finetune_cifar100' in msg
    assert 'mlit-push' in msg and 'push_to_hub.py' in msg  # the installed command, then the clone's script


def test_moe_layers_are_the_models_feed_forwards():
    model = timm.create_model('mlit_xxs')
    assert [type(b.mlp) for b in model.blocks] == [MoEFeedForward] * 9


def test_headless_encoder_loads_for_fine_tuning_like_train_py(tmp_path):
    """train.py --pretrained --pretrained-path FILE: pretrained_cfg_overlay(file=FILE, num_classes=-1)."""
    encoder = timm.create_model('mlit_xxs', num_classes=0)
    path = _save(encoder, tmp_path / 'encoder.safetensors')
    model = timm.create_model(
        'mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=-1), num_classes=100)
    assert model.head.out_features == 100
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_headless_encoder_loads_with_a_new_head_through_the_default_cfg(tmp_path):
    """create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=100): the cfg's
    100 classes match, so timm loads strictly; only the head may be absent from the file."""
    encoder = timm.create_model('mlit_xxs', num_classes=0)
    path = _save(encoder, tmp_path / 'encoder.safetensors')
    model = timm.create_model('mlit_xxs', pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=100)
    assert torch.equal(model.pos_embed, encoder.pos_embed) and model.head.out_features == 100


def test_blocks_take_timm_style_factories_built_once():
    """The model builds one MoE feed-forward factory (its MoE options) and one attention factory; every block gets
    them as mlp_layer / attn_layer, with only its own d_h and expert count."""
    from functools import partial
    from timm_mlit.layers import GroupedQueryAttention, MoEBlock, NoisyTopKGate
    model = timm.create_model('mlit_xxs', top_k=1, gate_noise_eps=0.05, expert_drop_mode='combined')
    assert isinstance(model.mlp_layer, partial) and model.mlp_layer.func is MoEFeedForward
    for blk, d_h, t in zip(model.blocks, model.hidden_dims, model.num_experts):
        assert blk.mlp.experts.hidden_dim == d_h and blk.mlp.gate.num_experts == t
        assert blk.mlp.gate.gate_noise_eps == 0.05 and blk.mlp.experts.expert_drop_mode == 'combined'
        assert blk.attn.num_kv_heads == 3
    blk = MoEBlock(
        16, 4, 8, 3, attn_layer=partial(GroupedQueryAttention, num_kv_heads=2),
        mlp_layer=partial(MoEFeedForward, gate_layer=partial(NoisyTopKGate, top_k=1)))
    assert blk.attn.num_kv_heads == 2 and blk.mlp.gate.top_k == 1 and blk.mlp.experts.num_experts == 3
    assert blk(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def _count_grouped_calls(monkeypatch):
    """Count the expert layers' grouped-GEMM forwards (``SharedSwiGLUExperts._grouped_h``)."""
    from timm_mlit.layers import SharedSwiGLUExperts
    calls = []
    grouped_h = SharedSwiGLUExperts._grouped_h

    def counting(self, x, top_idx):
        calls.append(self.expert_matmul)
        return grouped_h(self, x, top_idx)
    monkeypatch.setattr(SharedSwiGLUExperts, '_grouped_h', counting)
    return calls


def _matmul_runs(model_name, matmuls, calls, x):
    """Per expert_matmul: (state dict, eval output, train output, MoE loss, grouped-GEMM calls) at fixed seeds."""
    runs = {}
    for matmul in matmuls:
        torch.manual_seed(0)
        model = timm.create_model(model_name, expert_matmul=matmul)
        assert [blk.mlp.experts.expert_matmul for blk in model.blocks] == [matmul] * len(model.blocks)
        calls.clear()
        with torch.no_grad():
            eval_out = model.eval()(x)
        torch.manual_seed(1)
        train_out = model.train()(x)
        runs[matmul] = (model.state_dict(), eval_out, train_out.detach(), model.moe_loss().detach(), len(calls))
    return runs


def test_expert_matmul_is_a_create_model_argument(monkeypatch):
    """create_model(..., expert_matmul='dense') reaches every expert layer, takes the dense matmul only and gives
    'auto''s state dict, outputs and MoE loss at a fixed seed (on every torch: no mLiT-XXS layer pays for the
    grouped GEMM, so 'auto' is dense too)."""
    calls = _count_grouped_calls(monkeypatch)
    runs = _matmul_runs('mlit_xxs', ('auto', 'dense'), calls, _x())
    (auto_sd, *auto_out, auto_calls), (dense_sd, *dense_out, dense_calls) = runs['auto'], runs['dense']
    assert dense_calls == 0 and auto_calls == 0
    assert auto_sd.keys() == dense_sd.keys() and all(torch.equal(auto_sd[k], dense_sd[k]) for k in auto_sd)
    for a, d in zip(auto_out, dense_out):
        assert torch.equal(a, d)


@needs_grouped_mm
def test_expert_matmul_grouped_through_create_model(monkeypatch):
    """'grouped' takes the grouped GEMM in every layer with 'auto''s results up to rounding; on mlit_s, where 'auto'
    takes it on a CPU, 'dense' turns it off with the same outputs up to rounding."""
    calls = _count_grouped_calls(monkeypatch)
    x = _x()
    runs = _matmul_runs('mlit_xxs', ('auto', 'grouped'), calls, x)
    assert runs['grouped'][-1] == 2 * 9  # eval and train forward, every layer
    for a, g in zip(runs['auto'][1:4], runs['grouped'][1:4]):
        torch.testing.assert_close(a, g, atol=1e-5, rtol=1e-4)

    outs = {}
    for matmul in ('auto', 'dense'):
        torch.manual_seed(0)
        model = timm.create_model('mlit_s', expert_matmul=matmul).eval()
        calls.clear()
        with torch.no_grad():
            outs[matmul] = (model(x), len(calls))
    assert outs['auto'][1] > 0 and outs['dense'][1] == 0
    torch.testing.assert_close(outs['auto'][0], outs['dense'][0], atol=1e-5, rtol=1e-4)


def test_custom_mlp_and_attn_layers_through_create_model():
    """As timm's ViT: mlp_layer / attn_layer / block_fn are create_model arguments. A dense timm Mlp is called with
    in_features / hidden_features (no num_experts); a partial of MoEFeedForward also gets each layer's expert count."""
    from functools import partial
    from timm.layers import Attention, Mlp
    from timm_mlit.layers import MoEBlock, NoisyTopKGate, SharedSwiGLUExperts

    dense = timm.create_model('mlit_xxs', mlp_layer=Mlp, attn_layer=Attention)
    for blk, d_h in zip(dense.blocks, dense.hidden_dims):
        assert type(blk.mlp) is Mlp and (blk.mlp.fc1.in_features, blk.mlp.fc1.out_features) == (108, d_h)
        assert type(blk.attn) is Attention and blk.attn.num_heads == 6
    assert dense.mlp_layer is Mlp
    y = dense.train()(_x())
    assert y.shape == (2, 100) and float(dense.moe_loss()) == 0.

    mlp_layer = partial(MoEFeedForward, gate_layer=partial(NoisyTopKGate, top_k=1, gate_noise_eps=0.5),
                        experts_layer=partial(SharedSwiGLUExperts, expert_matmul='dense'))
    model = timm.create_model('mlit_xxs', mlp_layer=mlp_layer)
    for blk, d_h, t in zip(model.blocks, model.hidden_dims, model.num_experts):
        assert (blk.mlp.gate.top_k, blk.mlp.gate.gate_noise_eps, blk.mlp.gate.num_experts) == (1, 0.5, t)
        assert (blk.mlp.experts.hidden_dim, blk.mlp.experts.expert_matmul) == (d_h, 'dense')
    assert set(model.state_dict()) == set(timm.create_model('mlit_xxs').state_dict())

    class TaggedBlock(MoEBlock):
        pass
    assert all(type(b) is TaggedBlock for b in timm.create_model('mlit_xxs', block_fn=TaggedBlock).blocks)

    # the MoE options build the default mlp_layer: with a custom one they are refused, naming them
    with pytest.raises(ValueError, match=r'top_k, expert_drop_mode: MoE options of the default mlp_layer'):
        timm.create_model('mlit_xxs', mlp_layer=mlp_layer, top_k=2, expert_drop_mode='combined')


@pytest.mark.parametrize('option, value, layer_file', [
    ('expert_drop_mode', 'token', 'mlit_experts.py'),
    ('expert_matmul', 'loop', 'mlit_experts.py'),
    ('top_k', 4, 'mlit_gate.py'),  # more than the first layers' 3 experts
])
def test_a_bad_moe_option_is_refused_by_the_layer_that_takes_it(option, value, layer_file):
    """The model passes the option on unchecked; the layer that declares it refuses it, naming it."""
    with pytest.raises(ValueError, match=rf'^{option} must be') as err:
        timm.create_model('mlit_xxs', **{option: value})
    assert err.traceback[-1].path.name == layer_file  # raised by the layer, not by a check of the model's
