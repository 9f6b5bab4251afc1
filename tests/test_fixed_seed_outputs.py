"""Outputs and auxiliary losses at fixed seeds, recorded with the code before the layers were renamed by paper, the
auxiliary losses given one path (``aux_losses``) and the MoE blocks built from timm-style factories: those changes
moved no number (same initialisation order, same random draws, same arithmetic). The per-expert dropout gaps later
came from vectorised inversion instead of ``Tensor.geometric_`` (same distribution, other draws): the train-mode
records were taken again then, and with ``Tensor.geometric_`` patched back in the earlier records still hold (the
arithmetic did not move)."""
import pytest
import torch
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.layers import expert_drop
from timm_mlit.mae import create_mae

RECORDED = {
    'mlit_eval': [[0.19308187067508698, -0.5642797946929932, 0.3412943184375763, 0.837540328502655],
                  [0.1663179248571396, -0.17370790243148804, 0.8140561580657959, 0.9800657033920288]],
    'mlit_train': [[0.337260365486145, -0.5247353911399841, 0.478565514087677, 0.6498605012893677],
                   [0.71430903673172, -0.18320545554161072, 1.078147292137146, 0.6156210899353027]],
    'mlit_moe_loss': 0.008921848610043526,
    'vmoe_train': [[0.004259016364812851, 0.29265090823173523, -0.13363657891750336, 0.2202262282371521],
                   [-0.014433242380619049, 0.24320444464683533, -0.09669188410043716, 0.23652026057243347]],
    'vmoe_router_loss': 0.8978656530380249,
    'mae_loss': 1.4278607368469238,
    'mae_moe_loss': 0.018802348524332047,
}
# the train-mode records before, with the gaps drawn by Tensor.geometric_
RECORDED_GEOMETRIC_ = {
    'mlit_train': [[0.38417428731918335, -0.28883498907089233, 0.4551589787006378, 0.5914642810821533],
                   [0.5554972290992737, -0.2316495180130005, 0.7394963502883911, 0.646910548210144]],
    'mlit_moe_loss': 0.008921848610043526,
    'mae_loss': 1.4298368692398071,
    'mae_moe_loss': 0.018802348524332047,
}


def _geometric_(count, p, device):
    return torch.empty(count, dtype=torch.float64, device=device).geometric_(p)


@pytest.fixture(params=['inversion', 'geometric_'])
def recorded(request, monkeypatch):
    """The train-mode records for the gap draws in use: today's inversion, or Tensor.geometric_ patched back in."""
    if request.param == 'geometric_':
        monkeypatch.setattr(expert_drop, 'geometric_gaps', _geometric_)
        return RECORDED_GEOMETRIC_
    return RECORDED


def _inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, 36, 36, generator=g), torch.tensor([3, 57])


def _close(got, key, recorded=RECORDED):
    want = torch.tensor(recorded[key])
    assert torch.allclose(torch.as_tensor(got, dtype=want.dtype), want, rtol=1e-4, atol=1e-5), key


def test_mlit_outputs_and_moe_loss_are_unchanged(recorded):
    x, _ = _inputs()
    torch.manual_seed(0)
    model = timm.create_model('mlit_xxs', num_classes=100).eval()
    with torch.no_grad():
        _close(model(x)[:, :4], 'mlit_eval')
    model.train()
    torch.manual_seed(1)
    out = model(x)
    _close(out[:, :4].detach(), 'mlit_train', recorded)
    _close(model.moe_loss().item(), 'mlit_moe_loss', recorded)


def test_mobile_vmoe_outputs_and_router_loss_are_unchanged():
    x, y = _inputs()
    torch.manual_seed(0)
    model = timm.create_model('mobile_vmoe_6x64_patch3_36', num_classes=100, superclass_map='cifar100').train()
    torch.manual_seed(1)
    out = model(x)
    _close(out[:, :4].detach(), 'vmoe_train')
    _close(model.router_loss(y).item(), 'vmoe_router_loss')


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_mae_loss_is_unchanged(recorded):
    x, _ = _inputs()
    torch.manual_seed(0)
    mae = create_mae('mlit_xxs').train()
    torch.manual_seed(1)
    out = mae(x)
    _close(out.loss.item(), 'mae_loss', recorded)
    _close(out.parts['moe_loss'].item(), 'mae_moe_loss', recorded)
