"""Every model of the zoo builds and runs forward on the ``meta`` device (shapes only), as timm's own config tests
run models; training mode included, and the MAE wrapper."""
import pytest
import timm
import torch

import timm_mlit  # noqa: F401
from timm_mlit.mae import create_mae

FAMILIES = ['mlit', 'maevit', 'mobile_vmoe']
MODELS = [name for family in FAMILIES for name in timm.list_models(module=family)]


@pytest.mark.parametrize('model_name', MODELS)
def test_forward_on_meta(model_name):
    with torch.device('meta'):
        model = timm.create_model(model_name)
    size = model.pretrained_cfg['input_size']
    x = torch.empty(2, *size, device='meta')
    for training in (False, True):
        model.train(training)
        out = model(x)
        assert out.is_meta and out.shape == (2, model.num_classes)
        feats = model.forward_features(x)
        assert feats.is_meta and feats.shape[-1] == model.num_features


@pytest.mark.parametrize('model_name', ['mlit_xxs', 'maevit_c100'])
def test_mae_forward_on_meta(model_name):
    with torch.device('meta'):
        mae = create_mae(model_name)
    out = mae.train()(torch.empty(2, 3, 36, 36, device='meta'))
    assert out.loss.is_meta and out.loss.shape == ()
