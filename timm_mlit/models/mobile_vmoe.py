""" Mobile V-MoE: sparse ViTs with one per-image router

Paper: `Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts`
- https://arxiv.org/abs/2309.04354 (Daxberger et al., Apple, 2023). No author code is public.

A ViT whose first ``depth - L`` layers are dense and whose last L are MoE-ViT layers (Mobile V-MoE Fig. 2c): after
the dense layers one router reads each image's pooled representation and picks k of E experts (Mobile V-MoE Eq. 2,
``timm_mlit.layers.vmoe_router``); every MoE-ViT layer then runs that image through those experts' MLPs
(Mobile V-MoE Eq. 1, ``timm_mlit.layers.vmoe_block``), all other parts shared. Paper sizes
(Mobile V-MoE Sec. 3.1, Mobile V-MoE Fig. 3a): 12/9/6 layers x width 384/192/96/64, heads 6/3/3/2, MLP 4x,
patch 32 at 224, E 10, L 2, k 1.

The router is trained either toward super-class labels (``superclass_map``: 'cifar100' built in, or a file, see
``timm_mlit.data.superclasses``; λ = 0.3; E = the number of super-classes) or end-to-end (no map). Its loss needs the
targets, so it is added where the criterion sees them: ``timm_mlit.training`` (timm's train.py) or
``model.router_loss(target)`` in a hand-written loop.

Also registered: the same family on mLiT's 36x36 stem (3x3 patches, bias-free projection, dummy patch, mean =
std = 0.5) for CIFAR comparisons with mLiT. ``num_moe_layers=0`` gives any size's dense twin.

Choices where the paper is silent: the stem is the zoo's dummy-patch stem (its prefix token is timm's class token
merged with its position: one D-vector fewer than timm's VisionTransformer); the router pools the patch tokens
('avg'; 'token' reads the prefix token), has no bias and is trunc-normal(0.02); gate weights are the top-k softmax
probabilities, not renormalised (Mobile V-MoE Eqs. 1-2); linear layers trunc-normal(0.02) with zero bias as timm's
ViT.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, LayerType, Mlp, calculate_drop_path_rates, get_act_layer, get_norm_layer, \
    trunc_normal_
from timm.models import checkpoint, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block

from timm_mlit.layers import MoEViTBlock, PerImageExperts, PerImageRouter, router_loss, router_stats
from timm_mlit.data.superclasses import SuperclassMap, load_superclass_map
from ._dummy_patch_vit import DummyPatchViT, block_count, build_dummy_patch_vit, zoo_cfg, filter_checkpoint
from ._dummy_patch_vit import given_options

__all__ = ['MobileVMoE']

PAPER_SIZES = {  # (depth, width) -> heads (Mobile V-MoE Sec. 3.1)
    (12, 384): 6, (9, 384): 6, (6, 384): 6, (12, 192): 3, (9, 192): 3, (6, 192): 3,
    (12, 96): 3, (9, 96): 3, (6, 96): 3, (12, 64): 2, (9, 64): 2, (6, 64): 2,
}


class MobileVMoE(DummyPatchViT):
    """Dense ViT layers, one per-image router, then L MoE-ViT layers (Mobile V-MoE Fig. 2c), in timm's model API.

    Layers are composed as in timm's ``VisionTransformer``, from factories that ``create_model`` passes on:

    * ``block_fn`` (timm's ``Block``), the dense layers: called as timm's ``VisionTransformer`` calls it,
      ``block_fn(dim=..., num_heads=..., mlp_ratio=..., qkv_bias=..., proj_drop=..., attn_drop=..., drop_path=...,
      norm_layer=..., act_layer=..., mlp_layer=..., attn_layer=..., device=..., dtype=...)``, then on (B, N, D).
    * ``moe_block_fn`` (:class:`~timm_mlit.layers.MoEViTBlock`), the last ``num_moe_layers`` layers: called with the
      same keywords plus ``num_experts=E`` and ``mlp_layer=moe_mlp_layer``, then as ``blk(x, weights, indices)``
      with the router's (B, k) choice.
    * ``mlp_layer`` (timm's ``Mlp``), the dense layers' MLP: timm's ``Block`` calls it as ``mlp_layer(
      in_features=D, hidden_features=int(D * mlp_ratio), act_layer=..., norm_layer=..., bias=..., drop=...,
      device=..., dtype=...)``.
    * ``moe_mlp_layer``, the MoE-ViT layers' experts: called as ``moe_mlp_layer(in_features=D,
      hidden_features=int(D * mlp_ratio), num_experts=E, act_layer=..., drop=..., device=..., dtype=...)``, then as
      ``mlp(x, weights, indices)``. Default: ``partial(PerImageExperts, expert_dispatch=...)``; a custom one carries
      its own options (``expert_dispatch`` given with it is refused).
    * ``attn_layer`` (timm's ``Attention``), every layer's attention: called as ``attn_layer(D, num_heads=...,
      qkv_bias=..., attn_drop=..., proj_drop=..., device=..., dtype=...)``, then on (B, N, D); timm's ``Block`` adds
      its own keywords (``qk_norm``, ``scale_norm``, ``proj_bias``, ``norm_layer``) and needs a class, not a
      ``partial`` (it checks ``issubclass``).

    The routing options (``top_k``, ``router_pool``, ``router_loss_weight``, ``router_balance_weight`` of
    :class:`~timm_mlit.layers.PerImageRouter`) and ``expert_dispatch`` (of
    :class:`~timm_mlit.layers.PerImageExperts`) have the layers' names, defaults and checks: None (not given) keeps the
    layer's default, and a value the layer refuses raises there, naming the option.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 32,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 3,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            patch_bias: bool = True,
            num_moe_layers: int = 2,
            num_experts: Optional[int] = None,
            top_k: Optional[int] = None,
            router_pool: Optional[str] = None,
            superclass_map: Optional[Union[str, Sequence[int], SuperclassMap]] = None,
            router_loss_weight: Optional[float] = None,
            router_balance_weight: Optional[float] = None,
            expert_dispatch: Optional[str] = None,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            act_layer: Optional[LayerType] = None,
            block_fn: Callable[..., nn.Module] = Block,
            moe_block_fn: Callable[..., nn.Module] = MoEViTBlock,
            mlp_layer: Callable[..., nn.Module] = Mlp,
            moe_mlp_layer: Optional[Callable[..., nn.Module]] = None,
            attn_layer: Callable[..., nn.Module] = Attention,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Input image size (224; 36 for the small-image variants).
            patch_size: Patch size (32; 3 on mLiT's stem).
            in_chans: Input channels.
            num_classes: Classifier outputs (0 for none).
            global_pool: 'token' reads the prefix token (ViT's class token); 'avg', 'max', 'avgmax' pool patches.
            embed_dim: Width.
            depth: All layers, dense and MoE-ViT.
            num_heads: Attention heads.
            mlp_ratio: MLP (and expert) hidden size over the width (4).
            qkv_bias: Bias in the q/k/v projection.
            patch_bias: Bias in the patch projection (standard ViT: yes; mLiT's stem: no).
            num_moe_layers: L, the last layers that are MoE-ViT layers (2); 0 gives the dense twin.
            num_experts: E (10); with a super-class map, default and required: its number of super-classes.
            top_k: Experts per image, k (PerImageRouter: 1, the paper's).
            router_pool: What the router reads: 'avg' of the patch tokens (the default) or the prefix 'token'.
            superclass_map: Class -> super-class map guiding the router ('cifar100', a file, a list); None routes
                end-to-end.
            router_loss_weight: λ of the super-class cross-entropy (PerImageRouter: 0.3, the paper's).
            router_balance_weight: Weight of the importance loss when routing end-to-end (PerImageRouter: 0.01).
            expert_dispatch: 'auto' (the default: grouped by expert in eager eval, gathered otherwise), 'grouped',
                'gather' (PerImageExperts).
            drop_rate: Classifier (head) dropout.
            pos_drop_rate: Dropout after the position embedding.
            attn_drop_rate: Attention-weight dropout.
            proj_drop_rate: Dropout after projections and in the MLPs.
            drop_path_rate: Stochastic depth rate.
            norm_layer: Normalization layer (LayerNorm, eps 1e-6 as timm's ViT).
            act_layer: MLP activation (GELU).
            block_fn: The dense layers (class docstring).
            moe_block_fn: The MoE-ViT layers (class docstring).
            mlp_layer: The dense layers' MLP (class docstring).
            moe_mlp_layer: The MoE-ViT layers' experts (class docstring); None builds PerImageExperts.
            attn_layer: Every layer's attention (class docstring).
            dynamic_img_size: Accept any image size, resampling the position table to its grid (timm's ViT option).
            dynamic_img_pad: With ``dynamic_img_size``, pad images whose sides are not multiples of the patch.
        """
        dd = {'device': device, 'dtype': dtype}
        if not 0 <= num_moe_layers <= depth:
            raise ValueError(f'num_moe_layers must be between 0 and depth={depth}, got {num_moe_layers}.')
        smap = load_superclass_map(superclass_map) if superclass_map is not None else None
        if smap is not None:
            if num_experts is not None and num_experts != smap.num_superclasses:
                raise ValueError(
                    f'The super-class map {smap.source!r} has {smap.num_superclasses} super-classes but '
                    f'num_experts={num_experts}: super-class routing has one expert per super-class; drop '
                    f'num_experts or set it to {smap.num_superclasses}.')
            if num_classes > 0 and smap.num_classes != num_classes:
                raise ValueError(
                    f'The super-class map {smap.source!r} covers {smap.num_classes} classes but the model has '
                    f'num_classes={num_classes}: use the map made for this dataset.')
            num_experts = smap.num_superclasses
        num_experts = 10 if num_experts is None else num_experts
        norm_layer = get_norm_layer(norm_layer) or partial(nn.LayerNorm, eps=1e-6)
        act_layer = get_act_layer(act_layer) or nn.GELU
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        num_dense = depth - num_moe_layers
        if moe_mlp_layer is None:
            moe_mlp_layer = partial(PerImageExperts, **given_options(expert_dispatch=expert_dispatch))
        elif expert_dispatch is not None:
            raise ValueError(
                f'expert_dispatch: an option of the default moe_mlp_layer, but a custom moe_mlp_layer was given '
                f'({moe_mlp_layer!r}). Set it in it, e.g. moe_mlp_layer=partial(PerImageExperts, '
                f'expert_dispatch={expert_dispatch!r}), or drop the custom moe_mlp_layer.')
        common = dict(
            dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
            attn_drop=attn_drop_rate, norm_layer=norm_layer, act_layer=act_layer, attn_layer=attn_layer, **dd)
        super().__init__(
            lambda i: block_fn(drop_path=dpr[i], mlp_layer=mlp_layer, **common),
            num_dense,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            patch_bias=patch_bias,
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            norm_layer=norm_layer,
            dynamic_img_size=dynamic_img_size,
            dynamic_img_pad=dynamic_img_pad,
            **dd,
        )
        self.num_experts = num_experts
        self.superclass_map = smap
        # the routing options, each passed only when given: the router owns the defaults and the checks
        router_args = given_options(
            top_k=top_k, router_pool=router_pool, router_loss_weight=router_loss_weight,
            router_balance_weight=router_balance_weight)
        self.router = PerImageRouter(
            embed_dim, num_experts, num_prefix_tokens=self.num_prefix_tokens,
            superclass_of=smap.as_tensor() if smap is not None else None, **router_args,
            **dd) if num_moe_layers > 0 else None
        self.top_k = self.router.top_k if self.router is not None else top_k
        self.moe_blocks = nn.ModuleList([
            moe_block_fn(num_experts=num_experts, drop_path=dpr[num_dense + j], mlp_layer=moe_mlp_layer, **common)
            for j in range(num_moe_layers)])
        reduction = self.patch_embed.feat_ratio()
        self.feature_info += [
            dict(module=f'moe_blocks.{j}', num_chs=embed_dim, reduction=reduction) for j in range(num_moe_layers)]
        self.init_weights(needs_reset=False)

    def init_weights(self, needs_reset: bool = True) -> None:
        """timm's ViT init: linear weights trunc-normal(0.02) with zero bias, position table trunc-normal(0.02);
        experts and router alike (their own ``reset_parameters``)."""
        super().init_weights(needs_reset)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """As the base, with the router in the first MoE-ViT layer's group and the MoE-ViT layers after the dense
        ones (dict order), so layer-wise LR decay sees one stack of ``depth`` layers."""
        return dict(
            stem=r'^pos_embed|patch_embed',
            blocks=r'^blocks\.(\d+)',
            moe_blocks=[(r'^router\.', (0,)), (r'^moe_blocks\.(\d+)', None)],
        )

    @torch.jit.ignore
    def num_blocks(self) -> int:
        return len(self.blocks) + len(self.moe_blocks)

    def _prune_blocks(self, max_index: int) -> None:
        num_dense = len(self.blocks)
        self.blocks = self.blocks[:max_index + 1]
        self.moe_blocks = self.moe_blocks[:max(0, max_index + 1 - num_dense)]
        if len(self.moe_blocks) == 0:
            self.router = None

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens after the dense layers -> (gate weights (B, k), expert indices (B, k)); Mobile V-MoE Eq. 2."""
        assert self.router is not None
        return self.router(x)

    def _run_blocks(self, x: torch.Tensor, take_indices: List[int], max_index: int) -> Tuple[
            torch.Tensor, List[torch.Tensor]]:
        num_dense = len(self.blocks)
        x, intermediates = self._run_sequential_blocks(x, take_indices, min(max_index, num_dense - 1))
        if 0 <= max_index < num_dense or self.router is None:
            return x, intermediates
        weights, indices = self.route(x)
        for j, blk in enumerate(self.moe_blocks):  # no break: TorchScript unrolls ModuleList loops
            if max_index < 0 or num_dense + j <= max_index:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(blk, x, weights, indices)
                else:
                    x = blk(x, weights, indices)
                if num_dense + j in take_indices:
                    intermediates.append(x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._run_blocks(self._embed(x), [], -1)  # dense layers, router, MoE-ViT layers
        return self.norm(x)

    @torch.jit.ignore
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the router's logits W·pool(x) (B, E): which super-class / expert each image is sent to."""
        assert self.router is not None, 'a dense model (num_moe_layers=0) has no router'
        x = self.blocks(self._embed(x))
        return self.router.logits(x)

    @torch.jit.ignore
    def router_loss(self, target: torch.Tensor) -> torch.Tensor:
        """The router's loss (super-class CE x λ, Mobile V-MoE Sec. 2.2, or the end-to-end importance loss) for the
        last forward's images, ``aux_losses(self, target)['router_loss']`` (:func:`timm_mlit.layers.aux_losses`):
        add it to the classification loss. 0 when there is none."""
        loss = router_loss(self, target)
        return loss if loss is not None else torch.zeros((), device=target.device)

    @torch.jit.ignore
    def router_stats(self, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Share of the last forward's images per expert, and the router's super-class accuracy."""
        return router_stats(self, target)


def _describe_mobile_vmoe(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """What a Mobile V-MoE (or dense twin) state dict is, or None for one of another family."""
    has_dense = 'blocks.0.mlp.fc1.weight' in state_dict
    has_moe = 'moe_blocks.0.mlp.fc1_weight' in state_dict
    if 'pos_embed' not in state_dict or not (has_dense or has_moe):
        return None
    width = state_dict['pos_embed'].shape[-1]
    dense, moe = block_count(state_dict), block_count(state_dict, 'moe_blocks.')
    if not has_moe:
        return (f'a dense ViT with embed_dim={width}, {dense} blocks and MLP width '
                f'{state_dict["blocks.0.mlp.fc1.weight"].shape[0]}')
    experts, hidden = state_dict['moe_blocks.0.mlp.fc1_weight'].shape[:2]
    return (f'a Mobile V-MoE with embed_dim={width}, {dense} dense + {moe} MoE-ViT layers and {experts} experts '
            f'of MLP width {hidden}')


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: MobileVMoE,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model`` (:func:`~timm_mlit.models._dummy_patch_vit.filter_checkpoint`)."""
    return filter_checkpoint(
        state_dict, model, _describe_mobile_vmoe, family='a Mobile V-MoE',
        hint='mobile_vmoe_<depth>x<width>_patch<p>_<size>, with num_experts= / num_moe_layers= as trained',
        interpolation=interpolation, antialias=antialias)


def _create_mobile_vmoe(variant: str, pretrained: bool = False, **kwargs) -> MobileVMoE:
    return build_dummy_patch_vit(MobileVMoE, variant, pretrained, checkpoint_filter_fn, **kwargs)


_PAPER = dict(
    paper_ids='arXiv:2309.04354',
    paper_name='Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts',
)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    """timm's ImageNet ViT data config."""
    return zoo_cfg(
        url, num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, **_PAPER, **kwargs)


def _cfg_36(**kwargs) -> Dict[str, Any]:
    """mLiT's CIFAR stem and data config."""
    return zoo_cfg(**_PAPER, **kwargs)


SMALL_IMAGE_SIZES = ((12, 192), (9, 96), (6, 64))

default_cfgs = generate_default_cfgs({
    # no weights (not listed as pretrained; pretrained=True says so): train with timm's train.py by the recipes
    # timm_mlit/configs/mobile_vmoe_*.yaml (mlit-config --list)
    **{f'mobile_vmoe_{d}x{w}_patch32_224': _cfg() for d, w in PAPER_SIZES},
    **{f'mobile_vmoe_{d}x{w}_patch3_36': _cfg_36() for d, w in SMALL_IMAGE_SIZES},
})


def _paper_size(depth: int, width: int, pretrained: bool, **kwargs) -> MobileVMoE:
    model_args = dict(embed_dim=width, depth=depth, num_heads=PAPER_SIZES[(depth, width)], patch_size=32)
    return _create_mobile_vmoe(
        f'mobile_vmoe_{depth}x{width}_patch32_224', pretrained=pretrained, **dict(model_args, **kwargs))


def _small_image(depth: int, width: int, pretrained: bool, **kwargs) -> MobileVMoE:
    model_args = dict(
        embed_dim=width, depth=depth, num_heads=PAPER_SIZES[(depth, width)], patch_size=3, img_size=36,
        patch_bias=False)
    return _create_mobile_vmoe(
        f'mobile_vmoe_{depth}x{width}_patch3_36', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mobile_vmoe_12x384_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 12x384 (Mobile V-MoE Fig. 3a): 6 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(12, 384, pretrained, **kwargs)


@register_model
def mobile_vmoe_9x384_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 9x384 (Mobile V-MoE Fig. 3a): 6 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(9, 384, pretrained, **kwargs)


@register_model
def mobile_vmoe_6x384_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 6x384 (Mobile V-MoE Fig. 3a): 6 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(6, 384, pretrained, **kwargs)


@register_model
def mobile_vmoe_12x192_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 12x192 (Mobile V-MoE Fig. 3a; ViT-Tiny at patch 32): 3 heads, E 10, L 2, k 1."""
    return _paper_size(12, 192, pretrained, **kwargs)


@register_model
def mobile_vmoe_9x192_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 9x192 (Mobile V-MoE Fig. 3a): 3 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(9, 192, pretrained, **kwargs)


@register_model
def mobile_vmoe_6x192_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 6x192 (Mobile V-MoE Fig. 3a): 3 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(6, 192, pretrained, **kwargs)


@register_model
def mobile_vmoe_12x96_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 12x96 (Mobile V-MoE Fig. 3a): 3 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(12, 96, pretrained, **kwargs)


@register_model
def mobile_vmoe_9x96_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 9x96 (Mobile V-MoE Fig. 3a): 3 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(9, 96, pretrained, **kwargs)


@register_model
def mobile_vmoe_6x96_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 6x96 (Mobile V-MoE Fig. 3a): 3 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(6, 96, pretrained, **kwargs)


@register_model
def mobile_vmoe_12x64_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 12x64 (Mobile V-MoE Fig. 3a): 2 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(12, 64, pretrained, **kwargs)


@register_model
def mobile_vmoe_9x64_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 9x64 (Mobile V-MoE Fig. 3a): 2 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(9, 64, pretrained, **kwargs)


@register_model
def mobile_vmoe_6x64_patch32_224(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 6x64 (Mobile V-MoE Fig. 3a; 54M FLOPs dense): 2 heads, patch 32, E 10, L 2, k 1."""
    return _paper_size(6, 64, pretrained, **kwargs)


@register_model
def mobile_vmoe_12x192_patch3_36(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 12x192 on mLiT's 36x36 stem (3x3 patches, dummy patch): 3 heads, E 10 (20 with the CIFAR-100
    super-classes), L 2, k 1."""
    return _small_image(12, 192, pretrained, **kwargs)


@register_model
def mobile_vmoe_9x96_patch3_36(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 9x96 on mLiT's 36x36 stem: 3 heads, E 10 (20 with CIFAR-100 super-classes), L 2, k 1;
    about mLiT-S's parameter count."""
    return _small_image(9, 96, pretrained, **kwargs)


@register_model
def mobile_vmoe_6x64_patch3_36(pretrained: bool = False, **kwargs) -> MobileVMoE:
    """Mobile V-MoE 6x64 on mLiT's 36x36 stem: 2 heads, E 10 (20 with CIFAR-100 super-classes), L 2, k 1."""
    return _small_image(6, 64, pretrained, **kwargs)
