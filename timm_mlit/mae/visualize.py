"""What a long pre-training run shows: reconstruction grids, the loss curve on log-log axes (the paper's Figure 6)
and the expert load over time. Plots need matplotlib (``pip install timm-mlit[plot]``); without it they are skipped
with a note and the numbers stay in the CSV / JSON logs."""
import logging
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torchvision.utils import save_image

from .checkpoint import atomic_write
from .model import MaskedAutoencoder, patchify, unpatchify

__all__ = ['save_reconstructions', 'plot_loss_curve', 'plot_expert_load', 'have_matplotlib']

_logger = logging.getLogger(__name__)


@torch.no_grad()
def save_reconstructions(model: MaskedAutoencoder, imgs: torch.Tensor, mean, std, path) -> Path:
    """A PNG with one column per image and three rows: original, what the encoder saw, reconstruction
    (model in eval mode, the model's mask ratio)."""
    was_training = model.training
    model.eval()
    out = model(imgs)
    model.train(was_training)
    p, c = model.patch_size, model.in_chans
    mask = out.mask.unsqueeze(-1).expand(-1, -1, p * p * c)
    seen = unpatchify(patchify(imgs, p) * (1 - mask), p, c)
    recon = unpatchify(out.pred.float(), p, c)
    mean = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    rows = [imgs, seen, recon]
    grid = torch.cat([(r.float() * std + mean).clamp(0, 1) for r in rows])
    return atomic_write(path, lambda tmp: save_image(grid.cpu(), tmp, nrow=imgs.shape[0], padding=1, format='png'))


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def _figure():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path) -> Path:
    def write(tmp):
        fig.savefig(tmp, format='png', dpi=120, bbox_inches='tight')
    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def plot_loss_curve(epochs: Sequence[int], losses: Dict[str, Sequence[float]], path, title: str = '') -> Path:
    """Training losses against epochs on log-log axes (Figure 6)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [e + 1 for e in epochs]
    for name, ys in losses.items():
        ax.plot(x, ys, label=name)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss')
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def plot_expert_load(epochs: Sequence[int], min_share: Dict[str, List[float]], path) -> Path:
    """Per MoE layer, the share of routed token slots that its least-used expert got (1/t is perfect balance)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in min_share.items():
        ax.plot([e + 1 for e in epochs], ys, label=name, linewidth=1)
    ax.set_xlabel('epoch')
    ax.set_ylabel("least-used expert's share")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path)
