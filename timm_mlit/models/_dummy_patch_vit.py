"""The ViT skeleton the zoo's models share: patch stem, one learned prefix token (the papers' dummy patch), encoder
blocks, final norm, classifier, in timm's model API (``forward_features`` / ``forward_head`` /
``forward_intermediates`` / ``prune_intermediate_layers`` / ``group_matcher`` / ``reset_classifier``).

The dummy patch (mLiT Sec. 2.1, Mae-ViT-C100): an all-zero patch joins every image. With a bias-free patch
projection its embedding is exactly its position embedding ``pos_embed[0]``, so the prefix token *is*
``pos_embed[0]``: timm's class token and its position merged into one learned vector. It sits first (timm's
prefix-token place) and its output is what the classifier reads (``global_pool='token'``). With a biased
projection (Mobile V-MoE's standard ViT stem) the same vector plays the class token.

Subclasses give the blocks (``make_block(i) -> nn.Module``); models whose blocks need more than ``x`` override
``_run_blocks`` (and that is all forward_features / forward_intermediates need).

``dynamic_img_size=True`` (timm's ViT option) accepts any image size at run time: the patch grid's positions are
resampled from the table with ``timm.layers.resample_abs_pos_embed`` (bicubic, as timm's ViT), the dummy patch's
entry ``pos_embed[0]`` is kept as it is (it is a prefix token, not a grid position). At the trained size the table is
used unchanged, so outputs are identical to a fixed-size model's. ``dynamic_img_pad=True`` also pads images whose
sides are not a multiple of the patch size.
"""
import functools
import logging
import math
import sys
from typing import Any, Callable, Dict, Final, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerType, PatchEmbed, get_norm_layer, resample_abs_pos_embed, resample_patch_embed, \
    trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import global_pool_nlc

from timm_mlit.argtypes import check_img_size, check_model_kwargs
from timm_mlit.layers._tracing import is_graph_capture
from ._load_errors import CheckpointMismatchError, check_data_config, check_tag, explain_load_error, \
    no_weights_error

__all__ = ['DummyPatchViT', 'GLOBAL_POOLS', 'filter_checkpoint', 'block_count', 'build_dummy_patch_vit', 'zoo_cfg',
           'family_filter_fn', 'given_options']

_logger = logging.getLogger(__name__)

GLOBAL_POOLS = ('', 'token', 'avg', 'max', 'avgmax')


def _check_input_dtype(x: torch.Tensor, weight_dtype: torch.dtype, name: str) -> None:
    """Refuse integer images (raw uint8 pixels) and a float type other than the weights' outside autocast,
    which would otherwise end in the patch projection's bare 'expected scalar type ...'."""
    if x.is_floating_point() and (x.dtype == weight_dtype or torch.is_autocast_enabled(x.device.type)):
        return
    if not x.is_floating_point():
        fix = (f'Normalise the images first: timm.data.create_transform(**timm.data.resolve_data_config({{}}, '
               f'model=model)) turns PIL images into {weight_dtype} tensors with the model\'s mean and std '
               f'(for a uint8 batch: (x.float() / 255 - mean) / std).')
    else:
        fix = f'Cast the batch with x.to({weight_dtype}), cast the model with model.to({x.dtype}), or run ' \
              f'under torch.autocast.'
    raise TypeError(
        f'{name} expects a floating-point image batch of its weights\' dtype {weight_dtype}; got a '
        f'{x.dtype} tensor. {fix}')


def _check_dynamic_input(x: torch.Tensor, in_chans: int, patch_size: Tuple[int, int], pad: bool, name: str) -> None:
    """With ``dynamic_img_size`` any (B, in_chans, H, W) of at least one patch is fine (H and W multiples of the patch
    size unless ``dynamic_img_pad``)."""
    (ph, pw), c = patch_size, in_chans
    if x.ndim == 4 and x.shape[1] == c and x.shape[2] >= ph and x.shape[3] >= pw and (
            pad or (x.shape[2] % ph == 0 and x.shape[3] % pw == 0)):
        return
    sides = 'of any size (dynamic_img_pad pads them)' if pad else f'whose sides are multiples of the {ph}x{pw} patch'
    raise ValueError(
        f'{name} (dynamic_img_size=True) expects a batch of {c}-channel images {sides}, a tensor shaped '
        f'(B, {c}, H, W); got shape {tuple(x.shape)}. Resize or crop the images to such a size'
        f'{"" if pad else ", or create the model with dynamic_img_pad=True to pad them"}.'
    )


def given_options(**options: Any) -> Dict[str, Any]:
    """The options that were given (not None): a model passes only these to the layer that declares their defaults
    and checks them."""
    return {k: v for k, v in options.items() if v is not None}


class DummyPatchViT(nn.Module):
    """Patch stem + dummy patch + ``blocks`` + norm + head. See the module docstring."""
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            make_block: Callable[[int], nn.Module],
            depth: int,
            *,
            img_size: Union[int, Tuple[int, int]],
            patch_size: int,
            embed_dim: int,
            num_classes: int,
            in_chans: int = 3,
            global_pool: str = 'token',
            patch_bias: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}.')
        name = type(self).__name__
        check_model_kwargs(dict(drop_rate=drop_rate, pos_drop_rate=pos_drop_rate), name)
        check_img_size(img_size, patch_size, f'{name}(img_size={img_size!r}, patch_size={patch_size!r})',
                       padded=dynamic_img_pad)
        norm_layer = get_norm_layer(norm_layer) or nn.LayerNorm

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1  # the dummy patch
        self.grad_checkpointing = False
        self.dynamic_img_size = dynamic_img_size

        embed_args = {}
        if dynamic_img_size:
            # flatten after the position table is resampled to the grid (timm's ViT does the same)
            embed_args.update(dict(strict_img_size=False, output_fmt='NHWC'))
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, bias=patch_bias,
            dynamic_img_pad=dynamic_img_pad, **embed_args, **dd)
        num_patches = self.patch_embed.num_patches
        reduction = self.patch_embed.feat_ratio()
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.blocks = nn.Sequential(*[make_block(i) for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def init_weights(self, needs_reset: bool = True) -> None:
        """Position table trunc-normal(0.02) like timm's ViT; every other layer its own ``reset_parameters``.

        ``needs_reset=True`` re-runs each layer's ``reset_parameters`` too, e.g. after ``to_empty()`` from meta.
        """
        if needs_reset:
            # children before parents, so a parent's own init (e.g. zero gates) has the last word
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
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}.')
            self.global_pool = global_pool
        dd = {'device': self.pos_embed.device, 'dtype': self.pos_embed.dtype}
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse input the model would silently mis-read: it needs (B, in_chans, H, W) at its image size."""
        if is_graph_capture():
            return
        name = getattr(self, 'pretrained_cfg', {}).get('architecture', type(self).__name__)
        if self.dynamic_img_size:
            _check_dynamic_input(x, self.in_chans, self.patch_embed.patch_size, self.patch_embed.dynamic_img_pad, name)
            _check_input_dtype(x, self.patch_embed.proj.weight.dtype, name)
            return
        expected = (self.in_chans, *self.patch_embed.img_size)
        if x.ndim == 4 and tuple(x.shape[1:]) == expected:
            _check_input_dtype(x, self.patch_embed.proj.weight.dtype, name)
            return
        c, h, w = expected
        raise ValueError(
            f'{name} expects a batch of {c}-channel {h}x{w} images, a tensor shaped (B, {c}, {h}, {w}); '
            f'got shape {tuple(x.shape)}. Resize the images with the transform timm builds for the model '
            f'(timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))), or create the model '
            f'with img_size=/in_chans= matching your data.'
        )

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch embeddings plus their positions, (B, num_patches, D), without the dummy patch.

        With ``dynamic_img_size`` the positions of the trained grid are resampled to the image's grid (the
        dummy patch's entry is a prefix token and is left out of the resampling)."""
        self._check_input(x)
        x = self.patch_embed(x)
        if self.dynamic_img_size:
            B, H, W, C = x.shape
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=(H, W),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
            )
            return x.reshape(B, H * W, C) + pos_embed[:, self.num_prefix_tokens:]
        return x + self.pos_embed[:, self.num_prefix_tokens:]

    def add_dummy_patch(self, x: torch.Tensor) -> torch.Tensor:
        """Put the dummy patch first; its embedding is pos_embed[0] (see the module docstring)."""
        dummy = self.pos_embed[:, :self.num_prefix_tokens].expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([dummy, x], dim=1))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_dummy_patch(self.embed_patches(x))

    def _run_blocks(self, x: torch.Tensor, take_indices: List[int], max_index: int) -> Tuple[
            torch.Tensor, List[torch.Tensor]]:
        """Run blocks 0..max_index (all if < 0), returning the last output and the outputs of the blocks in
        ``take_indices``. Subclasses with more than ``blocks`` override this."""
        return self._run_sequential_blocks(x, take_indices, max_index)

    def _run_sequential_blocks(self, x: torch.Tensor, take_indices: List[int], max_index: int) -> Tuple[
            torch.Tensor, List[torch.Tensor]]:
        """``_run_blocks`` over ``self.blocks`` (a method of its own: TorchScript has no ``super()``)."""
        intermediates = []
        if torch.jit.is_scripting() or max_index < 0:
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(x)
        return x, intermediates

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
        take_indices, max_index = feature_take_indices(self.num_blocks(), indices)

        B, (height, width) = x.shape[0], x.shape[-2:]
        x = self._embed(x)
        x, intermediates = self._run_blocks(x, take_indices, max_index if stop_early else -1)
        if norm:
            intermediates = [self.norm(y) for y in intermediates]
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

    @torch.jit.ignore
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _prune_blocks(self, max_index: int) -> None:
        self.blocks = self.blocks[:max_index + 1]

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last intermediate asked for (and the norm / head if asked)."""
        take_indices, max_index = feature_take_indices(self.num_blocks(), indices)
        self._prune_blocks(max_index)
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


def _unwrap(state_dict: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(
            f'This checkpoint holds a {type(state_dict).__name__}, not a state dict (a mapping of parameter names to '
            f'tensors). Pass a file saved from model.state_dict(), a train.py checkpoint or a safetensors file.')
    for key in ('model', 'state_dict', 'model_ema', 'state_dict_ema'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    out = {k[len('module.'):] if isinstance(k, str) and k.startswith('module.') else k: v
           for k, v in state_dict.items()}
    bad = [str(k) for k, v in out.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(
            f'This checkpoint is not a state dict: {len(bad)} entries are not named tensors ({_names(bad)}). Pass '
            f'a file saved from model.state_dict(), a train.py checkpoint or a safetensors file.')
    return out


def _names(keys: List[str], limit: int = 6) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def _is_head(key: str) -> bool:
    return key.startswith('head.')


def _fit_head(out: Dict[str, torch.Tensor], model: 'DummyPatchViT') -> None:
    """The classifier is the one part a checkpoint may lack or have at another size (fine-tuning to new classes):
    the model then keeps its newly initialised head, and says so. A headless model drops a checkpoint's head."""
    own = {f'head.{k}': v for k, v in model.head.state_dict().items()}
    theirs = {k: v for k, v in out.items() if _is_head(k)}
    if not own:
        if theirs:
            _logger.info(f'The model has no classifier (num_classes=0): ignoring the checkpoint\'s '
                         f'{theirs.get("head.weight", next(iter(theirs.values()))).shape[0]}-class head.')
            for k in theirs:
                del out[k]
        return
    if not theirs:
        # a headless encoder (MAE export): the model keeps its freshly initialised head, everything else loads
        _logger.info('Checkpoint has no classifier head: keeping the model\'s newly initialised head.')
    elif set(theirs) != set(own) or any(theirs[k].shape != v.shape for k, v in own.items()):
        got = theirs.get('head.weight')
        got = f'{got.shape[0]}-class' if got is not None and got.ndim == 2 else 'incompatible'
        _logger.warning(f'The checkpoint\'s {got} classifier does not fit the model\'s {model.num_classes} classes: '
                        f'keeping the model\'s newly initialised head (everything else loads).')
    else:
        return
    for k in theirs:
        del out[k]
    out.update(own)


def _check_complete(
        out: Dict[str, torch.Tensor], model: 'DummyPatchViT', adapted_later: Set[str] = frozenset()) -> None:
    """Every weight but the classifier's must come from the checkpoint, at the model's shape, as finite floating
    point numbers: timm loads non-strictly when num_classes differs from the file's, which would otherwise keep
    random weights unnoticed, and copies NaN or integer tensors without a word. ``adapted_later`` names the weights
    whose shape timm's ``load_pretrained`` changes after the filter (the first conv: :func:`_first_conv_to_adapt`)."""
    own = model.state_dict()
    missing = [k for k in own if k not in out and not _is_head(k)]
    unexpected = [k for k in out if k not in own and not _is_head(k)]
    wrong = [f'{k} {tuple(out[k].shape)} (model: {tuple(v.shape)})' for k, v in own.items()
             if k in out and not _is_head(k) and k not in adapted_later and out[k].shape != v.shape]
    not_float = [f'{k} ({out[k].dtype})' for k, v in own.items()
                 if k in out and v.is_floating_point() and not out[k].is_floating_point()]
    not_finite = [k for k in own if k in out and out[k].is_floating_point() and not torch.isfinite(out[k]).all()]
    problems = []
    if not_float:
        problems.append(f'{len(not_float)} weights are not floating point: {_names(not_float, 4)}')
    if not_finite:
        problems.append(f'{len(not_finite)} weights hold NaN or infinite values ({_names(not_finite)}): the run '
                        f'that wrote them diverged')
    if missing:
        problems.append(f'it lacks {len(missing)} of the model\'s {len(own)} weights ({_names(missing)})')
    if unexpected:
        problems.append(f'it has {len(unexpected)} weights the model does not ({_names(unexpected)})')
    if wrong:
        problems.append(f'{len(wrong)} weights have another shape: {_names(wrong, 4)}')
    if problems:
        raise CheckpointMismatchError(
            f'This checkpoint does not fit the model: {"; ".join(problems)}. Only the classifier (head.*) may be '
            f'missing or of another size. Load a complete checkpoint of this architecture, or create the model '
            f'with the arguments it was trained with.')


def _first_conv_to_adapt(key: str, weight: torch.Tensor, model: 'DummyPatchViT') -> bool:
    """Whether ``weight`` is the patch projection of a checkpoint with the pretrained cfg's channel count
    (``input_size[0]``, RGB) for a model created with another ``in_chans`` (1 for grayscale, 4 for RGB+X, ...).

    timm's ``load_pretrained`` applies the filter first and then ``timm.models.adapt_input_conv`` to the weight named
    by ``pretrained_cfg['first_conv']`` (1 channel: the sum over RGB; C channels: RGB repeated and scaled by 3 / C):
    timm 1.0.24-1.0.28 whenever ``in_chans != 3``, timm 1.0.31 when the shapes differ. So the filter leaves that
    weight at the file's channel count: adapting it here would make timm 1.0.24-1.0.28 adapt it again (and drop a
    4-channel weight as unconvertible, loading a random one). A direct ``model.load_state_dict(checkpoint_filter_fn(
    ...))`` does not adapt it, as with timm's own filters."""
    own = model.patch_embed.proj.weight
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    source_chans = (cfg.get('input_size') or (3,))[0]
    return (key == 'patch_embed.proj.weight' and cfg.get('first_conv', 'patch_embed.proj') == 'patch_embed.proj'
            and weight.ndim == 4 and weight.shape[0] == own.shape[0] and weight.shape[1] == source_chans
            and own.shape[1] != source_chans)


def filter_checkpoint(
        state_dict: Dict[str, Any],
        model: DummyPatchViT,
        describe: Callable[[Dict[str, torch.Tensor]], Optional[str]],
        family: str,
        hint: str,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: unwrap training-checkpoint containers and DDP prefixes, refuse weights of
    another architecture with a message that says what they are, resample the position table and patch projection
    when the image or patch size differs, give a headless encoder (an MAE export) or a checkpoint with another
    number of classes the model's own new head, and refuse a checkpoint that lacks any other weight, has weights
    the model does not, or has them at another shape (naming them). The caller names the file. A model created with
    another ``in_chans`` than the file's RGB gets the file's patch projection unchanged: timm's ``load_pretrained``
    adapts it next, as for its own models (:func:`_first_conv_to_adapt`).

    ``describe(state_dict)`` names the architecture a state dict was made for (None: not of ``family``);
    ``hint`` says which model to create instead.
    """
    state_dict = _unwrap(state_dict)
    got, want = describe(state_dict), describe(model.state_dict())
    if got is None:
        sample = ', '.join(list(state_dict)[:4])
        raise CheckpointMismatchError(
            f'This checkpoint is not {family} encoder (its first keys are: {sample}). Load it into the model it was '
            f'trained for, or pass {family} checkpoint.')
    if got != want:
        raise CheckpointMismatchError(
            f'This checkpoint holds {got}, but the model is {want}. Create the matching model ({hint}) to load it.')

    out, adapted_later = {}, set()
    for k, v in state_dict.items():
        if k == 'patch_embed.proj.weight' and _first_conv_to_adapt(k, v, model):
            adapted_later.add(k)  # timm's load_pretrained adapts its channels after the filter
        if k == 'patch_embed.proj.weight' and v.ndim == 4 and v.shape[0] == model.patch_embed.proj.weight.shape[0] \
                and (k in adapted_later or v.shape[1] == model.patch_embed.proj.weight.shape[1]) \
                and v.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            v = resample_patch_embed(
                v, model.patch_embed.proj.weight.shape[-2:], interpolation=interpolation, antialias=antialias)
        elif k == 'pos_embed' and v.shape != model.pos_embed.shape and v.ndim == 3 \
                and v.shape[-1] == model.pos_embed.shape[-1]:
            num_patches = v.shape[1] - model.num_prefix_tokens
            side = int(math.sqrt(num_patches))
            if side * side == num_patches:  # else the shape check below names it
                v = resample_abs_pos_embed(
                    v,
                    new_size=model.patch_embed.grid_size,
                    old_size=(side, side),
                    num_prefix_tokens=model.num_prefix_tokens,
                    interpolation=interpolation,
                    antialias=antialias,
                )
        out[k] = v
    _fit_head(out, model)
    _check_complete(out, model, adapted_later)
    return out


def block_count(state_dict: Dict[str, torch.Tensor], prefix: str = 'blocks.') -> int:
    return len({k[len(prefix):].split('.')[0] for k in state_dict if k.startswith(prefix)})


def build_dummy_patch_vit(
        model_cls: type, variant: str, pretrained: bool, filter_fn: Callable, **kwargs) -> DummyPatchViT:
    """``build_model_with_cfg`` as every family here calls it: its checkpoint filter, features through
    ``forward_intermediates`` (feature_cls 'getter'). An unknown tag is refused listing the valid ones. With
    ``pretrained=True``, a cfg without weights (a tag that is a recipe) is refused with the ways to get them, where
    timm would build a random model with a warning; a data config that cannot be right (std <= 0, mean/std of the
    wrong length, num_classes out of range) is refused; and an error about the weights (missing, offline, corrupt,
    of another model) becomes a :class:`~timm_mlit.models._load_errors.PretrainedWeightsError` naming the file or
    repo and the fix.

    ``num_classes`` other than the cfg's: timm would drop the file's classifier whatever its size. Here the filter
    decides instead (the cfg's num_classes is set to the model's for the load, then put back): a file whose head has
    the asked-for classes keeps it, any other head is replaced by a new one with a warning naming both counts."""
    out_indices = kwargs.pop('out_indices', 3)
    check_tag(variant, kwargs.get('pretrained_cfg'))
    build = functools.partial(
        build_model_with_cfg,
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )
    if not pretrained:
        return build()
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    missing = no_weights_error(variant, cfg)
    if missing is not None:
        raise missing
    check_data_config(cfg, _cfg_source(variant, cfg))
    asked = kwargs.get('num_classes')
    if asked is not None and asked != cfg.get('num_classes') and not kwargs.get('features_only'):
        # let the filter (_fit_head) judge the file's head against the model's, not the cfg's class count
        overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, num_classes=asked)
        build = functools.partial(build, pretrained_cfg_overlay=overlay)
        build = functools.partial(_restore_num_classes, build, cfg.get('num_classes'))
    try:
        return build()
    except Exception as e:  # say which weights failed and what to do, for the errors that are about the weights
        explained = explain_load_error(variant, cfg, e)
        if explained is None:
            raise
        raise explained from e


def _cfg_source(variant: str, cfg: Dict[str, Any]) -> str:
    if cfg.get('source') == 'local-dir':
        return f"config.json of local-dir:{cfg.get('file')}"
    if cfg.get('source') == 'hf-hub':
        return f"config.json of hf-hub:{cfg.get('hf_hub_id')}"
    return f"the pretrained cfg of {variant}{'.' + cfg['tag'] if cfg.get('tag') else ''}"


def _restore_num_classes(build: Callable[[], nn.Module], num_classes: Optional[int]) -> nn.Module:
    model = build()
    cfg = getattr(model, 'pretrained_cfg', None)
    if isinstance(cfg, dict):  # the weights' class count, as timm records it
        cfg['num_classes'] = num_classes
    return model


def family_filter_fn(model: nn.Module) -> Optional[Callable]:
    """The checkpoint filter of ``model``'s family: the ``checkpoint_filter_fn`` beside its class (timm's convention
    for model files), the one ``timm.create_model(..., pretrained=True)`` applies. None for a class without one."""
    return getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)


def zoo_cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    """A model family's default cfg; the defaults are the papers' 36x36 CIFAR setting (mean = std = 0.5, no crop,
    bicubic, 100 classes)."""
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
        **kwargs,
    }
