"""maevit_c100: the dense Mae-ViT-C100 baseline (arXiv 2402.03752), reconstructed; its size and cost against the
paper's statement, and its MAE pre-training hand-off through the same module as mLiT."""
import pytest
import torch
import timm
from timm.models.vision_transformer import Block

import timm_mlit  # noqa: F401
from timm_mlit.mae import create_mae
from timm_mlit.mae.checkpoint import export_encoder
from timm_mlit.models.maevit import checkpoint_filter_fn
from timm_mlit.profiling import count_macs, flop_counter


def test_layout_is_the_papers():
    model = timm.create_model('maevit_c100')
    assert len(model.blocks) == 12 and all(isinstance(b, Block) for b in model.blocks)
    assert model.embed_dim == 192 and model.blocks[0].mlp.fc1.out_features == 2 * 192  # MLP 2x, not 4x
    assert model.pos_embed.shape == (1, 144 + 1, 192)  # 3x3 patches of 36x36 and the dummy patch
    assert model.patch_embed.proj.kernel_size == (3, 3)
    assert model.patch_embed.proj.bias is None and model.pretrained_cfg['input_size'] == (3, 36, 36)
    four = timm.create_model('maevit_c100', patch_size=4)  # the other reading, kept as an option
    assert four.pos_embed.shape == (1, 81 + 1, 192) and four.patch_embed.proj.kernel_size == (4, 4)


def _macs_outside_attention(model):
    """MACs of one 36x36 forward without the attention modules (q/k/v, products, output projection): what a
    thop-style counter reports for a model whose attention is an nn.MultiheadAttention, which it skips. The counter is
    count_macs's, which counts attention on every torch, so what is taken away is all of the attention modules'."""
    counter = flop_counter()
    with torch.no_grad(), counter:
        model.eval()(torch.randn(1, 3, 36, 36))
    attn = sum(sum(v.values()) for k, v in counter.get_flop_counts().items() if k.endswith('.attn'))
    return (counter.get_total_flops() - attn) // 2


def test_params_and_macs_against_the_papers_3_64m_and_0_27g():
    """3x3 patches: 3.617M params (stated 3.64M) and 0.257 GMACs outside attention (stated < 0.27G), 0.611 G in all."""
    model = timm.create_model('maevit_c100')
    params = sum(p.numel() for p in model.parameters())
    assert params == 3_616_996 and f'{params / 1e6:.3f}M' == '3.617M'
    macs = count_macs(model, torch.randn(1, 3, 36, 36))
    assert macs == 610_795_776  # 145 tokens x 12 layers, attention included
    outside = _macs_outside_attention(model)
    assert f'{outside / 1e9:.3f}G' == '0.257G' and outside < 0.27e9
    # exactly the patch stem, the 12 MLPs and the head
    assert outside == 144 * 27 * 192 + 12 * 145 * 2 * 192 * 384 + 192 * 100


def test_4x4_patch_option_params_and_macs():
    model = timm.create_model('maevit_c100', patch_size=4)
    params = sum(p.numel() for p in model.parameters())
    assert params == 3_608_932
    assert count_macs(model, torch.randn(1, 3, 36, 36)) == 321_943_296  # 82 tokens: 0.322 G, above 0.27G
    assert _macs_outside_attention(model) == 145_862_400


def test_dummy_patch_is_the_first_position_and_feeds_the_classifier():
    model = timm.create_model('maevit_c100').eval()
    x = torch.randn(2, 3, 36, 36)
    tokens = model._embed(x)
    assert torch.equal(tokens[:, 0], model.pos_embed[0, 0].expand(2, -1))
    feats = model.forward_features(x)
    assert torch.allclose(model.forward_head(feats, pre_logits=True), feats[:, 0])


def test_mae_pretraining_hands_the_encoder_to_fine_tuning(tmp_path):
    """MAE with its own decoder position table (the paper) and a dense decoder; the exported encoder loads into
    maevit_c100 the way train.py's --pretrained-path does."""
    torch.manual_seed(0)
    mae = create_mae('maevit_c100', decoder_pos='separate', decoder_num_experts=0).train()
    assert mae.decoder_pos_embed.shape == (1, 145, 108)
    assert all(isinstance(b, Block) for b in mae.decoder_blocks)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    imgs = torch.randn(8, 3, 36, 36)
    losses = []
    for _ in range(5):
        out = mae(imgs)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.pred.shape == (8, 144, 27) and out.mask.sum(1).eq(108).all()  # 75% of 144 hidden
    assert losses[-1] < losses[0]
    path = tmp_path / 'encoder.safetensors'
    export_encoder(mae.encoder, path)
    model = timm.create_model(
        'maevit_c100', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=-1), num_classes=10)
    assert torch.equal(model.blocks[11].mlp.fc2.weight, mae.encoder.blocks[11].mlp.fc2.weight)
    assert model.head.out_features == 10


def test_checkpoints_of_other_models_are_refused_clearly():
    model = timm.create_model('maevit_c100')
    with pytest.raises(ValueError, match='not a dense Mae-ViT encoder'):
        checkpoint_filter_fn(timm.create_model('mlit_s').state_dict(), model)
    narrow = timm.create_model('maevit_c100', embed_dim=96, num_heads=6)
    with pytest.raises(ValueError, match=r'holds a dense ViT with embed_dim=192, 12 blocks and MLP width 384, but '
                                         r'the model is a dense ViT with embed_dim=96'):
        checkpoint_filter_fn(model.state_dict(), narrow)
