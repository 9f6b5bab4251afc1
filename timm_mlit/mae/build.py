"""What a pre-training run is built from its arguments: the data, the model, the optimiser and schedule, and the
state of the run it resumes.

The schedule is timm's cosine per update with a linear warm-up from 0. The cosine is not shifted past the warm-up:
it counts from update 0 over all the epochs and the warm-up overlays its first 5%, so at the end of the warm-up the
cosine takes over at 0.5 x (1 + cos(0.05 pi)) = 99.4% of the peak LR (MAE's code instead fits its cosine into the
epochs after the warm-up). On resume the schedule is a function of the run's epochs, warm-up, LR and updates per
epoch: if any of these changed, it is rebuilt for the new run and continued at the finished epochs; else the
checkpoint's schedule is restored exactly.
"""
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import timm
import torch
import torch.nn as nn
from timm.data import create_dataset, create_transform
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import NativeScaler
from torch.utils.data import DataLoader, DistributedSampler

from timm_mlit.data.folder import refuse_misread_tree, split_folder

from .arguments import UsageError
from .checkpoint import CheckpointError, set_rng_state
from .engine import Step
from .model import create_mae

__all__ = [
    'check_inputs', 'create_model', 'create_train_dataset', 'build_loader', 'count_updates', 'create_step', 'resume',
    'wrap_for_training', 'reconstruction_batch']

_logger = logging.getLogger('timm_mlit.pretrain')

_TORCH_DATASET_FOLDERS = {'cifar-10-batches-py': 'torch/cifar10', 'cifar-100-python': 'torch/cifar100'}


def check_inputs(args, state: Optional[dict]) -> None:
    """Errors that name the model and data flags, before timm or torchvision give theirs."""
    saved = (state or {}).get('args') or {}
    if saved.get('model') not in (None, args.model):
        raise CheckpointError(
            f'--resume {args.resume} pre-trains {saved["model"]}, not {args.model}: pass --model '
            f'{saved["model"]} (or leave --model out; a resume takes it from the checkpoint).')
    if not timm.is_model(args.model):
        raise UsageError(f'--model {args.model}: not a registered model; expected an mLiT encoder '
                         f'({", ".join(timm.list_models("mlit_*"))}) or maevit_c100.')
    if args.data_dir is None:
        raise UsageError(
            '--data-dir is missing: expected an ImageFolder (DATA/train/<class>/*.png, what `mlit-prepare-data '
            'cifar10` writes) or, with --dataset torch/cifar100, the folder holding torchvision\'s files.')
    root = Path(args.data_dir).expanduser()
    if not root.is_dir() and not (args.dataset.startswith('torch/') and args.dataset_download):
        fetch = (f' Add --dataset-download to have torchvision fetch {args.dataset} into it.'
                 if args.dataset.startswith('torch/') else '')
        raise UsageError(f'--data-dir {root}: no such folder; expected the dataset root (an ImageFolder with '
                         f'{args.train_split}/<class>/ or, with --dataset torch/..., torchvision\'s files).{fetch}')
    if not args.dataset:
        found = [name for name in _TORCH_DATASET_FOLDERS if (root / name).is_dir()]
        if found and not (root / args.train_split).is_dir():
            raise UsageError(
                f'--data-dir {root} holds torchvision\'s {found[0]}/, not an ImageFolder, and --dataset is \'\' '
                f'(an ImageFolder, as train.py). Pass --dataset {_TORCH_DATASET_FOLDERS[found[0]]}.')


def create_model(args, device: torch.device) -> nn.Module:
    """The masked autoencoder around ``--model``; refuses a mask ratio that leaves no visible or no hidden patch."""
    try:
        model = create_mae(
            args.model, decoder_pos=args.decoder_pos, encoder_pos_to=args.encoder_pos_to, mask_ratio=args.mask_ratio,
            alpha=args.alpha, beta=args.beta, **args.model_kwargs).to(device)
    except TypeError as e:  # an unknown keyword in --model-kwargs
        raise UsageError(f'--model-kwargs {args.model_kwargs}: {e}; expected keyword arguments of {args.model} or of '
                         f'the MAE decoder (e.g. decoder_num_experts).') from e
    num_patches = model.encoder.patch_embed.num_patches
    kept = int(round(num_patches * (1 - args.mask_ratio)))
    if not 0 < kept < num_patches:
        raise UsageError(
            f'--mask-ratio {args.mask_ratio} keeps {kept} of the {num_patches} patches of {args.model}: expected at '
            f'least one visible and one hidden patch; pass a ratio between {1.5 / num_patches:.3f} and '
            f'{1 - 1.5 / num_patches:.3f} (MAE: 0.75).')
    return model


def _create_dataset(args, **kwargs):
    try:
        return create_dataset(args.dataset, root=args.data_dir, split=args.train_split,
                              download=args.dataset_download, **kwargs)
    except RuntimeError as e:
        if 'download=True' not in str(e) and 'not found' not in str(e).lower():
            raise
        raise UsageError(
            f'--dataset {args.dataset} --data-dir {args.data_dir}: torchvision found no intact dataset there ({e}). '
            f'Point --data-dir at the folder holding its files, add --dataset-download, or read an ImageFolder '
            f'with --dataset \'\' (`mlit-prepare-data cifar10 ...` writes one).') from e


def create_train_dataset(args, model: nn.Module):
    """The training images with Table 3's augmentation (random-resized-crop, flip, mean = std = 0.5). An ImageFolder
    ``--data-dir`` is first checked for symbolic-link loops (timm's reader follows links)."""
    if not args.dataset and args.data_dir and Path(args.data_dir).is_dir():
        root = Path(args.data_dir)
        refuse_misread_tree(split_folder(root, args.train_split) or root, '--data-dir', root, labelled=False)
    transform = create_transform(
        model.encoder.pretrained_cfg['input_size'][-2:], is_training=True, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, vflip=0., color_jitter=None, auto_augment=None,
        interpolation=args.train_interpolation, mean=tuple(args.mean), std=tuple(args.std), re_prob=0.)
    return _create_dataset(args, is_training=True, batch_size=args.batch_size, transform=transform)


def build_loader(args, epoch: int, dataset) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch): resuming an epoch replays it."""
    sampler = DistributedSampler(
        dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)  # seeds the workers' RNGs
    return DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
        pin_memory=args.device.startswith('cuda'), generator=generator, persistent_workers=False)


def count_updates(args, dataset) -> int:
    """Updates per epoch (full batches per process); refuses a dataset too small for one."""
    updates_per_epoch = len(build_loader(args, 0, dataset))
    if updates_per_epoch == 0:
        raise UsageError(
            f'--data-dir {args.data_dir}: {len(dataset)} images give no full batch of --batch-size '
            f'{args.batch_size} x {args.world_size} processes: lower --batch-size.')
    return updates_per_epoch


def create_step(args, model: nn.Module, device: torch.device, updates_per_epoch: int) -> Step:
    """AdamW, the per-update cosine schedule with its linear warm-up from 0, and mixed precision."""
    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, betas=tuple(args.opt_betas))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=0.0,
        min_lr=args.min_lr, updates_per_epoch=updates_per_epoch, step_on_epochs=False)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else nullcontext
    scaler = NativeScaler(device=device.type) if args.amp and amp_dtype == torch.float16 else None
    return Step(optimizer, scheduler, autocast, scaler)


def resume(args, state: dict, model: nn.Module, step: Step, updates_per_epoch: int) -> int:
    """Load the checkpoint's model, optimiser, schedule, scaler and RNG states; returns the number of finished
    epochs, which is the index of the next one (epochs count from 0)."""
    optimizer, scheduler = step.optimizer, step.scheduler
    primary = args.rank == 0
    try:
        model.load_state_dict(state['model'])
        # this run's hyper-parameters (weight decay, betas, ...) over the checkpoint's; the LR is the scheduler's
        groups = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        optimizer.load_state_dict(state['optimizer'])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f'--resume {args.resume} does not fit {args.model} with --model-kwargs {args.model_kwargs} '
            f'({str(e).splitlines()[0]}); resume with the model arguments the run was started with.') from e
    for group, own in zip(optimizer.param_groups, groups):
        group.update(own)
    start_epoch = state['epoch']
    changes = _schedule_changes(state, args, updates_per_epoch)
    if changes:  # the schedule of this run, continued at the finished epochs
        scheduler.step_update(num_updates=start_epoch * updates_per_epoch)
        if primary:
            _logger.warning(
                f'Resuming with {", ".join(changes)}: the LR schedule is rebuilt for this run ({args.epochs} '
                f'epochs, {updates_per_epoch} updates per epoch, peak LR {args.lr:.3g}) and continues at epoch '
                f'{start_epoch} with LR {optimizer.param_groups[0]["lr"]:.3g}.')
    else:
        scheduler.load_state_dict(state['scheduler'])
        scheduler.step_update(num_updates=start_epoch * updates_per_epoch)
    if step.scaler is not None and state.get('scaler') is not None:
        step.scaler.load_state_dict(state['scaler'])
    rngs = state['rng']
    if len(rngs) != args.world_size and primary:
        _logger.warning(f'{args.resume} was saved by {len(rngs)} processes, this run has {args.world_size}: '
                        'the data order is restored, the random streams are not.')
    set_rng_state(rngs[args.rank] if args.rank < len(rngs) else rngs[0])
    if primary:
        _logger.info(f'Resumed from {args.resume}: {start_epoch} epochs done.')
        if start_epoch >= args.epochs:
            _logger.warning(f'{args.resume} has finished {start_epoch} of {args.epochs} epochs: nothing to do. '
                            f'To train longer pass --epochs N with N > {start_epoch}.')
    return start_epoch


def _schedule_changes(state: dict, args, updates_per_epoch: int) -> List[str]:
    """What makes the checkpoint's LR schedule differ from this run's, as 'name old -> new' strings."""
    saved = state.get('args') or {}
    changes = []
    for name in ('epochs', 'warmup_epochs', 'batch_size', 'world_size', 'lr', 'min_lr'):
        old, new = saved.get(name), getattr(args, name, None)
        if old is not None and old != new:
            changes.append(f'{name} {old} -> {new}')
    old_upe = state.get('updates_per_epoch')
    if old_upe is None and saved.get('epochs'):
        old_upe = state['scheduler'].get('t_initial', 0) // saved['epochs']
    if old_upe is not None and old_upe != updates_per_epoch:
        changes.append(f'updates per epoch {old_upe} -> {updates_per_epoch}')
    return changes


def wrap_for_training(args, model: nn.Module, device: torch.device) -> nn.Module:
    """DDP across processes and ``--torchcompile``; the plain model stays what is saved and plotted."""
    train_model = model
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)
    return train_model


def reconstruction_batch(args, model: nn.Module, device: torch.device) -> torch.Tensor:
    """A fixed batch of 8 images spread over the classes, resized without augmentation, for the reconstruction
    grids."""
    plain = _create_dataset(
        args, is_training=False, transform=create_transform(
            model.encoder.pretrained_cfg['input_size'][-2:], is_training=False, crop_pct=1.0,
            interpolation=args.train_interpolation, mean=tuple(args.mean), std=tuple(args.std)))
    picks = torch.linspace(0, len(plain) - 1, min(8, len(plain))).long().tolist()  # spread over the classes
    return torch.stack([plain[i][0] for i in picks]).to(device)
