"""The mmLiT masked autoencoder: masking, the decoder's input, mLiT Eq. 16, the decoder's size (Table 2)."""
import pytest
import torch

import timm_mlit  # noqa: F401
from timm_mlit.mae import create_mae, patchify, random_masking, unpatchify


def _imgs(b=4):
    return torch.randn(b, 3, 36, 36)


def test_patchify_round_trip_and_patch_content():
    imgs = _imgs(2)
    patches = patchify(imgs, 3)
    assert patches.shape == (2, 144, 27)
    assert torch.equal(unpatchify(patches, 3), imgs)
    assert torch.equal(patches[1, 13].reshape(3, 3, 3).permute(2, 0, 1), imgs[1, :, 3:6, 3:6])  # row 1, col 1


def test_36_of_144_patches_visible_per_image_and_different_per_image():
    torch.manual_seed(0)
    x = torch.arange(144.).view(1, 144, 1).expand(8, -1, 4)
    kept, mask, ids_restore = random_masking(x, 0.75)
    assert kept.shape == (8, 36, 4)
    assert mask.sum(1).eq(108).all()
    assert len({tuple(m.tolist()) for m in mask}) == 8
    for b in range(8):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[b, :, 0].long().tolist()) == torch.nonzero(mask[b] == 0).squeeze(1).tolist()


def test_the_encoder_sees_the_dummy_patch_and_the_kept_patches():
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs').eval()
    seen = {}
    mae.encoder.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault('x', a[0]))
    latent, mask, _ = mae.forward_encoder(_imgs(), 0.75)
    assert latent.shape == (4, 37, 108) and seen['x'].shape == (4, 37, 108)
    assert torch.equal(seen['x'][:, 0], mae.encoder.pos_embed[0, 0].expand(4, -1))  # always visible, always first


@pytest.mark.parametrize('decoder_pos,encoder_pos_to', [('encoder', 'mask'), ('encoder', 'all'), ('separate', 'mask')])
def test_the_decoder_sees_every_position_exactly_once(decoder_pos, encoder_pos_to):
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs', decoder_pos=decoder_pos, encoder_pos_to=encoder_pos_to).eval()
    captured = {}
    mae.decoder_embed.register_forward_pre_hook(lambda m, a: captured.setdefault('x', a[0]))
    B, L, m = 3, 144, 108
    x = torch.randn(B, L, m)
    kept, mask, ids_restore = random_masking(x, 0.75)
    latent = torch.cat([torch.randn(B, 1, m), kept], dim=1)  # an encoder output: dummy + kept, in shuffled order
    pred = mae.forward_decoder(latent, ids_restore, mask)
    assert pred.shape == (B, L, 27)
    seq = captured['x']
    assert seq.shape == (B, L + 1, m)
    pos = mae.encoder.pos_embed[0]
    for b in range(B):
        hidden = mask[b].bool()
        expect = torch.where(hidden.unsqueeze(-1), mae.mask_token[0, 0].expand(L, -1), x[b])  # image order
        expect_dummy = latent[b, 0]
        if decoder_pos == 'encoder' and encoder_pos_to == 'mask':
            expect = expect + hidden.unsqueeze(-1) * pos[1:]
        elif decoder_pos == 'encoder':
            expect, expect_dummy = expect + pos[1:], expect_dummy + pos[0]
        assert torch.allclose(seq[b, 1:], expect, atol=1e-6)
        assert torch.allclose(seq[b, 0], expect_dummy, atol=1e-6)


def test_loss_is_eq16():
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs').train()
    imgs = _imgs(2)
    out = mae(imgs)
    target = patchify(imgs, 3)
    err = (out.pred - target) ** 2  # (B, 144, 27)
    hidden = out.mask.bool()
    mse_masked = err[hidden].mean()
    mse_unmasked = err[~hidden].mean()
    l_moe = sum(m.aux_record.loss for m in mae.modules() if hasattr(m, 'aux_record'))  # encoder + decoder layers
    assert len([m for m in mae.modules() if hasattr(m, 'aux_record')]) == 9 + 4
    expected = mse_masked + 0.1 * mse_unmasked + 0.5 * l_moe
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    assert torch.allclose(out.parts['moe_loss'], l_moe.detach())
    out.loss.backward()
    assert all(p.grad is not None for p in mae.parameters())


def test_eval_loss_has_no_moe_term():
    mae = create_mae('mlit_xxs').eval()
    out = mae(_imgs(2))
    assert out.parts['moe_loss'].item() == 0.0


def test_decoder_size_against_table2():
    text = create_mae('mlit_xxs').decoder_param_count()
    separate = create_mae('mlit_xxs', decoder_pos='separate').decoder_param_count()
    assert text == 317_592  # 4 MoE layers 302,688 + 108x108 projection + norm + 108x27 head + mask token
    assert separate - text == 145 * 108  # one decoder position table
    assert abs(separate - 0.34e6) / 0.34e6 < 0.025 and abs(text - 0.34e6) / 0.34e6 < 0.07


def test_only_models_with_an_mlit_encoder_api_are_accepted():
    with pytest.raises(ValueError, match='cannot be an MAE encoder'):
        create_mae('test_resnet')


def test_decoder_moe_layers_reuse_the_encoders_moe_settings():
    """The decoder's MoE blocks are built from the encoder's MoE factory (k, noise, loss weights, expert dropout);
    only width, heads, d_h and expert count are the decoder's (mLiT Table 2)."""
    mae = create_mae('mlit_xxs', top_k=1, gate_noise_eps=0.05, expert_drop_mode='combined', moe_cv_squared=True,
                     expert_matmul='dense')
    for blk in mae.decoder_blocks:
        gate, experts = blk.mlp.gate, blk.mlp.experts
        assert (gate.top_k, gate.gate_noise_eps, gate.moe_cv_squared) == (1, 0.05, True)
        assert (experts.expert_drop_mode, experts.expert_matmul) == ('combined', 'dense')
        assert (gate.num_experts, experts.hidden_dim, blk.attn.num_heads, blk.attn.num_kv_heads) == (3, 72, 6, 3)
