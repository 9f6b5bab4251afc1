"""mmLiT pre-training: the masked autoencoder of Sec. 2.2 trained with Table 3's recipe, timm's train.py way.

    mlit-pretrain --model mlit_xxs --data-dir ~/data/cifar100 --dataset torch/cifar100 --output output/
    mlit-pretrain --resume output/<run>/last.pth
    torchrun --nproc_per_node=4 -m timm_mlit.mae.pretrain --model mlit_s --data-dir ~/data/cifar100_folder

(from a clone: ``python train_scripts/pretrain_mae.py ...``). Data flags are train.py's (``--data-dir``,
``--dataset``: ``''``, the default, reads an ImageFolder ``DATA/train/<class>/*``, ``torch/cifar100`` torchvision's
files; ``--train-split``), as are ``--epochs``, ``--batch-size``, ``--output``, ``--resume``, ``--amp`` / ``--amp-dtype``
and ``--config`` (a YAML of these arguments, or a shipped recipe's name such as ``maevit_c100_pretrain_mae``; the
command line wins). Left unset, each size gets Table 3:
AdamW, weight decay 0.05, base LR 3e-4 scaled linearly (lr = base × global batch / 256, mLiT Eq. 17), warm-up 5% of the
epochs, cosine decay, epochs 4000 (S) / 6000 (XS) / 8000 (XXS), batch 840 (S) / 1280 (XS, XXS), horizontal flip,
random-resized-crop [0.6, 1], mean = std = 0.5. Choices the paper leaves open: AdamW betas (0.9, 0.95) and LR floor
0 as MAE's pre-training, a per-step schedule, bicubic resize. The cosine is not shifted past the warm-up: timm's
cosine counts from update 0 over all the epochs and the linear warm-up (from 0) overlays its first 5%, so at the end
of the warm-up the cosine takes over at 0.5 x (1 + cos(0.05 pi)) = 99.4% of the peak LR (MAE's code instead fits
its cosine into the epochs after the warm-up).

The output folder gets: ``log.csv`` and ``log.jsonl`` (per epoch: losses, LR, speed; the JSON adds the expert load),
``steps.csv`` (every update's loss), ``loss_curve.png`` (log-log, Figure 6) and ``expert_load.png`` when matplotlib
is installed, ``recon_epochNNNNN.png`` every ``--recon-interval`` epochs, ``last.pth`` (resumable) and
``encoder.safetensors`` (the encoder alone, for timm) at every checkpoint. A new run refuses a folder that already
holds a run, and a run holds a lock on its folder (``.mlit-lock``) while it lives, so a second writer is refused.
``--resume OUTPUT/RUN/last.pth`` (or ``--resume auto``) continues exactly: a run killed mid-epoch restarts that
epoch from the last checkpoint's state. Arguments not given again are taken from the checkpoint (the command line,
then ``--config``, then the checkpoint's run, then the defaults). The LR schedule is a function of the run's epochs,
warm-up, LR and updates per epoch (global batch): resumed with a different batch size, process count, epoch count or
LR, it is rebuilt for the new run and continued at the finished epochs (the log names what changed); unchanged, the
checkpoint's schedule is restored exactly.

The code follows MAE's main_pretrain.py / engine_pretrain.py split: :func:`main` parses the arguments, resumes,
builds the data, model, optimiser and schedule and runs the epoch loop; :func:`train_one_epoch` is one epoch of
updates and returns its metrics; :func:`write_epoch_outputs` writes an epoch's logs, plots, reconstructions and
checkpoints (:func:`save_epoch_checkpoint`).
"""
import argparse
import csv
import io
import json
import logging
import math
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_dataset, create_transform
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import NativeScaler, init_distributed_device, random_seed
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from timm_mlit._io import FolderLock, append_text, remove_stale_temporaries, signals_unwind, write_text
from timm_mlit.argtypes import (
    ArgumentError, check_model_kwargs, check_warmup, finite_float, float_in, fraction, model_kwargs as model_kwargs_arg,
    nonneg_float, nonneg_int, positive_float, positive_int, probability)
from timm_mlit.errors import UserInputError
from timm_mlit.layers import expert_load
from timm_mlit.recipes import recipe_path
from .checkpoint import (
    RESUME_HINT, CheckpointError, export_encoder, load_checkpoint, plain_args, rng_state, save_checkpoint,
    set_rng_state)
from .model import create_mae
from .visualize import have_matplotlib, plot_expert_load, plot_loss_curve, save_reconstructions

__all__ = ['TABLE3', 'build_parser', 'parse_args', 'main', 'train_one_epoch', 'write_epoch_outputs', 'UsageError']

_logger = logging.getLogger('timm_mlit.pretrain')

# Table 3, per size: epochs and batch (warm-up is 5% of the epochs for all)
TABLE3 = {
    'mlit_s': dict(epochs=4000, batch_size=840),
    'mlit_xs': dict(epochs=6000, batch_size=1280),
    'mlit_xxs': dict(epochs=8000, batch_size=1280),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog='mlit-pretrain')
    p.add_argument('--config', default='', help='YAML of these arguments (by their dest names)')
    d = p.add_argument_group('data (as train.py)')
    d.add_argument('--data-dir', default=None, help='dataset root')
    d.add_argument('--dataset', default='', help="timm dataset name as train.py's: '' (default) reads an ImageFolder "
                                                 "(DATA/train/<class>/*), torch/cifar100 torchvision's files")
    d.add_argument('--train-split', default='train')
    d.add_argument('--dataset-download', action='store_true', default=False)
    d.add_argument('--workers', type=nonneg_int, default=4)
    d.add_argument('--scale', type=float_in(0, 1, lo_open=True), nargs=2, default=[0.6, 1.0],
                   help='random-resized-crop scale (Table 3)')
    d.add_argument('--ratio', type=positive_float, nargs=2, default=[3 / 4, 4 / 3])
    d.add_argument('--hflip', type=probability, default=0.5)
    d.add_argument('--mean', type=finite_float, nargs=3, default=[0.5, 0.5, 0.5])
    d.add_argument('--std', type=positive_float, nargs=3, default=[0.5, 0.5, 0.5])
    d.add_argument('--train-interpolation', default='bicubic')
    m = p.add_argument_group('model')
    m.add_argument('--model', default='mlit_xxs', help='encoder: any registered mLiT, or maevit_c100')
    m.add_argument('--mask-ratio', type=fraction, default=0.75)
    m.add_argument('--alpha', type=nonneg_float, default=0.1, help='weight of the loss on visible patches (mLiT Eq. 16)')
    m.add_argument('--beta', type=nonneg_float, default=0.5, help='weight of the MoE loss (mLiT Eq. 16)')
    m.add_argument('--decoder-pos', default='encoder', choices=['encoder', 'separate'],
                   help="'encoder': the text's reading (no decoder table); 'separate': a 145x108 decoder table")
    m.add_argument('--encoder-pos-to', default='mask', choices=['mask', 'all'],
                   help='with --decoder-pos encoder: add the encoder positions to the mask tokens only, or to all')
    m.add_argument('--model-kwargs', type=model_kwargs_arg, default={}, help='encoder kwargs as a YAML/JSON dict')
    o = p.add_argument_group('optimisation (Table 3)')
    o.add_argument('--epochs', type=positive_int, default=None, help='default: Table 3 for the size')
    o.add_argument('--batch-size', type=positive_int, default=None, help='per process; default: Table 3 / world size')
    o.add_argument('--lr', type=positive_float, default=None,
                   help='absolute LR; default lr-base x global batch / 256 (mLiT Eq. 17)')
    o.add_argument('--lr-base', type=positive_float, default=3e-4)
    o.add_argument('--lr-base-size', type=positive_int, default=256)
    o.add_argument('--warmup-epochs', type=nonneg_int, default=None, help='default: 5%% of the epochs')
    o.add_argument('--min-lr', type=nonneg_float, default=0.0)
    o.add_argument('--opt', default='adamw')
    o.add_argument('--opt-betas', type=float_in(0, 1, hi_open=True), nargs=2, default=[0.9, 0.95])
    o.add_argument('--weight-decay', type=nonneg_float, default=0.05)
    o.add_argument('--amp', action='store_true', default=False, help='mixed precision (float16 + GradScaler)')
    o.add_argument('--amp-dtype', default='float16', choices=['float16', 'bfloat16'])
    r = p.add_argument_group('run')
    r.add_argument('--output', default='./output/pretrain', help='folder for logs, images and checkpoints')
    r.add_argument('--experiment', default='', help='subfolder name (default: <model>-<time>)')
    r.add_argument('--resume', default='', help="a last.pth to continue from, or 'auto' for OUTPUT/EXPERIMENT/last.pth; "
                                                "arguments not given are taken from it")
    r.add_argument('--checkpoint-interval', type=positive_int, default=1, help='epochs between checkpoints')
    r.add_argument('--keep-every', type=nonneg_int, default=0, help='also keep encoder-epochNNNNN.safetensors every N')
    r.add_argument('--recon-interval', type=positive_int, default=50, help='epochs between reconstruction grids')
    r.add_argument('--plot-interval', type=positive_int, default=10, help='epochs between plot updates')
    r.add_argument('--seed', type=nonneg_int, default=42)
    r.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    r.add_argument('--no-progress', action='store_true', default=False, help='no tqdm progress bar')
    r.add_argument('--torchcompile', nargs='?', default=None, const='inductor',
                   help='torch.compile the training model with this backend (as train.py; default inductor)')
    return p


class UsageError(UserInputError):
    """An argument or input of the pre-training command that cannot work; the message names it and the fix."""


# arguments a resumed run does not take from its checkpoint: where to resume from, the YAML, the machine's device
_NOT_RESUMED = {'resume', 'config', 'device'}


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    try:  # a file, or a shipped recipe's name (mlit-config --list)
        config = recipe_path(path)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f'--config {path}: {e} Expected a YAML file of these arguments, e.g. maevit_c100_pretrain_mae.')
    try:
        cfg = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        parser.error(f'--config {path} is not valid YAML ({str(e).splitlines()[0]}); expected a YAML mapping of '
                     f'these arguments by their names, e.g. "epochs: 100"; fix the file.')
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        parser.error(f'--config {path} holds a {type(cfg).__name__}, expected a YAML mapping of these arguments by '
                     f'their names, e.g. "epochs: 100" on its own line.')
    actions = {a.dest: a for a in parser._actions}
    unknown = set(map(str, cfg)) - set(actions)
    if unknown:
        parser.error(f'--config {path}: unknown keys {sorted(unknown)}; the keys are the arguments\' names with '
                     f'"_" for "-" (see --help).')
    for key, value in cfg.items():
        problem = _config_value_problem(actions[key], value)
        if problem:
            parser.error(f'--config {path}: {key}: {value!r} is not {problem}; fix the value in the file.')
    return cfg


def _config_value_problem(action: argparse.Action, value) -> str:
    """'' when ``value`` fits ``action`` (YAML gives typed values, which argparse does not check), else what it
    should be. Numbers go through the argument's own type, so a YAML value has the command line's range."""
    if value is None or isinstance(value, str) and action.type not in (None, str) and action.nargs is None:
        return ''  # None keeps the default; argparse converts (and checks) a string default itself
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return '' if isinstance(value, bool) else 'true or false'
    if action.type is model_kwargs_arg:
        if not isinstance(value, dict):
            return 'a mapping of model arguments'
        try:
            check_model_kwargs(value, 'model_kwargs')
        except ArgumentError as e:
            return f'usable ({e})'
        return ''
    if action.type not in (None, str):
        expected = getattr(action.type, '__name__', 'a number')
        if isinstance(action.nargs, int):
            if not (isinstance(value, list) and len(value) == action.nargs):
                return f'a list of {action.nargs} values, each {expected}'
            values = value
        else:
            values = [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return expected
            try:
                action.type(str(v))
            except argparse.ArgumentTypeError:
                return expected
        return ''
    if action.choices is not None and value not in action.choices:
        return f'one of {list(action.choices)}'
    if action.type is None and not isinstance(value, str):
        return 'a string'
    return ''


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not 0.0 < args.mask_ratio < 1.0:
        parser.error(f'--mask-ratio {args.mask_ratio}: expected a fraction of the patches to hide, strictly between '
                     f'0 and 1 (MAE and mmLiT: 0.75); with 1 the encoder sees nothing, with 0 there is nothing to '
                     f'reconstruct.')
    for name in ('epochs', 'batch_size', 'checkpoint_interval', 'recon_interval', 'plot_interval'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} {value}: expected a positive integer.')
    for name in ('warmup_epochs', 'workers', 'keep_every'):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f'--{name.replace("_", "-")} {value}: expected 0 or more.')
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f'--lr {args.lr}: expected a positive learning rate.')
    if not isinstance(args.model_kwargs, dict):
        parser.error(f'--model-kwargs {args.model_kwargs!r}: expected a YAML/JSON mapping such as '
                     f'\'{{"decoder_num_experts": 0}}\'.')
    for name in ('scale', 'ratio'):
        low, high = getattr(args, name)
        if low > high:
            parser.error(f'--{name} {low} {high}: expected MIN MAX with MIN <= MAX; swap them.')
    try:
        check_model_kwargs(args.model_kwargs, f'--model-kwargs {args.model_kwargs!r}')
        # the run's length: --epochs, else Table 3's for the size (the default warm-up, 5%, always fits)
        check_warmup(args.warmup_epochs, args.epochs or TABLE3.get(args.model, {}).get('epochs', 800))
    except ArgumentError as e:
        parser.error(str(e))


def _parse(argv: Optional[List[str]] = None):
    """The arguments and, with --resume, the checkpoint (loaded once). Precedence: command line, --config, the
    checkpoint's run, the defaults."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    cfg = _read_config(pre.config, parser) if pre.config else {}
    parser.set_defaults(**cfg)
    pre, _ = parser.parse_known_args(argv)
    state, resume = None, pre.resume
    if resume:
        if resume == 'auto':  # OUTPUT/EXPERIMENT/last.pth, as the run wrote it
            resume = str(Path(pre.output) / (pre.experiment or '') / 'last.pth')
        state = load_checkpoint(resume)
        saved = state.get('run_args') or state.get('args') or {}
        dests = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in saved.items() if k in dests and k not in _NOT_RESUMED})
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    args.resume = resume
    _validate(args, parser)
    return args, state


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return _parse(argv)[0]


def _fill_defaults(args: argparse.Namespace) -> None:
    table = TABLE3.get(args.model, {})
    if args.epochs is None:
        args.epochs = table.get('epochs', 800)
    if args.batch_size is None:
        args.batch_size = max(1, table.get('batch_size', 256) // args.world_size)
    if args.warmup_epochs is None:
        args.warmup_epochs = int(round(0.05 * args.epochs))
    if args.lr is None:
        args.lr = args.lr_base * args.batch_size * args.world_size / args.lr_base_size


def build_loader(args, epoch: int, dataset) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch): resuming an epoch replays it."""
    sampler = DistributedSampler(
        dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)  # seeds the workers' RNGs
    return DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
        pin_memory=args.device.startswith('cuda'), generator=generator, persistent_workers=False)


LOG_FIELDS = ['epoch', 'loss', 'mse_masked', 'mse_unmasked', 'moe_loss', 'lr', 'epoch_time_s', 'images_per_s']


class RunLog:
    """Append-only logs: ``log.csv`` and ``log.jsonl`` (one row per epoch; the JSON adds the expert load) and
    ``steps.csv`` (every update's loss). On resume, rows of epochs the checkpoint does not hold are dropped."""

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


_TORCH_DATASET_FOLDERS = {'cifar-10-batches-py': 'torch/cifar10', 'cifar-100-python': 'torch/cifar100'}


def _check_data(args) -> None:
    """Errors that name the data flags, before timm or torchvision give theirs."""
    if args.data_dir is None:
        raise UsageError(
            '--data-dir is missing: expected an ImageFolder (DATA/train/<class>/*.png, what `mlit-prepare-data '
            'cifar10` writes) or, with --dataset torch/cifar100, the folder holding torchvision\'s files.')
    root = Path(args.data_dir).expanduser()
    if not root.is_dir() and not (args.dataset.startswith('torch/') and args.dataset_download):
        raise UsageError(f'--data-dir {root}: no such folder; expected the dataset root (an ImageFolder with '
                         f'{args.train_split}/<class>/ or, with --dataset torch/..., torchvision\'s files).')
    if not args.dataset:
        found = [name for name in _TORCH_DATASET_FOLDERS if (root / name).is_dir()]
        if found and not (root / args.train_split).is_dir():
            raise UsageError(
                f'--data-dir {root} holds torchvision\'s {found[0]}/, not an ImageFolder, and --dataset is \'\' '
                f'(an ImageFolder, as train.py). Pass --dataset {_TORCH_DATASET_FOLDERS[found[0]]}.')


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


class Step(NamedTuple):
    """What one update needs besides the model and the batch: mixed precision and the optimiser's state."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[], Any]
    scaler: Optional[NativeScaler]


def main(argv: Optional[List[str]] = None) -> Path:
    """The pre-training run: arguments and resume, data, model, optimiser and schedule, then the epochs, each one
    :func:`train_one_epoch` followed by :func:`write_epoch_outputs`. Returns the run's output folder."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    with signals_unwind(), ExitStack() as held:  # TERM / HUP unwind; the run folder's lock is held to the end
        args, state = _parse(argv)
        run_args = plain_args(args)  # as given (before the Table 3 defaults): what a resume takes over
        _check_resumed_model(args, state)
        if not timm.is_model(args.model):
            raise UsageError(f'--model {args.model}: not a registered model; expected an mLiT encoder '
                             f'({", ".join(timm.list_models("mlit_*"))}) or maevit_c100.')
        _check_data(args)
        device = init_distributed_device(args)
        primary = args.rank == 0
        _fill_defaults(args)
        random_seed(args.seed, args.rank)
        out = _output_folder(args, resumed=state is not None)

        model = _create_model(args, device)
        if primary:
            n_enc = sum(p.numel() for p in model.encoder.parameters())
            _logger.info(
                f'MAE pre-training {args.model}: encoder {n_enc:,} params, decoder {model.decoder_param_count():,} '
                f'{"(Table 2: 0.34M)" if args.model.startswith("mlit_") else "(our choice)"}; {args.epochs} epochs, '
                f'batch {args.batch_size} x {args.world_size}, lr {args.lr:.3g}, warm-up {args.warmup_epochs} epochs; '
                f'output {out}')
        dataset = _create_train_dataset(args, model)
        updates_per_epoch = len(build_loader(args, 0, dataset))
        if updates_per_epoch == 0:
            raise UsageError(
                f'--data-dir {args.data_dir}: {len(dataset)} images give no full batch of --batch-size '
                f'{args.batch_size} x {args.world_size} processes: lower --batch-size.')
        step = _create_step(args, model, device, updates_per_epoch)
        start_epoch = 0 if state is None else _resume(args, state, model, step, updates_per_epoch)

        if primary:  # only now, so that a run that fails to start leaves no folder behind
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(FolderLock(out, '--output/--experiment', fresh=state is None, fix=_NEW_RUN_FIX))
            for path in remove_stale_temporaries(out):
                _logger.info(f'removed {path}, left by a run killed while saving')
        log = RunLog(out, start_epoch) if primary else None
        train_model = _wrap_for_training(args, model, device)
        recon_imgs = _reconstruction_batch(args, model, device) if primary else None

        for epoch in range(start_epoch, args.epochs):
            row, step_losses = train_one_epoch(
                train_model, model, build_loader(args, epoch, dataset), step, device, epoch, args)
            done = epoch + 1
            checkpoint_now = done % args.checkpoint_interval == 0 or done == args.epochs
            rngs = _gather_rng_states(args) if checkpoint_now else [rng_state()]
            if primary:
                write_epoch_outputs(
                    out, log, row, step_losses, model, step, args, run_args, rngs, updates_per_epoch, recon_imgs,
                    checkpoint_now, device)
        if args.distributed:
            torch.distributed.destroy_process_group()
        return out


def _check_resumed_model(args, state: Optional[dict]) -> None:
    saved = (state or {}).get('args') or {}
    if saved.get('model') not in (None, args.model):
        raise CheckpointError(
            f'--resume {args.resume} pre-trains {saved["model"]}, not {args.model}: pass --model '
            f'{saved["model"]} (or leave --model out; a resume takes it from the checkpoint).')


def _output_folder(args, resumed: bool) -> Path:
    """The resumed checkpoint's folder, else OUTPUT/EXPERIMENT (default <model>-<time>); not created yet."""
    if resumed:
        out = Path(args.resume).parent
    else:
        out = Path(args.output) / (args.experiment or f'{args.model}-{time.strftime("%Y%m%d-%H%M%S")}')
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f'--output {args.output}: {folder} is a file; expected a folder for the run\'s logs '
                             f'and checkpoints: pass another --output.')
    if not resumed and out.is_dir() and any(p.name != FolderLock.NAME for p in out.iterdir()):
        raise UsageError(f'--output/--experiment {out} holds a run already: a new run would overwrite its last.pth, '
                         f'encoder.safetensors and logs; nothing was changed. {_NEW_RUN_FIX}')
    return out


_NEW_RUN_FIX = ('Continue that run with --resume OUTPUT/EXPERIMENT/last.pth (or --resume auto), or start a new one '
                'under another --experiment.')


def _create_model(args, device: torch.device) -> nn.Module:
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


def _create_train_dataset(args, model: nn.Module):
    """The training images with Table 3's augmentation (random-resized-crop, flip, mean = std = 0.5)."""
    transform = create_transform(
        model.encoder.pretrained_cfg['input_size'][-2:], is_training=True, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, vflip=0., color_jitter=None, auto_augment=None,
        interpolation=args.train_interpolation, mean=tuple(args.mean), std=tuple(args.std), re_prob=0.)
    return _create_dataset(args, is_training=True, batch_size=args.batch_size, transform=transform)


def _create_step(args, model: nn.Module, device: torch.device, updates_per_epoch: int) -> Step:
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


def _resume(args, state: dict, model: nn.Module, step: Step, updates_per_epoch: int) -> int:
    """Load the checkpoint's model, optimiser, schedule, scaler and RNG states; returns the finished epochs."""
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


def _wrap_for_training(args, model: nn.Module, device: torch.device) -> nn.Module:
    """DDP across processes and ``--torchcompile``; the plain model stays what is saved and plotted."""
    train_model = model
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)
    return train_model


def _reconstruction_batch(args, model: nn.Module, device: torch.device) -> torch.Tensor:
    """A fixed batch of 8 images spread over the classes, resized without augmentation, for the reconstruction
    grids."""
    plain = _create_dataset(
        args, is_training=False, transform=create_transform(
            model.encoder.pretrained_cfg['input_size'][-2:], is_training=False, crop_pct=1.0,
            interpolation=args.train_interpolation, mean=tuple(args.mean), std=tuple(args.std)))
    picks = torch.linspace(0, len(plain) - 1, min(8, len(plain))).long().tolist()  # spread over the classes
    return torch.stack([plain[i][0] for i in picks]).to(device)


def train_one_epoch(
        train_model: nn.Module, model: nn.Module, loader: DataLoader, step: Step, device: torch.device, epoch: int,
        args) -> Tuple[dict, List[float]]:
    """One epoch of updates, the LR set per update by the schedule (warm-up, then cosine). Returns the epoch's
    ``log.csv`` row (mean losses, LR, speed, expert load) and every update's loss.

    ``model`` is ``train_model`` unwrapped (DDP, torch.compile), read for the expert load. Statistics stay on the
    device; the host reads them once per epoch (and every 20 steps for the progress bar). A non-finite loss stops
    the run with ``FloatingPointError`` before anything of the epoch is written."""
    optimizer, scheduler, scaler = step.optimizer, step.scheduler, step.scaler
    primary = args.rank == 0
    train_model.train()
    num_updates = epoch * len(loader)
    sums = {k: torch.zeros((), device=device) for k in ('loss', 'mse_masked', 'mse_unmasked', 'moe_loss')}
    load_sums: Dict[str, torch.Tensor] = {}
    step_losses = []
    start = time.time()
    bar = tqdm(loader, desc=f'epoch {epoch + 1}/{args.epochs}', disable=not primary or args.no_progress,
               leave=False, unit='batch')
    for i, (imgs, _) in enumerate(bar):
        imgs = imgs.to(device, non_blocking=True)
        with step.autocast():
            output = train_model(imgs)
        if scaler is not None:
            scaler(output.loss, optimizer)
        else:
            output.loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        loss = output.loss.detach()
        step_losses.append(loss)
        sums['loss'] += loss
        for k, v in output.parts.items():
            sums[k] += v
        for name, share in expert_load(model).items():
            load_sums[name] = load_sums.get(name, 0) + share
        if i % 20 == 0 and primary and not args.no_progress:
            bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
    scheduler.step(epoch + 1)
    seconds = time.time() - start
    n = len(step_losses)
    step_losses = torch.stack(step_losses).tolist()
    if not all(math.isfinite(x) for x in step_losses):
        raise FloatingPointError(f'non-finite loss in epoch {epoch + 1}: stopping (last checkpoint is intact).')
    row = {'epoch': epoch, **{k: v.item() / n for k, v in sums.items()}}
    row.update(
        lr=optimizer.param_groups[0]['lr'], epoch_time_s=seconds,
        images_per_s=n * args.batch_size * args.world_size / max(seconds, 1e-9),
        expert_load={name: (v / n).tolist() for name, v in load_sums.items()})
    return row, step_losses


def _gather_rng_states(args) -> List[dict]:
    """Every process's RNG state (collective: all ranks call it), so that each resumes its own stream."""
    if not args.distributed:
        return [rng_state()]
    rngs = [None] * args.world_size
    torch.distributed.all_gather_object(rngs, rng_state())
    return rngs


def write_epoch_outputs(
        out: Path, log: RunLog, row: dict, step_losses: List[float], model: nn.Module, step: Step, args,
        run_args: dict, rngs: List[dict], updates_per_epoch: int, recon_imgs: torch.Tensor, checkpoint_now: bool,
        device: torch.device) -> None:
    """The primary process's outputs of a finished epoch: the log rows and line, the plots every
    ``--plot-interval``, a reconstruction grid every ``--recon-interval``, and (when ``checkpoint_now``)
    ``encoder.safetensors`` and the resumable ``last.pth``; the last epoch gets all of them."""
    done = row['epoch'] + 1
    last = done == args.epochs
    log.append(row, step_losses)
    _logger.info(
        f'epoch {done}/{args.epochs}  loss {row["loss"]:.5f}  masked {row["mse_masked"]:.5f}  '
        f'unmasked {row["mse_unmasked"]:.5f}  moe {row["moe_loss"]:.4f}  {row["images_per_s"]:.0f} img/s')
    if done % args.plot_interval == 0 or last:
        log.plot(args.model)
    if done % args.recon_interval == 0 or last:
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            torch.manual_seed(0)  # the same mask every time, and the training RNG untouched
            save_reconstructions(model, recon_imgs, args.mean, args.std, out / f'recon_epoch{done:05d}.png')
    if checkpoint_now:
        save_epoch_checkpoint(out, model, step, args, run_args, rngs, updates_per_epoch, done)


def save_epoch_checkpoint(
        out: Path, model: nn.Module, step: Step, args, run_args: dict, rngs: List[dict], updates_per_epoch: int,
        done: int) -> None:
    """``encoder.safetensors`` (and ``encoder-epochNNNNN.safetensors`` every ``--keep-every``) for timm, then
    ``last.pth``, everything needed to continue exactly after ``done`` epochs."""
    meta = {'architecture': args.model, 'mae_epochs': done, 'source': 'timm_mlit mmLiT pre-training'}
    export_encoder(model.encoder, out / 'encoder.safetensors', meta)
    if args.keep_every and done % args.keep_every == 0:
        export_encoder(model.encoder, out / f'encoder-epoch{done:05d}.safetensors', meta)
    save_checkpoint(out / 'last.pth', {
        'model': model.state_dict(), 'optimizer': step.optimizer.state_dict(),
        'scheduler': step.scheduler.state_dict(), 'scaler': step.scaler.state_dict() if step.scaler else None,
        'epoch': done, 'rng': rngs, 'args': plain_args(args), 'run_args': run_args,
        'updates_per_epoch': updates_per_epoch})


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-pretrain', main)
