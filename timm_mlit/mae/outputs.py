"""What a pre-training run leaves in its folder, written by the primary process through :class:`PretrainRun`.

``log.csv`` and ``log.jsonl`` (a row per epoch, epochs counted from 0: losses, LR, speed; the JSON adds the expert
load), ``steps.csv`` (every update's loss), ``loss_curve.png`` and ``expert_load.png`` when matplotlib imports,
``recon_epochNNNNN.png`` every ``--recon-interval`` epochs, and at every checkpoint ``encoder.safetensors`` (the
encoder alone, for timm) and ``last.pth`` (resumable). NNNNN in a file's name is the epoch, counted from 0 as in
the logs, the console and timm's train.py (``checkpoint-N.pth.tar``).

A new run refuses a folder that already holds a run, and a run holds a lock on its folder (``.mlit-lock``) while it
lives, so a second writer is refused. A resumed run first cuts its logs back to the checkpoint's epochs.
"""
import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn

from timm_mlit._io import FolderLock, append_text, remove_stale_temporaries, write_text
from .arguments import UsageError
from .checkpoint import export_encoder, plain_args, save_checkpoint
from .engine import Step
from .visualize import have_matplotlib, plot_expert_load, plot_loss_curve, save_reconstructions

__all__ = ['PretrainRun', 'RunLog', 'output_folder', 'LOG_FIELDS']

_logger = logging.getLogger('timm_mlit.pretrain')

LOG_FIELDS = ['epoch', 'loss', 'mse_masked', 'mse_unmasked', 'moe_loss', 'lr', 'epoch_time_s', 'images_per_s']

_NEW_RUN_FIX = ('Continue that run with --resume OUTPUT/EXPERIMENT/last.pth (or --resume auto), or start a new one '
                'under another --experiment.')


def output_folder(args, resumed: bool) -> Path:
    """The resumed checkpoint's folder, else OUTPUT/EXPERIMENT (default <model>-<time>); not created yet."""
    if resumed:
        out = Path(args.resume).parent
    else:
        out = Path(args.output) / (args.experiment or f'{args.model}-{time.strftime("%Y%m%d-%H%M%S")}')
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f'--output {args.output}: {folder} is a file; expected a folder for the run\'s logs '
                             f'and checkpoints: pass another --output.')
    found = sorted(p.name for p in out.iterdir() if p.name != FolderLock.NAME) if out.is_dir() and not resumed else []
    if found and not (out / 'last.pth').exists():  # nothing to resume: do not offer --resume
        shown = ', '.join(found[:5]) + (f' and {len(found) - 5} more' if len(found) > 5 else '')
        raise UsageError(f'--output/--experiment {out} holds a run already ({shown}) but no last.pth: it stopped '
                         f'before its first checkpoint (or the files are not a run), so there is nothing to --resume '
                         f'from; nothing was changed. Start the new run under another --experiment, or remove {out} '
                         f'first if its files are not needed.')
    if found:
        raise UsageError(f'--output/--experiment {out} holds a run already: a new run would overwrite its last.pth, '
                         f'encoder.safetensors and logs; nothing was changed. {_NEW_RUN_FIX}')
    return out


class RunLog:
    """Append-only logs: ``log.csv`` and ``log.jsonl`` (one row per epoch; the JSON adds the expert load) and
    ``steps.csv`` (every update's loss), and the plots drawn from them. On resume, rows of epochs the checkpoint does
    not hold are dropped."""

    def __init__(self, out: Path, start_epoch: int):
        self.out = out
        self.history: List[dict] = []
        jsonl = out / 'log.jsonl'
        if jsonl.is_file():
            for line in jsonl.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if row['epoch'] < start_epoch:
                    self.history.append(row)
        steps = []
        if (out / 'steps.csv').is_file():
            with open(out / 'steps.csv') as f:
                steps = [r for r in csv.DictReader(f) if r.get('loss') and int(r['epoch']) < start_epoch]
        self._rewrite(steps)

    def _rewrite(self, steps) -> None:
        """The logs cut back to the checkpoint's epochs, each replaced atomically: a kill now keeps the old ones."""
        log, step_log = io.StringIO(), io.StringIO()
        w = csv.DictWriter(log, fieldnames=LOG_FIELDS, extrasaction='ignore')
        w.writeheader()
        w.writerows(self.history)
        w = csv.DictWriter(step_log, fieldnames=['epoch', 'step', 'loss'])
        w.writeheader()
        w.writerows(steps)
        write_text(self.out / 'log.csv', log.getvalue(), overwrite=True)
        write_text(self.out / 'log.jsonl', ''.join(json.dumps(row) + '\n' for row in self.history), overwrite=True)
        write_text(self.out / 'steps.csv', step_log.getvalue(), overwrite=True)

    def append(self, row: dict, step_losses: List[float]) -> None:
        self.history.append(row)
        log, step_log = io.StringIO(), io.StringIO()
        csv.DictWriter(log, fieldnames=LOG_FIELDS, extrasaction='ignore').writerow(row)
        csv.writer(step_log).writerows(
            [row['epoch'], i, loss] for i, loss in enumerate(step_losses))
        append_text(self.out / 'log.csv', log.getvalue())
        append_text(self.out / 'log.jsonl', json.dumps(row) + '\n')
        append_text(self.out / 'steps.csv', step_log.getvalue())

    def plot(self, model_name: str) -> None:
        """``loss_curve.png`` and ``expert_load.png`` from the logged epochs."""
        if not have_matplotlib():
            return
        epochs = [h['epoch'] for h in self.history]
        plot_loss_curve(
            epochs, {k: [h[k] for h in self.history] for k in ('loss', 'mse_masked', 'mse_unmasked')},
            self.out / 'loss_curve.png', title=f'MAE pre-training, {model_name}')
        layers = list(self.history[-1]['expert_load'])
        if not layers:  # a dense encoder and decoder (maevit_c100): no experts to plot
            return
        plot_expert_load(
            epochs, [h['expert_load'] for h in self.history],
            self.out / 'expert_load.png', title=f'Expert load, MAE pre-training, {model_name}')


class PretrainRun:
    """The run folder ``out`` of the pre-training run ``args`` on ``model``, and what each epoch writes to it.

    A context manager: entering creates the folder, takes its lock, removes temporaries a killed save left and opens
    the :class:`RunLog`, cut back to ``start_epoch``; leaving releases the lock. ``step`` is the optimiser state
    saved in ``last.pth`` with ``run_args`` (the arguments as given, which a resume takes over) and
    ``updates_per_epoch``; ``recon_imgs`` is the fixed batch of the reconstruction grids."""

    def __init__(self, out: Path, args, model: nn.Module, step: Step, *, run_args: dict, updates_per_epoch: int,
                 start_epoch: int, recon_imgs: torch.Tensor):
        self.out, self.args, self.model, self.step = out, args, model, step
        self.run_args, self.updates_per_epoch, self.start_epoch = run_args, updates_per_epoch, start_epoch
        self.recon_imgs = recon_imgs
        self.log: Optional[RunLog] = None  # on entering
        self._lock = FolderLock(out, '--output/--experiment', fresh=not args.resume, fix=_NEW_RUN_FIX)

    def __enter__(self) -> 'PretrainRun':
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            for path in remove_stale_temporaries(self.out):
                _logger.info(f'removed {path}, left by a run killed while saving')
            self.log = RunLog(self.out, self.start_epoch)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def end_epoch(self, row: dict, step_losses: List[float], checkpoint_rngs: Optional[List[dict]] = None) -> None:
        """The outputs of the finished epoch ``row['epoch']``: its log rows and line, the plots every
        ``--plot-interval``, a reconstruction grid every ``--recon-interval``, and, given every process's RNG
        state (``checkpoint_rngs``), the checkpoint. The last epoch gets the plots and a grid."""
        epoch, epochs = row['epoch'], self.args.epochs
        done = epoch + 1
        self.log.append(row, step_losses)
        _logger.info(
            f'epoch {epoch}/{epochs - 1}  loss {row["loss"]:.5f}  masked {row["mse_masked"]:.5f}  '
            f'unmasked {row["mse_unmasked"]:.5f}  moe {row["moe_loss"]:.4f}  {row["images_per_s"]:.0f} img/s')
        if done % self.args.plot_interval == 0 or done == epochs:
            self.log.plot(self.args.model)
        if done % self.args.recon_interval == 0 or done == epochs:
            self.save_reconstructions(epoch)
        if checkpoint_rngs is not None:
            self.save_checkpoint(done, checkpoint_rngs)
        elif self.args.keep_every and done % self.args.keep_every == 0:  # every --keep-every, checkpoint or not
            self.keep_encoder(done)

    def save_reconstructions(self, epoch: int) -> None:
        """``recon_epochNNNNN.png`` at the end of ``epoch`` (from 0): the same images and mask every time."""
        device = self.recon_imgs.device
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            torch.manual_seed(0)  # the same mask every time, and the training RNG untouched
            save_reconstructions(
                self.model, self.recon_imgs, self.args.mean, self.args.std, self.out / f'recon_epoch{epoch:05d}.png')

    def _encoder_meta(self, done: int) -> dict:
        return {'architecture': self.args.model, 'mae_epochs': done, 'source': 'timm_mlit mmLiT pre-training'}

    def keep_encoder(self, done: int) -> None:
        """``encoder-epochNNNNN.safetensors``: the encoder after ``done`` epochs (NNNNN = ``done - 1``, the epoch
        counted from 0), kept beside the checkpoints."""
        export_encoder(self.model.encoder, self.out / f'encoder-epoch{done - 1:05d}.safetensors',
                       self._encoder_meta(done))

    def save_checkpoint(self, done: int, rngs: List[dict]) -> None:
        """``encoder.safetensors`` (and ``encoder-epochNNNNN.safetensors`` every ``--keep-every``) for timm, then
        ``last.pth``, everything needed to continue exactly after ``done`` epochs with the RNG states ``rngs``
        (one per process)."""
        args, model, step = self.args, self.model, self.step
        export_encoder(model.encoder, self.out / 'encoder.safetensors', self._encoder_meta(done))
        if args.keep_every and done % args.keep_every == 0:
            self.keep_encoder(done)
        save_checkpoint(self.out / 'last.pth', {
            'model': model.state_dict(), 'optimizer': step.optimizer.state_dict(),
            'scheduler': step.scheduler.state_dict(), 'scaler': step.scaler.state_dict() if step.scaler else None,
            'epoch': done, 'rng': rngs, 'args': plain_args(args), 'run_args': self.run_args,
            'updates_per_epoch': self.updates_per_epoch})
