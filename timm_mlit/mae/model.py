"""mmLiT: the masked autoencoder around an mLiT encoder (mLiT Sec. 2.2, mLiT Figure 5, mLiT Table 2, mLiT Eq. 16).

Papers: "How Lightweight Can A Vision Transformer Be", arXiv:2407.17783 (mmLiT: mLiT Sec. 2.2, mLiT Figure 5,
mLiT Table 2 and the loss of mLiT Eq. 16), after "Masked Autoencoders Are Scalable Vision Learners" (He et al. 2021,
arXiv:2111.06377; MAE's random masking and decoder).

Read top to bottom, as facebookresearch/mae's ``models_mae.py``:

  1. patchify the normalised images; embed every patch with the encoder's projection and positions;
  2. per image, shuffle the 144 patches by random noise, keep 36 (mask ratio 0.75), remember how to restore;
  3. the encoder sees the dummy patch (always visible) and the kept patches;
  4. mask tokens take the masked places, the sequence is restored to image order (every position exactly once),
     positions are added and it is projected to the decoder's width;
  5. the decoder (mLiT Table 2: 4 MoE layers, width 108, d_h 72, 6 heads / 3 groups, 3 experts, k 2, dropout 0.1)
     predicts the 27 pixel values of every patch; the dummy patch is no target. Its MoE layers are built with the
     encoder's feed-forward factory (the encoder's ``mlp_layer``: k, gate noise, loss weights, expert dropout and
     matmul), so the decoder's layers differ from the encoder's only in width, heads, d_h and expert count;
  6. ``Loss = MSE_masked + α·MSE_unmasked + β·L_MoE`` (mLiT Eq. 16), α = 0.1, β = 0.5, L_MoE (mLiT Eq. 12, read
     through ``timm_mlit.layers.aux_losses``) over encoder and decoder.

Decoder positions: the paper's text says the decoder has no separate positional table of its own, unlike
Mae-ViT-C100 (its printed 0.34M decoder size fits one 145×108 table on top of ~0.32M). Default, the text:
``decoder_pos='encoder'`` adds the encoder's own table (width m) to the mask tokens before the projection to 108
(the visible tokens got it at the encoder's input); ``encoder_pos_to='all'`` adds it to every token instead.
``decoder_pos='separate'`` projects first and adds a learned 145×108 decoder table to all tokens (Mae-ViT-C100's way).

Targets are the normalised pixels themselves (mean = std = 0.5), not per-patch normalised: the paper's final
losses of ~0.02 fit that. Linear projections outside the encoder/decoder layers have no bias (mLiT Sec. 3).
"""
from functools import partial
from typing import Dict, NamedTuple, Optional

import torch
import torch.nn as nn
import timm
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from timm_mlit.layers import GroupedQueryAttention, MoEBlock, MoEFeedForward, aux_losses

__all__ = ['MaskedAutoencoder', 'MAEOutput', 'create_mae', 'patchify', 'unpatchify', 'random_masking']

DECODER_POS = ('encoder', 'separate')


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # mLiT Eq. 16
    pred: torch.Tensor  # (B, L, p·p·C) predicted pixels of every patch (normalised)
    mask: torch.Tensor  # (B, L) 1 where the patch was hidden from the encoder
    parts: Dict[str, torch.Tensor]  # mse_masked, mse_unmasked, moe_loss (detached, for logging)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p·p·C), patches in row-major order, values in (row, col, channel) order."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    return torch.einsum('nchpwq->nhwpqc', x).reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid."""
    B, L, _ = x.shape
    h = w = int(L ** 0.5)
    x = x.reshape(B, h, w, p, p, channels)
    return torch.einsum('nhwpqc->nchpwq', x).reshape(B, channels, h * p, w * p)


def random_masking(x: torch.Tensor, mask_ratio: float):
    """Per-image random masking by shuffling (MAE): keep ``round(L·(1 - ratio))`` patches of each image.

    Returns the kept tokens (B, L_keep, D), the mask (B, L; 1 = hidden) and ``ids_restore`` that puts a
    (kept + hidden) sequence back in image order.
    """
    B, L, D = x.shape
    len_keep = int(round(L * (1 - mask_ratio)))
    noise = torch.rand(B, L, device=x.device)
    ids_shuffle = noise.argsort(dim=1)  # ascending: small noise is kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, device=x.device)
    mask[:, :len_keep] = 0
    mask = mask.gather(1, ids_restore)
    return x_kept, mask, ids_restore


class MaskedAutoencoder(nn.Module):
    """An mLiT encoder (any model with ``embed_patches``, ``add_dummy_patch``, ``blocks``, ``norm``: mLiT,
    ``maevit_c100``) and the mmLiT decoder; ``decoder_num_experts=0`` makes the decoder dense (timm ViT blocks)."""

    def __init__(
            self,
            encoder: nn.Module,
            decoder_dim: int = 108,
            decoder_depth: int = 4,
            decoder_hidden_dim: int = 72,
            decoder_num_heads: int = 6,
            decoder_num_kv_heads: int = 3,
            decoder_num_experts: int = 3,
            decoder_pos: str = 'encoder',
            encoder_pos_to: str = 'mask',
            mask_ratio: float = 0.75,
            alpha: float = 0.1,
            beta: float = 0.5,
    ):
        super().__init__()
        if decoder_pos not in DECODER_POS:
            raise ValueError(f'decoder_pos must be one of {DECODER_POS}, got {decoder_pos!r}.')
        if encoder_pos_to not in ('mask', 'all'):
            raise ValueError(f"encoder_pos_to must be 'mask' or 'all', got {encoder_pos_to!r}.")
        self.encoder = encoder
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.in_chans = encoder.in_chans
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.mask_ratio = mask_ratio
        self.alpha = alpha
        self.beta = beta
        self.decoder_pos = decoder_pos
        self.encoder_pos_to = encoder_pos_to
        embed_dim = encoder.embed_dim
        num_positions = encoder.pos_embed.shape[1]

        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim, bias=False)
        self.decoder_pos_embed = (
            nn.Parameter(torch.zeros(1, num_positions, decoder_dim)) if decoder_pos == 'separate' else None)
        if decoder_num_experts > 0:
            # the encoder's feed-forward factory (mLiT's mlp_layer: its MoE settings); MoEFeedForward's own defaults
            # (the paper's) around an encoder without one
            mlp_layer = getattr(encoder, 'mlp_layer', MoEFeedForward)
            attn_layer = partial(GroupedQueryAttention, num_kv_heads=decoder_num_kv_heads)
            make_block = lambda: MoEBlock(
                dim=decoder_dim,
                num_heads=decoder_num_heads,
                hidden_dim=decoder_hidden_dim,
                num_experts=decoder_num_experts,
                attn_layer=attn_layer,
                mlp_layer=mlp_layer,
            )
        else:  # a dense decoder (for dense encoders such as maevit_c100): timm's ViT block, MLP of decoder_hidden_dim
            make_block = lambda: Block(
                dim=decoder_dim, num_heads=decoder_num_heads, mlp_ratio=decoder_hidden_dim / decoder_dim,
                qkv_bias=True, norm_layer=nn.LayerNorm)
        self.decoder_blocks = nn.Sequential(*[make_block() for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.in_chans, bias=False)
        trunc_normal_(self.mask_token, std=.02)
        if self.decoder_pos_embed is not None:
            trunc_normal_(self.decoder_pos_embed, std=.02)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'encoder.' + k for k in self.encoder.no_weight_decay()} | {'mask_token', 'decoder_pos_embed'}

    def decoder_param_count(self) -> int:
        """Everything that is not the encoder: mLiT Table 2 states 0.34M."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith('encoder.'))

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        x = self.encoder.embed_patches(imgs)  # (B, 144, m), positions added
        x, mask, ids_restore = random_masking(x, mask_ratio)
        x = self.encoder.add_dummy_patch(x)  # the dummy patch is always visible
        x = self.encoder.blocks(x)
        return self.encoder.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, n_prefix = x.shape[0], self.num_prefix_tokens
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(B, L + n_prefix - x.shape[1], -1)
        patches = torch.cat([x[:, n_prefix:], mask_tokens], dim=1)  # kept, then hidden
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # image order
        if self.decoder_pos == 'encoder':
            pos = self.encoder.pos_embed
            if self.encoder_pos_to == 'all':
                x = torch.cat([x[:, :n_prefix], patches], dim=1) + pos
            else:
                patches = patches + mask.unsqueeze(-1).to(patches.dtype) * pos[:, n_prefix:]
                x = torch.cat([x[:, :n_prefix], patches], dim=1)
            x = self.decoder_embed(x)
        else:
            x = self.decoder_embed(torch.cat([x[:, :n_prefix], patches], dim=1)) + self.decoder_pos_embed
        x = self.decoder_blocks(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, n_prefix:]  # the dummy patch is no target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        """mLiT Eq. 16 without the MoE term: mean squared error over the hidden patches plus α times over the seen
        ones."""
        target = patchify(imgs, self.patch_size)
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        mse_masked = (per_patch * mask).sum() / mask.sum()
        mse_unmasked = (per_patch * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        return mse_masked, mse_unmasked

    def forward(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None) -> MAEOutput:
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore, mask)
        mse_masked, mse_unmasked = self.forward_loss(imgs, pred, mask)
        l_moe = aux_losses(self).get('moe_loss')  # mLiT Eq. 12 of encoder and decoder layers, this forward
        l_moe = l_moe.to(mse_masked.device) if l_moe is not None else mse_masked.new_zeros(())  # none in eval
        loss = mse_masked + self.alpha * mse_unmasked + self.beta * l_moe  # mLiT Eq. 16
        parts = {'mse_masked': mse_masked.detach(), 'mse_unmasked': mse_unmasked.detach(), 'moe_loss': l_moe.detach()}
        return MAEOutput(loss, pred, mask, parts)


def create_mae(model_name: str, pretrained: bool = False, **kwargs) -> MaskedAutoencoder:
    """The masked autoencoder around ``timm.create_model(model_name, num_classes=0)``.

    ``kwargs`` starting with ``decoder_`` / naming the MAE's own options go to :class:`MaskedAutoencoder`;
    the rest to the encoder (e.g. ``img_size``, ``expert_drop_mode``).
    """
    mae_keys = {'decoder_pos', 'encoder_pos_to', 'mask_ratio', 'alpha', 'beta'}
    mae_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith('decoder_') or k in mae_keys}
    encoder = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
    for attr in ('embed_patches', 'add_dummy_patch', 'blocks', 'norm', 'pos_embed'):
        if not hasattr(encoder, attr):
            raise ValueError(f'{model_name} cannot be an MAE encoder here: it has no {attr!r}.')
    return MaskedAutoencoder(encoder, **mae_kwargs)
