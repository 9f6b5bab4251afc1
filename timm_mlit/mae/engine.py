"""One epoch of masked-autoencoder pre-training, as MAE's engine_pretrain.py: the update and the epoch's metrics."""
import math
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from timm.utils import NativeScaler
from torch.utils.data import DataLoader
from tqdm import tqdm

from timm_mlit.errors import DivergedError
from timm_mlit.layers import expert_load
from .model import MAEOutput

__all__ = ['Step', 'train_step', 'train_one_epoch']


class Step(NamedTuple):
    """What one update needs besides the model and the batch: mixed precision and the optimiser's state."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[], Any]
    scaler: Optional[NativeScaler]


def train_step(train_model: nn.Module, imgs: torch.Tensor, step: Step) -> MAEOutput:
    """One update on the batch ``imgs``: the loss of mLiT Eq. 16, its gradient, the optimiser's step."""
    with step.autocast():
        output = train_model(imgs)
    if step.scaler is not None:
        step.scaler(output.loss, step.optimizer)
    else:
        output.loss.backward()
        step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    return output


def train_one_epoch(
        train_model: nn.Module, model: nn.Module, loader: DataLoader, step: Step, device: torch.device, epoch: int,
        *, num_epochs: int, world_size: int = 1, progress: bool = True) -> Tuple[dict, List[float]]:
    """Epoch ``epoch`` (counted from 0, of ``num_epochs``) of updates, the LR set per update by the schedule
    (warm-up, then cosine). Returns the epoch's log row (mean losses, LR, speed, expert load) and every update's
    loss.

    ``model`` is ``train_model`` unwrapped (DDP, torch.compile), read for the expert load; ``world_size`` processes
    each train on ``loader``'s batches (for the speed). Statistics stay on the device; the host reads them once per
    epoch (and every 20 updates for the progress bar). A non-finite loss stops the run with
    :class:`~timm_mlit.errors.DivergedError` (a ``FloatingPointError``) before anything of the epoch is written."""
    optimizer, scheduler = step.optimizer, step.scheduler
    train_model.train()
    num_updates = epoch * len(loader)
    sums = {k: torch.zeros((), device=device) for k in ('loss', 'mse_masked', 'mse_unmasked', 'moe_loss')}
    load_sums: Dict[str, torch.Tensor] = {}
    step_losses, step_lrs = [], []  # every update's loss (on the device) and the LR it ran at (a Python float)
    start = time.time()
    bar = tqdm(loader, desc=f'epoch {epoch}/{num_epochs - 1}', disable=not progress, leave=False, unit='batch')
    for i, (imgs, _) in enumerate(bar):
        step_lrs.append(optimizer.param_groups[0]['lr'])
        output = train_step(train_model, imgs.to(device, non_blocking=True), step)
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        loss = output.loss.detach()
        step_losses.append(loss)
        sums['loss'] += loss
        for k, v in output.parts.items():
            sums[k] += v
        for name, share in expert_load(model).items():
            load_sums[name] = load_sums.get(name, 0) + share
        if i % 20 == 0 and progress:
            bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
    scheduler.step(epoch + 1)
    seconds = time.time() - start
    n = len(step_losses)
    step_losses = torch.stack(step_losses).tolist()
    bad = next((j for j, x in enumerate(step_losses) if not math.isfinite(x)), None)
    if bad is not None:
        raise DivergedError(
            f'the loss is not finite in epoch {epoch} (first at update {bad} of {n}, learning rate '
            f'{step_lrs[bad]:g}): the run diverged and stopped before saving anything of this epoch. Start again '
            f'with a smaller --lr, or resume from the run\'s last.pth, if it wrote one, with a smaller --lr '
            f'(--resume auto --lr ...).')
    row = {'epoch': epoch, **{k: v.item() / n for k, v in sums.items()}}
    row.update(
        lr=optimizer.param_groups[0]['lr'], epoch_time_s=seconds,
        images_per_s=n * loader.batch_size * world_size / max(seconds, 1e-9),
        expert_load={name: (v / n).tolist() for name, v in load_sums.items()})
    return row, step_losses
