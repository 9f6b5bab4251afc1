""" mLiT: mixture-of-experts lightweight vision transformers for 36x36 images

Paper: `How Lightweight Can A Vision Transformer Be` - https://arxiv.org/abs/2407.17783 (Jen Hong Tan, 2024)
No author code is public; this is built from the paper alone, with the choices where it is silent listed below
and in the README ("Where the paper is silent").

The encoder (mLiT Table 1):
  * 36x36 RGB input cut into 3x3 patches (144 patches), each projected by a bias-free linear map (a stride-3
    Conv2d, the same map on flattened patches) and given a learned position embedding (145 positions);
  * a dummy patch, all zeros, joins every image; with no bias in the projection its embedding is exactly its
    position embedding. It sits first (timm's prefix-token place; with learned positions the place does not
    matter) and its output token is what the classifier reads (``global_pool='token'``);
  * L MoE encoder layers (:class:`~timm_mlit.layers.MoEBlock`): grouped-query attention, then a noisy top-k gate
    over SwiGLU experts that share V and W2; hidden size d_h shrinks with depth (mLiT Eq. 15) and the experts
    per layer grow 3 -> 4 -> 5 in three equal stages (mLiT Figure 4); dropout 0.1 on expert outputs;
  * a final LayerNorm and a linear classifier.

Choices where the paper is silent (also in the README): pre-norm layers; the position table starts as
trunc-normal(std 0.02) like timm's ViT (every other layer keeps PyTorch's default init as the paper says, gates
at zero); the classifier head has a bias (the paper removes biases from embedding projections only).

The layers are built the timm way, from ``block_fn`` / ``mlp_layer`` / ``attn_layer`` factories that
``create_model`` passes on (:class:`MLiT`): by default the MoE feed-forward's options (k, gate noise, loss weights,
expert dropout and matmul) are set once in a ``functools.partial`` (``MLiT.mlp_layer``, which the MAE decoder reuses)
and every :class:`~timm_mlit.layers.MoEBlock` gets it as ``mlp_layer``, with grouped-query attention as
``attn_layer``.

A training forward leaves the MoE balancing loss of mLiT Eq. 12 in the MoE layers: add ``model.moe_loss()`` (or
``timm_mlit.moe_loss(model)`` / ``timm_mlit.layers.aux_losses(model)['moe_loss']`` for wrapped models) to the
classification loss; timm's train.py does it by itself once timm_mlit is imported (``timm_mlit.training``).
"""
import logging
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerType, calculate_drop_path_rates, get_norm_layer
from timm.models import register_model

from timm_mlit.argtypes import check_model_kwargs
from timm_mlit.layers import GroupedQueryAttention, MoEBlock, MoEFeedForward, NoisyTopKGate, SharedSwiGLUExperts, \
    expert_load, moe_loss
from ._dummy_patch_vit import DummyPatchViT, block_count, build_dummy_patch_vit, zoo_cfg, filter_checkpoint
from ._dummy_patch_vit import given_options
from ._pretrained_tags import PretrainedTag, register_tags

__all__ = ['MLiT', 'hidden_sizes', 'experts_per_layer', 'MODELS', 'TAGS', 'DEFAULT_TAG', 'ENCODER_TAG']

_logger = logging.getLogger(__name__)

def hidden_sizes(depth: int, first: int, last: int) -> List[int]:
    """mLiT Eq. 15: d_h of layer i = floor(((L-1) - i) / (L-1) * (first - last)) + last."""
    if depth == 1:
        return [first]
    return [((depth - 1 - i) * (first - last)) // (depth - 1) + last for i in range(depth)]


def experts_per_layer(depth: int, stages: Sequence[int]) -> List[int]:
    """Experts added in equal stages (mLiT Figure 4): stages (3, 4, 5) over 9 layers -> 3,3,3,4,4,4,5,5,5."""
    return [stages[i * len(stages) // depth] for i in range(depth)]


class MLiT(DummyPatchViT):
    """mLiT encoder with a classifier head, in timm's model API.

    Layers are composed as in timm's ``VisionTransformer``, from three factories that ``create_model`` passes on:

    * ``block_fn`` (default :class:`~timm_mlit.layers.MoEBlock`): called once per layer i as ``block_fn(dim=m,
      num_heads=H, hidden_dim=d_h[i], num_experts=t[i], qkv_bias=..., proj_bias=..., attn_drop=..., proj_drop=...,
      drop_path=..., norm_layer=..., attn_layer=..., mlp_layer=..., device=..., dtype=...)`` and then on (B, N, m)
      tokens. d_h[i] is layer i's hidden size (mLiT Eq. 15, :func:`hidden_sizes`) and t[i] its expert count (mLiT
      Figure 4, :func:`experts_per_layer`).
    * ``mlp_layer``: the block calls it as ``mlp_layer(in_features=m, hidden_features=d_h[i], num_experts=t[i],
      device=..., dtype=...)`` (timm ``Block``'s keywords), passing ``num_experts`` only to a callable that takes it
      (that keyword or ``**kwargs``); the module maps (B, N, m) to (B, N, m). Default: ``partial(MoEFeedForward,
      gate_layer=partial(NoisyTopKGate, ...), experts_layer=partial(SharedSwiGLUExperts, ...))`` from the MoE
      options below. A custom one carries its own options, e.g. ``partial(MoEFeedForward, gate_layer=...)``, or a
      dense ``timm.layers.Mlp`` / ``SwiGLU`` (called without ``num_experts``). A training forward's auxiliary loss
      is collected from modules that record one (:func:`timm_mlit.layers.aux_losses`).
    * ``attn_layer``: the block calls it as ``attn_layer(m, num_heads=H, qkv_bias=..., proj_bias=..., attn_drop=...,
      proj_drop=..., device=..., dtype=...)``, then on (B, N, m) tokens. Default: ``partial(GroupedQueryAttention,
      num_kv_heads=num_kv_heads)``; timm's ``Attention`` fits too.

    The MoE options (``top_k``, ``gate_noise_eps``, ``moe_importance_weight``, ``moe_load_weight``,
    ``moe_cv_squared`` of :class:`~timm_mlit.layers.NoisyTopKGate`; ``expert_drop_rate``, ``expert_drop_mode``,
    ``expert_matmul`` of :class:`~timm_mlit.layers.SharedSwiGLUExperts`) have the layers' names, defaults and checks:
    None (not given) keeps the layer's default, and a value the layer refuses raises there, naming the option. They
    build the default ``mlp_layer`` only; given with a custom ``mlp_layer`` they are refused (set them in it).
    """

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
            top_k: Optional[int] = None,
            expert_drop_rate: Optional[float] = None,
            expert_drop_mode: Optional[str] = None,
            expert_matmul: Optional[str] = None,
            gate_noise_eps: Optional[float] = None,
            moe_importance_weight: Optional[float] = None,
            moe_load_weight: Optional[float] = None,
            moe_cv_squared: Optional[bool] = None,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            block_fn: Callable[..., nn.Module] = MoEBlock,
            mlp_layer: Optional[Callable[..., nn.Module]] = None,
            attn_layer: Optional[Callable[..., nn.Module]] = None,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
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
            num_kv_heads: Key/value heads (attention groups) G of the default ``attn_layer``.
            hidden_dims: (d_h of the first layer, d_h of the last layer), interpolated by mLiT Eq. 15.
            expert_stages: Experts per layer in each of the equal stages.
            top_k: Experts chosen per token, k (NoisyTopKGate: 2, the paper's).
            expert_drop_rate: Dropout on expert outputs (SharedSwiGLUExperts: 0.1, the paper's). Separate from
                ``drop_rate``, which timm's train.py always sets from ``--drop``.
            expert_drop_mode: 'expert' drops each chosen expert's output (the paper, the default); 'combined'
                drops the gate-weighted sum once (cheaper, same expectation).
            expert_matmul: 'auto' (default), 'grouped' or 'dense': how the experts' x W_i + b_i are computed,
                same weights and results (SharedSwiGLUExperts).
            gate_noise_eps: Added to the gate noise std (NoisyTopKGate: the reference code's 1e-2).
            moe_importance_weight: w_importance (mLiT Eq. 11; NoisyTopKGate: 1e-2).
            moe_load_weight: w_load (mLiT Eq. 10; NoisyTopKGate: 1e-2).
            moe_cv_squared: Use CV² (Shazeer, reference code) instead of the paper's CV (the default) in the MoE
                loss.
            qkv_bias: Bias in the attention q/k/v projections.
            proj_bias: Bias in the attention output projection.
            drop_rate: Classifier (head) dropout.
            pos_drop_rate: Dropout after the position embedding.
            attn_drop_rate: Attention-weight dropout.
            proj_drop_rate: Dropout after the attention projection.
            drop_path_rate: Stochastic depth rate (not in the paper).
            norm_layer: Normalization layer (LayerNorm).
            block_fn: The encoder layer (class docstring).
            mlp_layer: The feed-forward of each layer (class docstring); None builds the MoE one from the options.
            attn_layer: The attention of each layer (class docstring); None: grouped-query attention.
            dynamic_img_size: Accept any image size, resampling the position table to its grid (timm's ViT option).
            dynamic_img_pad: With ``dynamic_img_size``, pad images whose sides are not multiples of the patch.
        """
        check_model_kwargs(dict(attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate,
                                drop_path_rate=drop_path_rate), type(self).__name__)
        dd = {'device': device, 'dtype': dtype}
        norm_layer = get_norm_layer(norm_layer) or nn.LayerNorm
        hidden = hidden_sizes(depth, *hidden_dims)
        experts = experts_per_layer(depth, expert_stages)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        # the MoE feed-forward's options (mLiT Sec. 2.1.2), each passed only when given: the layers own the defaults
        gate_args = given_options(
            top_k=top_k, gate_noise_eps=gate_noise_eps, moe_importance_weight=moe_importance_weight,
            moe_load_weight=moe_load_weight, moe_cv_squared=moe_cv_squared)
        experts_args = given_options(
            expert_drop_rate=expert_drop_rate, expert_drop_mode=expert_drop_mode, expert_matmul=expert_matmul)
        if mlp_layer is None:
            mlp_layer = partial(
                MoEFeedForward,
                gate_layer=partial(NoisyTopKGate, **gate_args),
                experts_layer=partial(SharedSwiGLUExperts, **experts_args),
            )
        elif gate_args or experts_args:
            raise ValueError(
                f'{", ".join({**gate_args, **experts_args})}: MoE options of the default mlp_layer, but a custom '
                f'mlp_layer was given ({mlp_layer!r}). Set them in it, e.g. mlp_layer=partial(MoEFeedForward, '
                f'gate_layer=partial(NoisyTopKGate, top_k=1), experts_layer=partial(SharedSwiGLUExperts, '
                f'expert_drop_rate=0.2)), or drop the custom mlp_layer.')
        if attn_layer is None:
            attn_layer = partial(GroupedQueryAttention, num_kv_heads=num_kv_heads)
        # every layer gets the same factories and only its own d_h (mLiT Eq. 15) and expert count (mLiT Figure 4)
        make_block = lambda i: block_fn(
            dim=embed_dim,
            num_heads=num_heads,
            hidden_dim=hidden[i],
            num_experts=experts[i],
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate,
            drop_path=dpr[i],
            norm_layer=norm_layer,
            attn_layer=attn_layer,
            mlp_layer=mlp_layer,
            **dd,
        )
        super().__init__(
            make_block,
            depth,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            patch_bias=False,  # no bias: the all-zero dummy patch embeds to exactly 0
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            norm_layer=norm_layer,
            dynamic_img_size=dynamic_img_size,
            dynamic_img_pad=dynamic_img_pad,
            **dd,
        )
        self.hidden_dims = hidden
        self.num_experts = experts
        self.mlp_layer = mlp_layer  # the layers' feed-forward factory, for modules built around the encoder (MAE)
        self.init_weights(needs_reset=False)

    @torch.jit.ignore
    def moe_loss(self) -> torch.Tensor:
        """L of mLiT Eq. 12 summed over the layers, from the last training forward (``aux_losses(self)
        ['moe_loss']``, :func:`timm_mlit.layers.aux_losses`); 0 after an eval forward."""
        return moe_loss(self)

    @torch.jit.ignore
    def expert_load(self) -> Dict[str, torch.Tensor]:
        """Share of the last forward's routed token slots per expert, per layer."""
        return expert_load(self)


def _describe_mlit(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """'mLiT with embed_dim=E and N blocks', or None for a state dict that is not an mLiT's."""
    if 'pos_embed' not in state_dict or 'blocks.0.mlp.gate.w_gate.weight' not in state_dict:
        return None
    return f'an mLiT with embed_dim={state_dict["pos_embed"].shape[-1]} and {block_count(state_dict)} blocks'


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: MLiT,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model`` (:func:`~timm_mlit.models._dummy_patch_vit.filter_checkpoint`)."""
    return filter_checkpoint(
        state_dict, model, _describe_mlit, family='an mLiT',
        hint='mlit_s: embed_dim 144, 15 blocks; mlit_xs: 128, 12; mlit_xxs: 108, 9',
        interpolation=interpolation, antialias=antialias)


def _create_mlit(variant: str, pretrained: bool = False, **kwargs) -> MLiT:
    return build_dummy_patch_vit(MLiT, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return zoo_cfg(
        url, paper_ids='arXiv:2407.17783', paper_name='How Lightweight Can A Vision Transformer Be', **kwargs)


# --- pretrained tags: one Hub repo per model.tag, each a record of what the weights are (Tables 3-8), the data, and
# its recipe (config file, epochs, the MAE encoder it fine-tunes); timm_mlit/models/_pretrained_tags.py holds their
# states (none is published or staged yet) and gives each cfg its weights where they exist; timm_mlit.hub stages,
# cards and publishes them.
MODELS = ('mlit_s', 'mlit_xs', 'mlit_xxs')
DEFAULT_TAG = 'mae_c100_ft_c100_300e'  # the paper's headline classifier (Table 7)
ENCODER_TAG = 'mae_c100'  # the MAE encoder the mmLiT tags fine-tune (Table 3)


def _finetuned(tag: str, dataset: str, num_classes: int, config: str, description: str, epochs: int = 100):
    return PretrainedTag(tag, dataset, num_classes, description, config=config, epochs=epochs, encoder=ENCODER_TAG)


def _scratch(tag: str, dataset: str, num_classes: int, config: str, description: str):
    return PretrainedTag(tag, dataset, num_classes, description, config=config, epochs=100)


TAGS: Dict[str, PretrainedTag] = {t.tag: t for t in [
    _finetuned('mae_c100_ft_c100_300e', 'cifar100', 100, 'table4_finetune_cifar100',
               'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-100 for 300 epochs (Tables 4 and 7).',
               epochs=300),
    PretrainedTag(ENCODER_TAG, 'cifar100', 0,
                  'mmLiT encoder: masked-autoencoder pre-training on CIFAR-100 (Table 3), no classifier head.',
                  kind='mae', checkpoint='encoder.safetensors'),
    _finetuned('mae_c100_ft_c100', 'cifar100', 100, 'table5_transfer_cifar100',
               'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-100 for 100 epochs (Tables 5 and 8).'),
    _finetuned('mae_c100_ft_c10', 'cifar10', 10, 'table5_transfer_cifar10',
               'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-10 for 100 epochs (Tables 5 and 8).'),
    _finetuned('mae_c100_ft_svhn', 'svhn', 10, 'table5_transfer_svhn',
               'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on SVHN for 100 epochs (Tables 5 and 8).'),
    _finetuned('mae_c100_ft_flowers102', 'flowers102', 102, 'table5_transfer_flowers102',
               'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on Flowers102 for 100 epochs (Tables 5 and 8).'),
    _scratch('c100', 'cifar100', 100, 'table6_scratch_cifar100',
             'mLiT trained from scratch on CIFAR-100 for 100 epochs (Tables 6 and 8).'),
    _scratch('c10', 'cifar10', 10, 'table6_scratch_cifar10',
             'mLiT trained from scratch on CIFAR-10 for 100 epochs (Tables 6 and 8).'),
    _scratch('svhn', 'svhn', 10, 'table6_scratch_svhn',
             'mLiT trained from scratch on SVHN for 100 epochs (Tables 6 and 8).'),
    _scratch('flowers102', 'flowers102', 102, 'table6_scratch_flowers102',
             'mLiT trained from scratch on Flowers102 for 100 epochs (Tables 6 and 8).'),
]}

# every model.tag above; the default tag first (the paper's headline CIFAR-100 classifier, Table 7); weights only
# where they load (published: the Hub repo; staged, in a clone: the staged folder)
default_cfgs = register_tags(MODELS, TAGS, DEFAULT_TAG, _cfg)


@register_model
def mlit_s(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-S (mLiT Table 1): m 144, 15 layers, d_h 144->72, 8 heads / 4 groups, experts 3-5, k 2; 2.36M params."""
    model_args = dict(
        embed_dim=144, depth=15, num_heads=8, num_kv_heads=4, hidden_dims=(144, 72), expert_stages=(3, 4, 5))
    return _create_mlit('mlit_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mlit_xs(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-XS (mLiT Table 1): m 128, 12 layers, d_h 96->32, 8 heads / 4 groups, experts 3-5, k 2; 1.21M params."""
    model_args = dict(
        embed_dim=128, depth=12, num_heads=8, num_kv_heads=4, hidden_dims=(96, 32), expert_stages=(3, 4, 5))
    return _create_mlit('mlit_xs', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mlit_xxs(pretrained: bool = False, **kwargs) -> MLiT:
    """mLiT-XXS (mLiT Table 1): m 108, 9 layers, d_h 81->27, 6 heads / 3 groups, experts 3-5, k 2; 0.66M params."""
    model_args = dict(
        embed_dim=108, depth=9, num_heads=6, num_kv_heads=3, hidden_dims=(81, 27), expert_stages=(3, 4, 5))
    return _create_mlit('mlit_xxs', pretrained=pretrained, **dict(model_args, **kwargs))
