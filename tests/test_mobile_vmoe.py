"""Mobile V-MoE (arXiv 2309.04354): per-image routing, its sizes and costs, the router's training (super-class
guided and end-to-end) through timm's training task, and the two expert paths (grouped eval, static gather)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask
from torch.utils.flop_counter import FlopCounterMode

import timm_mlit
from timm_mlit.layers import PerImageExperts
from timm_mlit.models.mobile_vmoe import PAPER_SIZES, checkpoint_filter_fn

PAPER_MODELS = [f'mobile_vmoe_{d}x{w}_patch32_224' for d, w in PAPER_SIZES]
SMALL_MODELS = ['mobile_vmoe_12x192_patch3_36', 'mobile_vmoe_9x96_patch3_36', 'mobile_vmoe_6x64_patch3_36']
SUPER = [0, 0, 1, 1, 2, 2, 3, 3]  # 8 classes in 4 known groups


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _flops(model, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_all_paper_sizes_and_small_image_variants_are_registered():
    assert sorted(timm.list_models('mobile_vmoe_*')) == sorted(PAPER_MODELS + SMALL_MODELS)
    m = timm.create_model('mobile_vmoe_12x192_patch32_224')
    assert (len(m.blocks), len(m.moe_blocks), m.num_experts, m.top_k) == (10, 2, 10, 1)  # E 10, L 2, k 1
    assert m.patch_embed.patch_size == (32, 32) and m.pretrained_cfg['input_size'] == (3, 224, 224)
    assert m.blocks[0].attn.num_heads == 3 and m.blocks[0].mlp.fc1.out_features == 4 * 192
    s = timm.create_model('mobile_vmoe_9x96_patch3_36')
    assert s.patch_embed.patch_size == (3, 3) and s.pos_embed.shape == (1, 145, 96)
    assert s.patch_embed.proj.bias is None  # mLiT's stem: the dummy patch embeds to its position
    assert s.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize('name', PAPER_MODELS + SMALL_MODELS)
def test_params_are_the_dense_twin_plus_nine_mlps_per_moe_layer_plus_the_router(name):
    moe = timm.create_model(name)  # E 10, k 1
    dense = timm.create_model(name, num_moe_layers=0)
    mlp = _params(dense.blocks[-1].mlp)
    router = moe.embed_dim * 10  # W of Eq. 2, no bias
    assert _params(moe) == _params(dense) + 2 * 9 * mlp + router
    assert len(dense.blocks) == len(moe.blocks) + 2 and dense.router is None


def test_dense_twin_is_timms_vision_transformer_less_the_separate_class_token():
    dense = timm.create_model('mobile_vmoe_12x192_patch32_224', num_moe_layers=0)
    vit = VisionTransformer(img_size=224, patch_size=32, embed_dim=192, depth=12, num_heads=3, num_classes=1000)
    assert _params(dense) == _params(vit) - 192  # the prefix token is pos_embed[0]: cls_token merged in


@pytest.mark.parametrize('name', ['mobile_vmoe_6x64_patch32_224', 'mobile_vmoe_12x192_patch32_224',
                                  'mobile_vmoe_9x96_patch3_36'])
@pytest.mark.parametrize('top_k', [1, 2])
def test_flops_per_image_are_the_dense_twins_plus_the_routers(name, top_k):
    """Eval computes only the chosen experts: k=1 costs the dense twin plus W x (2·D·E FLOPs per image)."""
    torch.manual_seed(0)
    moe = timm.create_model(name, top_k=top_k).eval()
    dense = timm.create_model(name, num_moe_layers=0, mlp_ratio=4.).eval()
    x = torch.randn(6, *moe.pretrained_cfg['input_size'])
    mlp_flops = _flops(dense.blocks[-1].mlp, torch.randn(6, moe.patch_embed.num_patches + 1, moe.embed_dim))
    want = _flops(dense, x) + 6 * 2 * moe.embed_dim * 10 + (top_k - 1) * 2 * mlp_flops
    assert _flops(moe, x) == want


def _reference(experts: PerImageExperts, x, weights, indices):
    """Σ_j w_j · MLP_{e_j}(x), one image and one expert at a time."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for j in range(indices.shape[1]):
            e = int(indices[b, j])
            h = experts.act(F.linear(x[b], experts.fc1_weight[e], experts.fc1_bias[e]))
            out[b] += weights[b, j] * F.linear(h, experts.fc2_weight[e], experts.fc2_bias[e])
    return out


@pytest.mark.parametrize('top_k', [1, 3])
def test_grouped_and_gathered_experts_equal_the_per_image_reference(top_k):
    torch.manual_seed(0)
    experts = PerImageExperts(16, 64, num_experts=5).eval()
    for p in experts.parameters():
        nn.init.normal_(p)
    x = torch.randn(7, 10, 16)
    weights, indices = torch.rand(7, 5).softmax(-1).topk(top_k)
    indices[0] = indices[1]  # images sharing experts; expert(s) left unused by all
    ref = _reference(experts, x, weights, indices)
    for dispatch in ('grouped', 'gather'):
        experts.expert_dispatch = dispatch
        assert torch.allclose(experts(x, weights, indices), ref, atol=1e-4, rtol=1e-4), dispatch


def test_eval_groups_by_expert_and_training_or_tracing_gathers(monkeypatch):
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', patch_size=6).eval()
    calls = []
    monkeypatch.setattr(PerImageExperts, '_grouped', lambda self, *a: calls.append('grouped') or a[0])
    monkeypatch.setattr(PerImageExperts, '_gather', lambda self, *a: calls.append('gather') or a[0])
    x = torch.randn(2, 3, 36, 36)
    model(x)
    model.train()(x)
    assert calls == ['grouped'] * 2 + ['gather'] * 2
    calls.clear()
    tracer = torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions()))
    tracer.is_leaf_module = lambda m, name: isinstance(m, tuple(get_notrace_modules())) or \
        torch.fx.Tracer.is_leaf_module(tracer, m, name)
    tracer.trace(model.eval())  # graph capture (timm's FX tracer, its leaf modules): the static-shape path
    assert calls == ['gather'] * 2


def test_torchscript_export_and_compile_use_the_static_path_and_match_eager():
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', patch_size=6, top_k=2).eval()
    x = torch.randn(4, 3, 36, 36)
    eager = model(x)
    assert torch.allclose(torch.jit.script(model)(x), eager, atol=1e-5)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), eager, atol=1e-5)
    compiled = torch.compile(model, fullgraph=True, backend='eager')  # no graph break, no host sync
    assert torch.allclose(compiled(x), eager, atol=1e-5)


def _grouped_images(n, g):
    """Classes fall into known super-classes: the super-class sets the colour, the class inside it the texture."""
    y = torch.randint(0, 8, (n,), generator=g)
    colour = torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])[torch.tensor(SUPER)[y]]
    checker = ((torch.arange(36)[:, None] + torch.arange(36)[None]) % 2).float() * 2 - 1
    img = 0.3 * torch.randn(n, 3, 36, 36, generator=g) + colour[:, :, None, None]
    return img + (y % 2 == 0).float()[:, None, None, None] * checker, y


def _train(model, steps=40):
    """As train.py: loss from timm's ClassificationTask (timm_mlit adds the router loss there)."""
    task = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    results = []
    model.train()
    for _ in range(steps):
        x, y = _grouped_images(32, g)
        result = task(x, y)
        optimizer.zero_grad()
        result['loss'].backward()
        optimizer.step()
        results.append({k: v.item() for k, v in result.items() if v.ndim == 0})
    model.eval()
    x, y = _grouped_images(256, g)
    with torch.no_grad():
        top1 = (model(x).argmax(-1) == y).float().mean().item()
        routed = model.router_logits(x).argmax(-1)
    return results, top1, routed, y


def test_super_class_guidance_teaches_the_router_the_grouping():
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=8, patch_size=6, superclass_map=SUPER)
    assert model.num_experts == 4  # one expert per super-class
    results, top1, routed, y = _train(model)
    assert 'router_loss' in results[0] and 'router_acc' in results[0]
    router_acc = (routed == torch.tensor(SUPER)[y]).float().mean().item()
    assert router_acc > 0.9  # chance: 0.25
    assert top1 > 0.8  # chance: 0.125
    assert results[-1]['loss'] < 0.3 * results[0]['loss']


def test_end_to_end_routing_without_labels_trains():
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=8, patch_size=6, num_experts=4)
    results, top1, routed, _ = _train(model)
    first, last = sum(r['loss'] for r in results[:5]) / 5, sum(r['loss'] for r in results[-5:]) / 5
    assert last < 0.3 * first
    assert top1 > 0.5
    assert model.router.proj.weight.grad is not None and model.router.proj.weight.grad.abs().sum() > 0


def test_router_loss_is_lambda_times_cross_entropy_toward_super_classes_also_for_soft_targets():
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=8, patch_size=6, superclass_map=SUPER).train()
    x, y = _grouped_images(4, torch.Generator().manual_seed(1))
    model(x)
    logits = model.router.aux_record.logits
    want = 0.3 * F.cross_entropy(logits, torch.tensor(SUPER)[y])
    assert torch.allclose(model.router_loss(y), want)
    soft = F.one_hot(y, 8).float()  # mixup-style soft targets reduce to the hard ones
    assert torch.allclose(model.router_loss(soft), want)


def test_cifar100_super_classes_give_twenty_experts_and_mismatches_are_explained():
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', superclass_map='cifar100')
    assert model.num_experts == 20 and model.router.superclass_of.shape == (100,)
    assert 'router.superclass_of' not in model.state_dict()  # configuration, not a weight
    with pytest.raises(ValueError, match='20 super-classes but num_experts=10'):
        timm.create_model('mobile_vmoe_6x64_patch3_36', superclass_map='cifar100', num_experts=10)
    with pytest.raises(ValueError, match='covers 100 classes but the model has num_classes=10'):
        timm.create_model('mobile_vmoe_6x64_patch3_36', superclass_map='cifar100', num_classes=10)


def test_layer_decay_sees_one_stack_with_the_router_in_the_first_moe_layer():
    model = timm.create_model('mobile_vmoe_6x64_patch3_36')
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.5)
    name_of = {p: n for n, p in model.named_parameters()}
    scale = {name_of[p]: g['lr_scale'] for g in opt.param_groups for p in g['params']}
    assert scale['pos_embed'] == 0.5 ** 7  # stem, 6 layers, head
    assert scale['blocks.3.attn.qkv.weight'] == 0.5 ** 3
    assert scale['router.proj.weight'] == scale['moe_blocks.0.mlp.fc1_weight'] == 0.5 ** 2
    assert scale['moe_blocks.1.mlp.fc1_weight'] == 0.5 and scale['head.weight'] == 1.0


def test_forward_intermediates_cover_dense_and_moe_layers():
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', patch_size=6).eval()
    x = torch.randn(2, 3, 36, 36)
    final, inter = model.forward_intermediates(x, output_fmt='NLC')
    assert len(inter) == 6 and torch.allclose(final, model.forward_features(x), atol=1e-5)
    last = model.forward_intermediates(x, indices=[5], intermediates_only=True, output_fmt='NLC')[0]
    assert torch.allclose(last, inter[5])
    model.prune_intermediate_layers(indices=[4])
    assert (len(model.blocks), len(model.moe_blocks)) == (4, 1)


def test_checkpoints_round_trip_and_foreign_ones_are_refused(tmp_path):
    src = timm.create_model('mobile_vmoe_6x64_patch3_36')
    path = tmp_path / 'vmoe.pth'
    torch.save({'state_dict': src.state_dict()}, path)
    same = timm.create_model('mobile_vmoe_6x64_patch3_36', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(same.moe_blocks[1].mlp.fc2_weight, src.moe_blocks[1].mlp.fc2_weight)
    dense = timm.create_model('mobile_vmoe_6x64_patch3_36', num_moe_layers=0)
    with pytest.raises(ValueError, match=r'Mobile V-MoE with embed_dim=64, 4 dense \+ 2 MoE-ViT layers and 10 '
                                         r'experts of MLP width 256, but the model is a dense ViT'):
        checkpoint_filter_fn(src.state_dict(), dense)
    with pytest.raises(ValueError, match='not a Mobile V-MoE'):
        checkpoint_filter_fn(timm.create_model('mlit_xxs').state_dict(), src)


@pytest.mark.parametrize('train', [True, False])
def test_router_runs_in_float32_under_autocast(train):
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', patch_size=6).train(train)
    x = torch.randn(4, 3, 36, 36)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and model.router.aux_record.logits.dtype == torch.float32
    if not train:  # the grouped eval path under autocast agrees with float32
        assert torch.allclose(out.float(), model(x), atol=0.05)


def test_layers_are_timm_style_factories_through_create_model():
    """block_fn / mlp_layer (dense layers), moe_block_fn / moe_mlp_layer (MoE-ViT layers) and attn_layer are
    create_model arguments; the routing and dispatch options reach the router and the experts under their names."""
    from functools import partial
    from timm.layers import Attention, Mlp, SwiGLU
    from timm_mlit.layers import MoEViTBlock
    model = timm.create_model(
        'mobile_vmoe_6x64_patch3_36', top_k=2, router_pool='token', router_balance_weight=0.5,
        expert_dispatch='gather')
    assert (model.top_k, model.router.top_k, model.router.router_pool, model.router.router_balance_weight,
            model.router.router_loss_weight) == (2, 2, 'token', 0.5, 0.3)
    assert all(blk.mlp.expert_dispatch == 'gather' for blk in model.moe_blocks)
    assert all(type(blk.mlp) is Mlp and type(blk.attn) is Attention for blk in model.blocks)

    class TaggedMoEBlock(MoEViTBlock):
        pass
    model = timm.create_model(
        'mobile_vmoe_6x64_patch3_36', mlp_layer=SwiGLU,
        moe_mlp_layer=partial(PerImageExperts, expert_dispatch='grouped', bias=False), moe_block_fn=TaggedMoEBlock)
    assert all(type(blk.mlp) is SwiGLU for blk in model.blocks)
    assert all(type(blk) is TaggedMoEBlock and blk.mlp.expert_dispatch == 'grouped' and blk.mlp.fc1_bias is None
               for blk in model.moe_blocks)
    assert model(torch.randn(2, 3, 36, 36)).shape == (2, model.num_classes)
    with pytest.raises(ValueError, match='expert_dispatch: an option of the default moe_mlp_layer'):
        timm.create_model('mobile_vmoe_6x64_patch3_36', moe_mlp_layer=PerImageExperts, expert_dispatch='gather')


@pytest.mark.parametrize('option, value, layer_file', [
    ('expert_dispatch', 'loop', 'vmoe_experts.py'),
    ('router_pool', 'max', 'vmoe_router.py'),
    ('top_k', 11, 'vmoe_router.py'),
])
def test_a_bad_routing_option_is_refused_by_the_layer_that_takes_it(option, value, layer_file):
    with pytest.raises(ValueError, match=rf'^{option} must be') as err:
        timm.create_model('mobile_vmoe_6x64_patch3_36', **{option: value})
    assert err.traceback[-1].path.name == layer_file  # raised by the layer, not by a check of the model's
