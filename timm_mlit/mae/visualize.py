"""What a long pre-training run shows: reconstruction grids, the loss curve on log-log axes (the paper's Figure 6)
and the expert load over time. matplotlib draws the plots (a dependency of timm-mlit); where it cannot be imported
the plots are skipped with a warning naming the fix, and the numbers stay in the CSV / JSON logs."""
import logging
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from timm_mlit._io import atomic_write
from .model import MaskedAutoencoder, patchify, unpatchify

__all__ = ['save_reconstructions', 'plot_loss_curve', 'plot_expert_load', 'have_matplotlib', 'RECON_CELL_PX']

_logger = logging.getLogger(__name__)

RECON_CELL_PX = 144  # each image of the grid is upscaled (nearest neighbour) to at least this many pixels a side
_PAD = 4
_LABEL_PX = 230


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


@torch.no_grad()
def save_reconstructions(model: MaskedAutoencoder, imgs: torch.Tensor, mean, std, path) -> Path:
    """A PNG with one column per image and four labelled rows: the original, what the encoder saw (masked patches
    grey), the decoder's prediction for every patch, and the prediction on the masked patches pasted into the
    visible ones (as MAE's figures). Model in eval mode, the model's mask ratio; each image is upscaled with nearest
    neighbour to at least ``RECON_CELL_PX`` pixels so that a person can see the patches."""
    was_training = model.training
    model.eval()
    out = model(imgs)
    model.train(was_training)
    p, c = model.patch_size, model.in_chans
    mask = out.mask.unsqueeze(-1).expand(-1, -1, p * p * c)
    patches = patchify(imgs, p)
    pred = out.pred.float()
    seen = unpatchify(patches * (1 - mask), p, c)
    recon = unpatchify(pred, p, c)
    pasted = unpatchify(patches * (1 - mask) + pred * mask, p, c)
    mean = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    ratio = out.mask.float().mean().item()
    rows = [('original', imgs), (f'encoder input\n({ratio:.0%} of patches\nmasked, grey)', seen),
            ('reconstruction\n(every patch)', recon), ('reconstruction\n+ visible patches', pasted)]
    scale = max(1, math.ceil(RECON_CELL_PX / imgs.shape[-1]))
    cells = torch.cat([(r.float() * std + mean).clamp(0, 1) for _, r in rows]).cpu()
    cells = F.interpolate(cells, scale_factor=scale, mode='nearest')
    grid = make_grid(cells, nrow=imgs.shape[0], padding=_PAD, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    canvas = Image.new('RGB', (_LABEL_PX + array.shape[1], array.shape[0]), 'white')
    canvas.paste(Image.fromarray(array), (_LABEL_PX, 0))
    draw, font = ImageDraw.Draw(canvas), _font(20)
    cell = cells.shape[-2] + _PAD
    for i, (label, _) in enumerate(rows):
        draw.multiline_text((8, _PAD + i * cell + 8), label, fill='black', font=font, spacing=6)
    return atomic_write(path, lambda tmp: canvas.save(tmp, format='png'), overwrite=True)


def have_matplotlib() -> bool:
    """Whether matplotlib imports; if not, warn once that the plots are skipped and how to get them."""
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError as e:
        global _warned
        if not _warned:
            _logger.warning(f'matplotlib cannot be imported ({e}): loss_curve.png and expert_load.png are not '
                            f'written (the numbers are in log.csv / log.jsonl). Fix: pip install matplotlib')
            _warned = True
        return False


_warned = False


def _figure():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path) -> Path:
    def write(tmp):
        fig.savefig(tmp, format='png', dpi=120, bbox_inches='tight')
    try:
        return atomic_write(path, write, overwrite=True)
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
