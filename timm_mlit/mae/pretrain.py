"""mmLiT pre-training: the masked autoencoder of mLiT Sec. 2.2 trained with Table 3's recipe, timm's train.py way.

    mlit-pretrain --model mlit_xxs --data-dir ~/data/cifar100 --dataset torch/cifar100 --output output/
    mlit-pretrain --resume output/<run>/last.pth
    torchrun --nproc_per_node=4 -m timm_mlit.mae.pretrain --model mlit_s --data-dir ~/data/cifar100_folder

Laid out as MAE's main_pretrain.py and engine_pretrain.py: :mod:`.arguments` reads the command line, :mod:`.build`
makes the data, model, optimiser and schedule and resumes a run, :func:`.engine.train_one_epoch` trains one epoch,
and :class:`.outputs.PretrainRun` writes what each epoch leaves in the run folder. :func:`main` is the loop.
"""
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import torch
from timm.utils import init_distributed_device, random_seed

from timm_mlit._io import signals_unwind
from .arguments import fill_defaults, parse_args, parse_args_and_checkpoint
from .build import (
    build_loader, check_inputs, count_updates, create_model, create_step, create_train_dataset, reconstruction_batch,
    resume, wrap_for_training)
from .checkpoint import gather_rng_states, plain_args
from .engine import train_one_epoch
from .outputs import PretrainRun, output_folder

__all__ = ['main', 'parse_args']

_logger = logging.getLogger('timm_mlit.pretrain')


def main(argv: Optional[List[str]] = None) -> Path:
    """The pre-training run: its arguments, data, model, optimiser and schedule (resumed with ``--resume``), then
    the epochs. Returns the run's output folder."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    with signals_unwind(), ExitStack() as held:  # TERM / HUP unwind; the run folder's lock is held to the end
        args, state = parse_args_and_checkpoint(argv)
        run_args = plain_args(args)  # as given (before the Table 3 defaults): what a resume takes over
        check_inputs(args, state)
        device = init_distributed_device(args)
        primary = args.rank == 0
        fill_defaults(args)
        random_seed(args.seed, args.rank)
        out = output_folder(args, resumed=state is not None)

        model = create_model(args, device)
        if primary:
            _logger.info(_describe(args, model, out))
        dataset = create_train_dataset(args, model)
        updates_per_epoch = count_updates(args, dataset)
        step = create_step(args, model, device, updates_per_epoch)
        start_epoch = 0 if state is None else resume(args, state, model, step, updates_per_epoch)
        run = None
        if primary:  # the folder only now, so that a run that fails to start leaves none behind
            run = held.enter_context(PretrainRun(
                out, args, model, step, run_args=run_args, updates_per_epoch=updates_per_epoch,
                start_epoch=start_epoch, recon_imgs=reconstruction_batch(args, model, device)))
        train_model = wrap_for_training(args, model, device)

        for epoch in range(start_epoch, args.epochs):
            row, step_losses = train_one_epoch(
                train_model, model, build_loader(args, epoch, dataset), step, device, epoch, num_epochs=args.epochs,
                world_size=args.world_size, progress=primary and not args.no_progress)
            done = epoch + 1
            checkpoint = done % args.checkpoint_interval == 0 or done == args.epochs
            rngs = gather_rng_states(args.distributed) if checkpoint else None  # collective: every process
            if run is not None:
                run.end_epoch(row, step_losses, checkpoint_rngs=rngs)
        if args.distributed:
            torch.distributed.destroy_process_group()
        return out


def _describe(args, model, out: Path) -> str:
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    return (f'MAE pre-training {args.model}: encoder {n_enc:,} params, decoder {model.decoder_param_count():,} '
            f'{"(Table 2: 0.34M)" if args.model.startswith("mlit_") else "(our choice)"}; {args.epochs} epochs, '
            f'batch {args.batch_size} x {args.world_size}, lr {args.lr:.3g}, warm-up {args.warmup_epochs} epochs; '
            f'output {out}')


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-pretrain', main)
