"""What a long pre-training run shows: reconstruction grids, the loss curve (the paper's Figure 6, here on a linear
epoch axis) and the expert load (mLiT Eq. 1's routing: which share of each MoE layer's tokens each expert gets).
matplotlib draws the plots (a dependency of timm-mlit); where it cannot be imported the plots are skipped with a
warning naming the fix, and the numbers stay in the CSV / JSON logs.

Epochs are plotted as they are logged (``log.csv``'s ``epoch`` column), never renumbered."""
import logging
import math
import re
from pathlib import Path
from typing import List, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from timm_mlit._io import atomic_write
from .model import MaskedAutoencoder, patchify, unpatchify

__all__ = [
    'save_reconstructions', 'plot_loss_curve', 'plot_expert_load', 'loss_curve_figure', 'expert_load_figure',
    'have_matplotlib', 'RECON_CELL_PX']

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

# the names pretrain.py logs its losses under (mLiT Eq. 16), as a reader knows them
_LOSS_LABELS = {
    'loss': 'total loss (mLiT Eq. 16)',
    'mse_masked': 'MSE on masked patches',
    'mse_unmasked': 'MSE on visible patches',
    'moe_loss': 'MoE loss',
}
_LOG_Y_RATIO = 5.0  # a log y axis once the losses span this factor (the early drop would flatten the rest)
_MARKERS_UP_TO = 30  # epochs; short runs get a marker per logged epoch


def _save(fig, path) -> Path:
    """Write ``fig`` as a PNG through the package's atomic writer (a kill leaves the old plot)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=120, bbox_inches='tight'),
                        overwrite=True)


def _plain(value: float, _pos=None) -> str:
    """A tick label as a plain number: 0.05, 2, 300 (not 5x10^-2)."""
    return np.format_float_positional(value, precision=6, unique=True, trim='-')


def _epoch_axis(axis) -> None:
    """Integer ticks only (an epoch is never 2.5), as plain numbers."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_major_formatter(_plain)


def _check_epochs(epochs: Sequence[int], n: int, what: str) -> List[int]:
    epochs = [int(e) for e in epochs]
    if not epochs or len(epochs) != n:
        raise ValueError(f'epochs: got {len(epochs)} epochs for {n} {what}; expected one epoch number per logged '
                         f'row (at least one). Pass the log rows\' "epoch" values.')
    return epochs


def loss_curve_figure(epochs: Sequence[int], losses: Mapping[str, Sequence[float]], title: str = ''):
    """The training losses against the epochs as logged: a linear epoch axis with integer ticks, and a log loss axis
    with plain tick labels (0.05, 0.1, 0.2) once the losses span a factor 5, else a linear one. The paper's
    Figure 6 draws MAE's loss on log-log axes; a linear epoch axis keeps the run's last epochs, where a long run
    spends its time, readable. Returns a ``matplotlib.figure.Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter
    if not losses:
        raise ValueError('losses: got no series; expected a name -> per-epoch values mapping such as '
                         '{"loss": [...]}.')
    for name, ys in losses.items():
        _check_epochs(epochs, len(ys), f'values of {name!r}')
    fig = Figure(figsize=(7, 4.2), layout='constrained')
    ax = fig.subplots()
    marker = 'o' if len(epochs) <= _MARKERS_UP_TO else None
    for name, ys in losses.items():
        ax.plot(list(epochs), list(ys), label=_LOSS_LABELS.get(name, name), marker=marker, markersize=3.5,
                linewidth=1.6)
    values = [float(v) for ys in losses.values() for v in ys if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) >= _LOG_Y_RATIO:
        ax.set_yscale('log')
        decades = math.log10(max(values) / min(values))
        subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if decades < 1.5 else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
        ax.yaxis.set_major_locator(LogLocator(subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_locator(LogLocator(subs='auto'))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel('loss (log scale)')
    else:
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        ax.yaxis.set_major_formatter(fmt)
        ax.set_ylabel('loss')
    _epoch_axis(ax.xaxis)
    if len(set(epochs)) == 1:
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    ax.set_xlabel('epoch (as logged)')
    ax.set_title(title or 'Training loss')
    ax.grid(True, which='major', alpha=0.35)
    ax.grid(True, which='minor', axis='y', alpha=0.12)
    ax.legend()
    return fig


def plot_loss_curve(epochs: Sequence[int], losses: Mapping[str, Sequence[float]], path, title: str = '') -> Path:
    """:func:`loss_curve_figure` written as a PNG to ``path``."""
    return _save(loss_curve_figure(epochs, losses, title), path)


def _layer_label(name: str, t: int) -> str:
    """'encoder.blocks.3.mlp' -> 'encoder block 3 (t=4)'; 'decoder_blocks.0.mlp' -> 'decoder block 0 (t=3)'."""
    short = re.sub(r'\.mlp$', '', name)
    short = re.sub(r'(^|[._])blocks\.(\d+)', r' block \2', short).strip()
    return f'{short} (t={t})'


def expert_load_figure(epochs: Sequence[int], loads: Sequence[Mapping[str, Sequence[float]]], title: str = ''):
    """The expert load of a run's MoE layers (``loads``: per logged epoch, each layer's list of expert shares, the
    ``expert_load`` of ``log.jsonl``'s rows; each list sums to 1 over the layer's t experts, mLiT Eq. 1's routing).

    Left, a heatmap of layer × expert at the last logged epoch: each cell is written with the expert's share of the
    layer's routed tokens and coloured by share × t on a diverging scale centred on 1, i.e. the balanced share 1/t
    (blue: below, down to 0 for an unused expert; red: above). Layers may have different numbers of experts (mLiT
    adds them in stages): cells past a layer's t are hatched. Right (with two or more epochs), the least-used
    expert's share × t per layer and epoch, on the same scale: how close the weakest expert came to 1/t over the run.
    Returns a ``matplotlib.figure.Figure`` (no pyplot state)."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    epochs = _check_epochs(epochs, len(loads), 'expert-load rows')
    layers = list(loads[-1])
    if not layers:
        raise ValueError('loads: the last row names no MoE layer; expected {layer name: [share per expert]} '
                         '(a dense model has no expert load: do not plot it).')
    for name in layers:
        shares = loads[-1][name]
        if len(shares) == 0:
            raise ValueError(f'loads[-1][{name!r}]: no experts; expected a share per expert (a list summing to 1).')
    n_layers = len(layers)
    n_experts = max(len(loads[-1][n]) for n in layers)
    last = np.ma.masked_all((n_layers, n_experts))
    for i, name in enumerate(layers):
        shares = np.asarray(loads[-1][name], dtype=float)
        last[i, :len(shares)] = shares * len(shares)
    weakest = np.ma.masked_all((n_layers, len(epochs)))
    for j, row in enumerate(loads):
        for i, name in enumerate(layers):
            shares = row.get(name)
            if shares is not None and len(shares):
                weakest[i, j] = min(shares) * len(shares)

    cmap = matplotlib.colormaps['RdBu_r'].with_extremes(bad=(0, 0, 0, 0), over='#67001f')
    norm = Normalize(0.0, 2.0)
    over_time = len(epochs) > 1
    fig = Figure(figsize=(12 if over_time else 7.5, max(3.6, 0.34 * n_layers + 1.9)), layout='constrained')
    if over_time:
        ax, ax_time = fig.subplots(1, 2, sharey=True, gridspec_kw=dict(width_ratios=[max(n_experts, 4), 8]))
    else:
        ax, ax_time = fig.subplots(), None

    # hatching shows through the transparent masked cells: experts a layer does not have
    ax.add_patch(Rectangle((-0.5, -0.5), n_experts, n_layers, hatch='//', fill=False, edgecolor='0.75',
                           linewidth=0, zorder=0))
    image = ax.imshow(last, cmap=cmap, norm=norm, aspect='auto', interpolation='nearest', zorder=1)
    for i, name in enumerate(layers):
        for k, share in enumerate(loads[-1][name]):
            ratio = float(share) * len(loads[-1][name])
            ax.text(k, i, f'{float(share):.0%}', ha='center', va='center', fontsize=9,
                    color='white' if abs(ratio - 1) > 0.6 else 'black')
    ax.set_xticks(range(n_experts))
    ax.set_yticks(range(n_layers), [_layer_label(n, len(loads[-1][n])) for n in layers])
    ax.set_xlabel('expert (index)' + ('; hatched: the layer has fewer experts' if last.mask.any() else ''))
    ax.set_title(f'share of routed tokens per expert,\nepoch {epochs[-1]} (the last logged)', fontsize=10)

    if ax_time is not None:
        e = np.asarray(epochs, dtype=float)
        mids = (e[1:] + e[:-1]) / 2
        edges = np.concatenate([[e[0] - (mids[0] - e[0])], mids, [e[-1] + (e[-1] - mids[-1])]])
        ax_time.add_patch(Rectangle((edges[0], -0.5), edges[-1] - edges[0], n_layers, hatch='//', fill=False,
                                    edgecolor='0.75', linewidth=0, zorder=0))
        ax_time.pcolormesh(edges, np.arange(n_layers + 1) - 0.5, weakest, cmap=cmap, norm=norm, zorder=1)
        ax_time.set_xlim(edges[0], edges[-1])
        _epoch_axis(ax_time.xaxis)
        ax_time.set_xlabel(
            'epoch (as logged)' + ('; hatched: the layer was not there yet' if weakest.mask.any() else ''))
        ax_time.set_title("least-used expert's share × t, per epoch\n(1 = balanced; lower = a starved expert)",
                          fontsize=10)
        ax_time.tick_params(axis='y', left=False)
    ax.set_ylim(n_layers - 0.5, -0.5)  # first layer on top

    bar = fig.colorbar(image, ax=[ax] if ax_time is None else [ax, ax_time], extend='max', fraction=0.04,
                       pad=0.02, aspect=30)
    bar.set_ticks([0, 0.5, 1, 1.5, 2], labels=['0: unused', '0.5', '1: balanced\n(share = 1/t)', '1.5', '2+'])
    bar.set_label("expert's share × t  (t = experts in its layer)")
    fig.suptitle(title or 'Expert load of the MoE layers', fontsize=12)
    return fig


def plot_expert_load(epochs: Sequence[int], loads: Sequence[Mapping[str, Sequence[float]]], path,
                     title: str = '') -> Path:
    """:func:`expert_load_figure` written as a PNG to ``path``."""
    return _save(expert_load_figure(epochs, loads, title), path)
