"""PyTorch dynamic int8 quantisation (``quantize_dynamic(model, {nn.Linear})``) of every family: the gates and the
per-image router call their quantised Linears as modules and stay float32."""
import pytest
import timm
import torch
import torch.nn as nn

import timm_mlit  # noqa: F401
from timm_mlit.mae import create_mae

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')


def _quantise(model):
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize('model_name', ['mlit_xxs', 'mobile_vmoe_6x64_patch3_36', 'maevit_c100'])
def test_quantised_classifier_runs_and_stays_close(model_name):
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    x = torch.randn(4, 3, 36, 36)
    ref = model(x)
    quantised = _quantise(model)
    assert not any(type(m) is nn.Linear for m in quantised.modules())
    out = quantised(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.2 * ref.abs().max()


@pytest.mark.parametrize('training', [False, True])
def test_quantised_mae_forward(training):
    """mmLiT's MAE (the gate in training mode too: noise and balancing loss from the int8 logits)."""
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs').train(training)
    x = torch.randn(2, 3, 36, 36)
    torch.manual_seed(1)
    ref = mae(x).loss
    quantised = _quantise(mae).train(training)
    torch.manual_seed(1)  # the same patch masks
    loss = quantised(x).loss
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.1 * ref.item()
