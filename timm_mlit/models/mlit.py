""" mLiT: mixture-of-experts lightweight vision transformers for 36x36 images

Paper: `How Lightweight Can A Vision Transformer Be` - https://arxiv.org/abs/2407.17783 (Jen Hong Tan, 2024)
No author code is public; this is built from the paper and ``SPEC.md``.

The encoder (Table 1):
  * 36x36 RGB input cut into 3x3 patches (144 patches), each projected by a bias-free linear map (a stride-3
    Conv2d, the same map on flattened patches) and given a learned position embedding (145 positions);
  * a dummy patch, all zeros, joins every image; with no bias in the projection its embedding is exactly its
    position embedding. It sits first (timm's prefix-token place; with learned positions the place does not
    matter) and its output token is what the classifier reads (``global_pool='token'``);
  * L MoE encoder layers (:class:`~timm_mlit.layers.MoEBlock`): grouped-query attention, then a noisy top-k gate
    over SwiGLU experts that share V and W2; hidden size d_h shrinks with depth (Eq. 15) and the experts per
    layer grow 3 -> 4 -> 5 in three equal stages (Figure 4); dropout 0.1 on expert outputs;
  * a final LayerNorm and a linear classifier.

Choices where the paper is silent (also in the README): pre-norm layers; the position table starts as
trunc-normal(std 0.02) like timm's ViT (every other layer keeps PyTorch's default init as the paper says, gates
at zero); the classifier head has a bias (the paper removes biases from embedding projections only).

A training forward leaves the MoE balancing loss of Eq. 12 on the model: add ``model.moe_loss()`` (or
``timm_mlit.moe_loss(model)`` for wrapped models) to the classification loss.
"""
import functools
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import (
    LayerType, PatchEmbed, calculate_drop_path_rates, get_norm_layer, resample_abs_pos_embed,
    resample_patch_embed, trunc_normal_,
)
from timm.models import (
    build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model, resolve_pretrained_cfg,
)
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import global_pool_nlc

from timm_mlit.layers import EXPERT_DROP_MODES, MoEBlock, expert_load, moe_loss
from timm_mlit.hub.errors import CheckpointMismatchError, explain_load_error, unpublished_on_public_hub
from timm_mlit.hub.variants import DEFAULT_TAG, MODELS, VARIANTS, hub_repo_id
from timm_mlit.layers._tracing import is_graph_capture

__all__ = ['MLiT', 'hidden_sizes', 'experts_per_layer']

_logger = logging.getLogger(__name__)

_GLOBAL_POOLS = ('', 'token', 'avg', 'max', 'avgmax')


def hidden_sizes(depth: int, first: int, last: int) -> List[int]:
    """Eq. 15: d_h of layer i = floor(((L-1) - i) / (L-1) * (first - last)) + last."""
    if depth == 1:
        return [first]
    return [((depth - 1 - i) * (first - last)) // (depth - 1) + last for i in range(depth)]


def experts_per_layer(depth: int, stages: Sequence[int]) -> List[int]:
    """Experts added in equal stages (Figure 4): stages (3, 4, 5) over 9 layers -> 3,3,3,4,4,4,5,5,5."""
    return [stages[i * len(stages) // depth] for i in range(depth)]


class MLiT(nn.Module):
    """mLiT encoder with a classifier head, in timm's model API."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 36,
            patch_size: int = 3,
            in_chans: int = 3,
            num_classes: int = 100,
            global_pool: str = 'token',
            embed_dim: int = 108,
            depth: int = 9,
            num_heads: int = 6,
            num_kv_heads: int = 3,
            hidden_dims: Tuple[int, int] = (81, 27),
            expert_stages: Sequence[int] = (3, 4, 5),
            top_k: int = 2,
            expert_drop_rate: float = 0.1,
            expert_drop_mode: str = 'expert',
            gate_noise_eps: float = 1e-2,
            moe_importance_weight: float = 1e-2,
            moe_load_weight: float = 1e-2,
            moe_cv_squared: bool = False,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Input image size (36 in the paper).
            patch_size: Patch size (3 in the paper: 144 patches).
            in_chans: Input channels.
            num_classes: Classifier outputs (0 for none).
            global_pool: 'token' reads the dummy patch's output (the paper); 'avg', 'max', 'avgmax' pool the
                patch tokens; '' returns the whole sequence.
            embed_dim: Embedding size m.
            depth: Number of encoder layers L.
            num_heads: Query heads H.
            num_kv_heads: Key/value heads (attention groups) G.
            hidden_dims: (d_h of the first layer, d_h of the last layer), interpolated by Eq. 15.
            expert_stages: Experts per layer in each of the equal stages.
            top_k: Experts chosen per token, k.
            expert_drop_rate: Dropout on expert outputs (0.1 in the paper). Separate from ``drop_rate``, which
                timm's train.py always sets from ``--drop``.
            expert_drop_mode: 'expert' drops each chosen expert's output (the paper); 'combined' drops the
                gate-weighted sum once (cheaper, same expectation).
            gate_noise_eps: Added to the gate noise std (the reference code's 1e-2).
            moe_importance_weight: w_importance (Eq. 11).
            moe_load_weight: w_load (Eq. 10).
            moe_cv_squared: Use CV² (Shazeer, reference code) instead of the paper's CV in the MoE loss.
            qkv_bias: Bias in the attention q/k/v projections.
            proj_bias: Bias in the attention output projection.
            drop_rate: Classifier (head) dropout.
            pos_drop_rate: Dropout after the position embedding.
            attn_drop_rate: Attention-weight dropout.
            proj_drop_rate: Dropout after the attention projection.
            drop_path_rate: Stochastic depth rate (not in the paper).
            norm_layer: Normalization layer (LayerNorm).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in _GLOBAL_POOLS:
            raise ValueError(f'global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}.')
        if expert_drop_mode not in EXPERT_DROP_MODES:
            raise ValueError(f'expert_drop_mode must be one of {EXPERT_DROP_MODES}, got {expert_drop_mode!r}.')
        norm_layer = get_norm_layer(norm_layer) or nn.LayerNorm

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1  # the dummy patch
        self.grad_checkpointing = False
        self.hidden_dims = hidden_sizes(depth, *hidden_dims)
        self.num_experts = experts_per_layer(depth, expert_stages)

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            bias=False,  # no bias: the all-zero dummy patch embeds to exactly 0
            **dd,
        )
        num_patches = self.patch_embed.num_patches
        reduction = self.patch_embed.feat_ratio()
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            MoEBlock(
                dim=embed_dim,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                hidden_dim=self.hidden_dims[i],
                num_experts=self.num_experts[i],
                top_k=top_k,
                expert_drop=expert_drop_rate,
                expert_drop_mode=expert_drop_mode,
                gate_noise_eps=gate_noise_eps,
                importance_weight=moe_importance_weight,
                load_weight=moe_load_weight,
                cv_squared=moe_cv_squared,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                **dd,
            )
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights(needs_reset=False)

    def init_weights(self, needs_reset: bool = True) -> None:
        """Position table trunc-normal(0.02); every other layer PyTorch's default init (the paper), gates zero.

        ``needs_reset=True`` re-runs each layer's ``reset_parameters`` too, e.g. after ``to_empty()`` from meta.
        """
        if needs_reset:
            # children before parents, so a parent's own init (the gates' zeros) has the last word
            for m in reversed(list(self.modules())):
                if m is not self and hasattr(m, 'reset_parameters'):
                    m.reset_parameters()
        trunc_normal_(self.pos_embed, std=.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Embeddings form the stem group and each block its own group; the final norm is left unmatched so it
        lands with the head. timm's layer-wise LR decay then gives MAE's scales: embeddings decay^(L+1),
        block j decay^(L-j), final norm and head 1."""
        return dict(
            stem=r'^pos_embed|patch_embed',
            blocks=r'^blocks\.(\d+)',
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in _GLOBAL_POOLS:
                raise ValueError(f'global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}.')
            self.global_pool = global_pool
        dd = {'device': self.pos_embed.device, 'dtype': self.pos_embed.dtype}
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def moe_loss(self) -> torch.Tensor:
        """L of Eq. 12 summed over the layers, from the last training forward; 0 after an eval forward."""
        return moe_loss(self)

    @torch.jit.ignore
    def expert_load(self) -> Dict[str, torch.Tensor]:
        """Share of the last forward's routed token slots per expert, per layer."""
        return expert_load(self)

    @torch.jit.ignore
    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse input the model would silently mis-read: it needs (B, in_chans, H, W) at its image size."""
        if is_graph_capture():
            return
        expected = (self.in_chans, *self.patch_embed.img_size)
        if x.ndim == 4 and tuple(x.shape[1:]) == expected:
            return
        name = getattr(self, 'pretrained_cfg', {}).get('architecture', type(self).__name__)
        c, h, w = expected
        raise ValueError(
            f'{name} expects a batch of {c}-channel {h}x{w} images, a tensor shaped (B, {c}, {h}, {w}); '
            f'got shape {tuple(x.shape)}. Resize the images with the transform timm builds for the model '
            f'(timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))), or create the model '
            f'with img_size=/in_chans= matching your data.'
        )

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch embeddings plus their positions, (B, 144, m), without the dummy patch."""
        self._check_input(x)
        return self.patch_embed(x) + self.pos_embed[:, self.num_prefix_tokens:]

    def add_dummy_patch(self, x: torch.Tensor) -> torch.Tensor:
        """Put the all-zero dummy patch first; no bias in the projection, so its embedding is pos_embed[0]."""
        dummy = self.pos_embed[:, :self.num_prefix_tokens].expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([dummy, x], dim=1))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_dummy_patch(self.embed_patches(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the outputs of the selected blocks.

        Args:
            x: Input images.
            indices: Take the last n blocks if an int, all if None, these blocks if a sequence.
            return_prefix_tokens: Return (patch tokens, dummy token) pairs.
            norm: Apply the final norm to each intermediate.
            stop_early: Stop after the last block asked for.
            output_fmt: 'NCHW' (patch grid) or 'NLC' (token sequence).
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)

        B, (height, width) = x.shape[0], x.shape[-2:]
        x = self._embed(x)
        if torch.jit.is_scripting() or not stop_early:
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)

        prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last intermediate asked for (and the norm / head if asked)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        return global_pool_nlc(x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _mlit_signature(state_dict: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """(embed_dim, depth) that a state dict was made for."""
    depth = len({k.split('.')[1] for k in state_dict if k.startswith('blocks.')})
    return state_dict['pos_embed'].shape[-1], depth


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: MLiT,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: unwrap training-checkpoint containers and DDP prefixes, refuse weights of
    another architecture with a message that says so, resample the position table and patch projection when
    the image or patch size differs, and give a headless encoder (an MAE export) the model's own new head."""
    for key in ('model', 'state_dict', 'model_ema', 'state_dict_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}

    if 'pos_embed' not in state_dict or 'blocks.0.mlp.gate.w_gate.weight' not in state_dict:
        sample = ', '.join(list(state_dict)[:4])
        raise CheckpointMismatchError(
            f'This checkpoint is not an mLiT encoder (no pos_embed / blocks.0.mlp.gate.w_gate.weight; its first keys '
            f'are: {sample}). Load it into the model it was trained for, or pass an mLiT checkpoint.'
        )
    got = _mlit_signature(state_dict)
    want = (model.embed_dim, len(model.blocks))
    if got != want:
        raise CheckpointMismatchError(
            f'This checkpoint is an mLiT with embed_dim={got[0]} and {got[1]} blocks, but the model has '
            f'embed_dim={want[0]} and {want[1]} blocks. Create the matching size '
            f'(mlit_s: 144/15, mlit_xs: 128/12, mlit_xxs: 108/9) to load it.'
        )

    out = {}
    for k, v in state_dict.items():
        if k == 'patch_embed.proj.weight' and v.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            v = resample_patch_embed(
                v, model.patch_embed.proj.weight.shape[-2:], interpolation=interpolation, antialias=antialias)
        elif k == 'pos_embed' and v.shape != model.pos_embed.shape:
            num_patches = v.shape[1] - model.num_prefix_tokens
            side = int(math.sqrt(num_patches))
            v = resample_abs_pos_embed(
                v,
                new_size=model.patch_embed.grid_size,
                old_size=(side, side),
                num_prefix_tokens=model.num_prefix_tokens,
                interpolation=interpolation,
                antialias=antialias,
            )
        out[k] = v
    if 'head.weight' not in out and isinstance(model.head, nn.Linear):
        # a headless encoder (MAE export): the model keeps its freshly initialised head, everything else loads
        _logger.info('Checkpoint has no classifier head: keeping the model\'s newly initialised head.')
        out.update({f'head.{k}': v for k, v in model.head.state_dict().items()})
    return out


def _create_mlit(variant: str, pretrained: bool = False, **kwargs) -> MLiT:
    out_indices = kwargs.pop('out_indices', 3)
    build = functools.partial(
        build_model_with_cfg,
        MLiT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )
    if not pretrained:
        return build()
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    unpublished = unpublished_on_public_hub(variant, cfg)
    if unpublished is not None:
        raise unpublished
    try:
        return build()
    except Exception as e:  # say which weights failed and what to do, for the errors that are about the weights
        explained = explain_load_error(variant, cfg, e)
        if explained is None:
            raise
        raise explained from e


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 100,
        'input_size': (3, 36, 36),
        'pool_size': None,
        'crop_pct': 1.0,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': (0.5, 0.5, 0.5),
        'std': (0.5, 0.5, 0.5),
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2407.17783',
        'paper_name': 'How Lightweight Can A Vision Transformer Be',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # one Hub repo per model.tag (timm_mlit/hub/variants.py says what each is and how it is made; none is
    # published yet); '*' marks the default tag, the paper's headline CIFAR-100 classifier (Table 7)
    f'{model}.{v.tag}{"*" if v.tag == DEFAULT_TAG else ""}': _cfg(
        hf_hub_id=hub_repo_id(model, v.tag), num_classes=v.num_classes, description=v.description)
    for model in MODELS for v in VARIANTS.values()
})


@register_model
def mlit_s(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-S (Table 1): m 144, 15 layers, d_h 144->72, 8 heads / 4 groups, experts 3-5, k 2; 2.36M params."""
    model_args = dict(
        embed_dim=144, depth=15, num_heads=8, num_kv_heads=4, hidden_dims=(144, 72), expert_stages=(3, 4, 5), top_k=2)
    return _create_mlit('mlit_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mlit_xs(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-XS (Table 1): m 128, 12 layers, d_h 96->32, 8 heads / 4 groups, experts 3-5, k 2; 1.21M params."""
    model_args = dict(
        embed_dim=128, depth=12, num_heads=8, num_kv_heads=4, hidden_dims=(96, 32), expert_stages=(3, 4, 5), top_k=2)
    return _create_mlit('mlit_xs', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mlit_xxs(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-XXS (Table 1): m 108, 9 layers, d_h 81->27, 6 heads / 3 groups, experts 3-5, k 2; 0.66M params."""
    model_args = dict(
        embed_dim=108, depth=9, num_heads=6, num_kv_heads=3, hidden_dims=(81, 27), expert_stages=(3, 4, 5), top_k=2)
    return _create_mlit('mlit_xxs', pretrained=pretrained, **dict(model_args, **kwargs))
