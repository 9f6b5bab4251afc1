"""The command line of ``mlit-pretrain``: the parser, ``--config`` files, the checks, and Table 3's defaults.

Left unset, each size gets mmLiT's Table 3: AdamW, weight decay 0.05, base LR 3e-4 scaled linearly (lr = base x
global batch / 256, mLiT Eq. 17), warm-up 5% of the epochs, cosine decay, epochs 4000 (S) / 6000 (XS) / 8000 (XXS),
batch 840 (S) / 1280 (XS, XXS), horizontal flip, random-resized-crop [0.6, 1], mean = std = 0.5. Choices the paper
leaves open: AdamW betas (0.9, 0.95) and LR floor 0 as MAE's pre-training, a per-update schedule, bicubic resize.

Precedence: the command line, then ``--config``, then (with ``--resume``) the checkpoint's run, then the defaults.
"""
import argparse
import math
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import yaml

from timm_mlit.argtypes import (
    MAX_LR, ArgumentError, check_model_kwargs, check_warmup, finite_float, float_in, fraction, learning_rate, lr_floor,
    model_kwargs as model_kwargs_arg, nonneg_float, nonneg_int, positive_float, positive_int, probability)
from timm_mlit.errors import UserInputError
from timm_mlit.recipes import recipe_path
from .checkpoint import load_checkpoint

__all__ = ['TABLE3', 'UsageError', 'build_parser', 'parse_args', 'parse_args_and_checkpoint', 'fill_defaults']

# Table 3, per size: epochs and batch (warm-up is 5% of the epochs for all)
TABLE3 = {
    'mlit_s': dict(epochs=4000, batch_size=840),
    'mlit_xs': dict(epochs=6000, batch_size=1280),
    'mlit_xxs': dict(epochs=8000, batch_size=1280),
}

_DESCRIPTION = """\
Masked-autoencoder pre-training of an mLiT encoder (mmLiT). Epochs, batch size,
learning rate and warm-up follow the paper's Table 3 for the model's size unless
you set them. The data flags are timm train.py's: an ImageFolder
(DATA/train/<class>/*) by default, or torchvision's files with --dataset
torch/cifar100. A run writes its logs, plots, reconstruction grids, a resumable
last.pth and encoder.safetensors (the encoder, for timm) to OUTPUT/EXPERIMENT.
--resume continues a stopped or killed run from its last checkpoint, with the
result an uninterrupted run would have had."""

_EPILOG = """\
examples:
  mlit-pretrain --model mlit_xxs --data-dir DATA --output output/pretrain
  mlit-pretrain --config maevit_c100_pretrain_mae --data-dir DATA
  mlit-pretrain --resume output/pretrain/RUN/last.pth"""


class UsageError(UserInputError):
    """An argument or input of the pre-training command that cannot work; the message names it and the fix."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        prog='mlit-pretrain')
    p.add_argument('--config', default='', help="a YAML of these arguments (by their names, '_' for '-'), or a "
                                                "shipped recipe's name (mlit-config --list); the command line wins")
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
    o.add_argument('--lr', type=learning_rate, default=None,
                   help='absolute LR; default lr-base x global batch / 256 (mLiT Eq. 17)')
    o.add_argument('--lr-base', type=learning_rate, default=3e-4)
    o.add_argument('--lr-base-size', type=positive_int, default=256)
    o.add_argument('--warmup-epochs', type=nonneg_int, default=None, help='default: 5%% of the epochs')
    o.add_argument('--min-lr', type=lr_floor, default=0.0)
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
    if value is None:
        return ''  # None keeps the default
    if isinstance(value, str) and action.type not in (None, str) and action.nargs is None:
        try:  # argparse converts a string default itself; checked here so that the error names the file
            action.type(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            return getattr(action.type, '__name__', 'a valid value')
        return ''
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
    for name in ('lr', 'lr_base', 'min_lr'):  # a resumed run's values (the command line and --config are parsed)
        value = getattr(args, name)
        low_ok = value is not None and (value > 0 if name != 'min_lr' else value >= 0)
        if value is not None and not (math.isfinite(value) and low_ok and value <= MAX_LR):
            flag = f'--{name.replace("_", "-")}'
            parser.error(f'{flag} {value}: expected a learning rate {"> 0" if name != "min_lr" else ">= 0"} and <= '
                         f'{MAX_LR:g} (a resumed run\'s value is taken from its checkpoint: pass {flag} to override '
                         f'it).')
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


def parse_args_and_checkpoint(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, Optional[dict]]:
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
    return parse_args_and_checkpoint(argv)[0]


def fill_defaults(args: argparse.Namespace) -> None:
    """Table 3's epochs and batch for the size, the 5% warm-up and the linearly scaled LR (mLiT Eq. 17), where the
    arguments leave them unset; ``args.world_size`` must be known."""
    table = TABLE3.get(args.model, {})
    if args.epochs is None:
        args.epochs = table.get('epochs', 800)
    if args.batch_size is None:
        args.batch_size = max(1, table.get('batch_size', 256) // args.world_size)
    if args.warmup_epochs is None:
        args.warmup_epochs = int(round(0.05 * args.epochs))
    if args.lr is None:
        args.lr = args.lr_base * args.batch_size * args.world_size / args.lr_base_size
