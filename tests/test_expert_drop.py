"""Per-expert dropout masks drawn from Geometric gaps are iid Bernoulli masks: keep rate, values, variance,
independence between positions; also when the first draw falls short and more gaps are drawn."""
import pytest
import torch

from timm_mlit.layers import SharedSwiGLUExperts
from timm_mlit.layers.expert_drop import drop_positions, expert_drop_mask, geometric_drop_mask

CPU = torch.device('cpu')


@pytest.mark.parametrize('p', [0.1, 0.5])
def test_mask_has_dropout_values_rate_and_variance(p):
    torch.manual_seed(0)
    mask = expert_drop_mask(torch.zeros(3000, 2), 50, p)
    assert mask.shape == (3000, 2, 50) and mask.dtype == torch.float32
    assert torch.equal(mask.unique(), torch.tensor([0., 1 / (1 - p)]))
    n = mask.numel()
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert abs(mask.mean().item() - 1) < 0.01
    assert abs(mask.var().item() - p / (1 - p)) < 0.05 * p / (1 - p)


@pytest.mark.parametrize('margin', [8., -3.])  # -3: the first round falls short, later rounds finish the mask
def test_positions_are_independent_with_the_same_rate(margin):
    torch.manual_seed(0)
    p, numel, draws = 0.3, 6, 20000
    masks = torch.stack([geometric_drop_mask(numel, p, torch.float32, CPU, margin) for _ in range(draws)]) == 0
    masks = masks.float()
    tol = 5 * (p * (1 - p) / draws) ** 0.5
    assert ((masks.mean(0) - p).abs() < tol).all()  # every position, the end included
    both = (masks[:, :-1] * masks[:, 1:]).mean(0)  # neighbours: independent, P = p²
    assert ((both - p * p).abs() < tol).all()
    assert ((masks[:, 0] * masks[:, -1]).mean() - p * p).abs() < tol


def test_seeded_and_sized_like_the_gates():
    gates = torch.zeros(7, 3, dtype=torch.float64)
    torch.manual_seed(5)
    a = expert_drop_mask(gates, 11, 0.2)
    torch.manual_seed(5)
    b = expert_drop_mask(gates, 11, 0.2)
    assert torch.equal(a, b) and a.shape == (7, 3, 11) and a.dtype == torch.float64
    assert expert_drop_mask(torch.zeros(0, 2), 4, 0.1).shape == (0, 2, 4)
    assert expert_drop_mask(torch.zeros(2, 2, device='meta'), 4, 0.1).is_meta


def test_rate_out_of_range_is_refused():
    with pytest.raises(ValueError, match='dropout rate'):
        expert_drop_mask(torch.zeros(2, 2), 4, 1.)
    with pytest.raises(ValueError, match='dropout rate'):
        drop_positions(10, 1., CPU)
    with pytest.raises(ValueError, match=r'expert_drop_rate must be in \[0, 1\).*Fix'):
        SharedSwiGLUExperts(8, 8, 3, expert_drop_rate=1.)
    SharedSwiGLUExperts(8, 8, 3, expert_drop_rate=1., expert_drop_mode='combined')  # nn.Dropout(1): all zeros


@pytest.mark.parametrize('margin', [8., -3.])
def test_drop_positions_rate_and_order(margin):
    """drop_positions itself (not through the mask): ascending, inside [0, numel), dropping a fraction p."""
    torch.manual_seed(1)
    p, numel = 0.2, 50000
    pos = drop_positions(numel, p, CPU, margin)
    assert (pos[1:] > pos[:-1]).all() and pos[0] >= 0 and pos[-1] < numel
    assert abs(pos.numel() / numel - p) < 5 * (p * (1 - p) / numel) ** 0.5


@pytest.mark.parametrize('margin', [8., -3.])
def test_drop_positions_are_the_masks_zeros(margin):
    """The same seed gives the dense mask with its zeros exactly at the positions (what the experts' two paths rely
    on to draw the same mask); ascending and inside the mask, also for tiny sizes."""
    for numel, p in [(1000, 0.1), (37, 0.5), (1, 0.3), (0, 0.1)]:
        torch.manual_seed(3)
        pos = drop_positions(numel, p, CPU, margin)
        torch.manual_seed(3)
        mask = geometric_drop_mask(numel, p, torch.float32, CPU, margin)
        assert pos.dtype == torch.int64 and mask.shape == (numel,)
        assert (pos[1:] > pos[:-1]).all() and ((pos >= 0) & (pos < numel)).all()
        assert torch.equal((mask == 0).nonzero().flatten(), pos)
