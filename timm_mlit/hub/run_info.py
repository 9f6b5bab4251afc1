"""Record what timm's train.py does not: the hardware a run trained on and its wall time, in ``RUN/run_info.json``,
which the staging command (``mlit-push --stage-dir``) puts on the card. A card never guesses them.

Wrap the training command (the record is written only when it succeeds and left the run's summary.csv):

    python -m timm_mlit.hub.run_info output/train/mlit_xxs_c10 --dataset cifar10 --jpeg-copy -- \\
        python timm-scripts/train.py --config "$(mlit-config table6_scratch_cifar10)" --model mlit_xxs \\
        --data-dir DATA --output output/train --experiment mlit_xxs_c10

or record a finished run's numbers by hand: ``python -m timm_mlit.hub.run_info RUN --wall-time-s 5400 --hardware
"1x NVIDIA H100 80GB"``, with ``--wall-time-how`` saying how the seconds were measured where that is not plain
(a run paused and resumed: "the epochs' own durations, pauses left out"); the card quotes it. ``--dataset`` names the data when train.py read an ImageFolder (its args.yaml then names
none); ``--jpeg-copy`` marks images that are the JPEG copy of CIFAR (the card then carries the caveat).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from timm_mlit._io import signals_unwind, write_text
from timm_mlit.argtypes import ProseHelpFormatter, positive_float
from timm_mlit.errors import MissingInputError, UserInputError
from .records import RunRecordError, check_run_info
from .tag_info import DATASETS

__all__ = ['detect_hardware', 'write_run_info', 'main']


def detect_hardware() -> str:
    """'1x NVIDIA H100 80GB HBM3, 16 CPU cores' (the GPUs torch sees, or the CPU)."""
    import torch
    cores = f'{os.cpu_count()} CPU cores'
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        groups = {n: names.count(n) for n in dict.fromkeys(names)}
        return ', '.join(f'{c}x {n}' for n, c in groups.items()) + f', {cores}'
    return f'CPU only ({platform.processor() or platform.machine()}, {cores})'


def write_run_info(run_dir, wall_time_s: float, hardware: Optional[str] = None, dataset: Optional[str] = None,
                   jpeg_copy: bool = False, command: Optional[List[str]] = None,
                   wall_time_how: Optional[str] = None) -> Path:
    """Write ``run_dir/run_info.json`` (atomically) and return its path. The fields are checked as staging reads
    them before anything is written, so a bad record never replaces a good one; an existing record is replaced
    (it is this command's), a symlink or special file there is refused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingInputError(f'No run folder at {run_dir}: pass the train.py output folder (--output/--experiment).')
    info: Dict[str, Any] = {'hardware': hardware or detect_hardware(), 'wall_time_s': round(float(wall_time_s), 1)}
    if wall_time_how is not None:
        info['wall_time_how'] = wall_time_how
    elif command:
        info['wall_time_how'] = 'the training command, timed by mlit-run-info'
    if dataset:
        info['dataset'] = dataset
    info['jpeg_copy'] = bool(jpeg_copy)
    if command:
        info['command'] = command
    path = run_dir / 'run_info.json'
    check_run_info(info, path)  # the same checks staging makes, before the old record is touched
    text = json.dumps(info, indent=2, allow_nan=False) + '\n'
    with signals_unwind():
        return write_text(path, text, overwrite=True, check=lambda tmp: check_run_info(
            json.loads(Path(tmp).read_text(encoding='utf-8')), path))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=ProseHelpFormatter,
                                prog='python -m timm_mlit.hub.run_info')
    p.add_argument('run_dir', help="the run's output folder (train.py's --output/--experiment)")
    p.add_argument('--hardware', default=None, help='default: the GPUs torch sees here, or the CPU')
    p.add_argument('--wall-time-s', type=positive_float, default=None, help='a finished run\'s wall time (no command given)')
    p.add_argument('--wall-time-how', default=None, metavar='TEXT',
                   help='with --wall-time-s: how it was measured, one line the card quotes (e.g. "the epochs\' own '
                        'durations, pauses left out")')
    p.add_argument('--dataset', default=None, choices=sorted(DATASETS), help='the data, for an ImageFolder run')
    p.add_argument('--jpeg-copy', action='store_true', help='the images are the JPEG copy of CIFAR')
    p.add_argument('--', dest='command', metavar='COMMAND', help='then the training command to run and time')
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index('--') if '--' in argv else len(argv)
    args, command = p.parse_args(argv[:split]), argv[split + 1:]
    if bool(command) == (args.wall_time_s is not None):
        p.error('give either the training command (after --) or --wall-time-s of a finished run')
    if args.wall_time_s is not None and args.wall_time_s <= 0:
        p.error(f'--wall-time-s must be positive, got {args.wall_time_s}')
    if not command and not Path(args.run_dir).is_dir():
        p.error(f'run_dir {args.run_dir}: no such folder; expected the run\'s output folder (train.py\'s '
                f'--output/--experiment). Fix the path.')
    if args.wall_time_how is not None and args.wall_time_s is None:
        p.error('--wall-time-how describes --wall-time-s: give both (a timed command records how itself)')
    if args.hardware is not None and not args.hardware.strip():
        p.error('--hardware is empty; expected what the run trained on, e.g. --hardware "1x NVIDIA H100 80GB" (or '
                'leave it out to record this machine\'s).')
    wall = args.wall_time_s
    if command:
        start = time.monotonic()
        rc = subprocess.call(command)
        wall = time.monotonic() - start
        if rc != 0:
            p.exit(rc, f'run_info: the training command failed (exit {rc}); nothing recorded.\n')
        if not (Path(args.run_dir) / 'summary.csv').is_file():
            p.exit(2, f'run_info: {args.run_dir} has no summary.csv after the command: it is not the run\'s output '
                      f'folder (train.py writes OUTPUT/EXPERIMENT). Nothing recorded.\n')
    try:
        path = write_run_info(args.run_dir, wall, args.hardware, args.dataset, args.jpeg_copy, command or None,
                              args.wall_time_how)
    except (UserInputError, RunRecordError, FileNotFoundError) as e:
        p.exit(2, f'{p.prog}: error: {e}\n')
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-run-info', main)
