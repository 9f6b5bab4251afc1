"""What a training run recorded, read without trusting it, and checked against the tag it is published under.

A card states only what the run's own files say:

  * timm's train.py: ``args.yaml`` (model, dataset, num_classes, epochs, the recipe), ``summary.csv`` (one row per
    epoch: eval_top1 / eval_top5) and the checkpoint's ``epoch`` (which row the weights are);
  * ``run_info.json``, written by whoever ran the training (``python -m timm_mlit.hub.run_info``, which wraps the
    training command): ``hardware`` and ``wall_time_s`` (train.py records neither), and ``dataset`` when args.yaml
    names an ImageFolder rather than a dataset; ``jpeg_copy`` when the images are the JPEG copy of CIFAR;
  * timm_mlit's MAE pre-training: ``log.jsonl`` and the ``args`` in ``last.pth`` (read with ``weights_only=True``).

:func:`check_against_tag` refuses a run whose model, dataset, number of classes, epochs or recipe contradict the
tag (``timm_mlit.models._pretrained_tags``): a CIFAR-10 run is never carded CIFAR-100, a 2-epoch run never passes
for the paper's 100 epochs.
"""
import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from timm_mlit._io import torch_load
from timm_mlit.errors import UserInputError
from timm_mlit.models._pretrained_tags import PretrainedTag
from .tag_info import DATASETS, config_path

__all__ = ['RunInfo', 'RunRecordError', 'read_run', 'read_run_info', 'check_run_info', 'check_against_tag',
           'RECIPE_KEYS']

# train.py arguments worth stating on a card, in this order
_CARD_KEYS = (
    'epochs', 'batch_size', 'opt', 'lr', 'lr_base', 'lr_base_scale', 'weight_decay', 'layer_decay', 'sched',
    'warmup_epochs', 'min_lr', 'aa', 'scale', 'hflip', 'smoothing', 'mixup', 'cutmix', 'drop_path', 'model_ema',
    'amp', 'amp_dtype', 'pretrained_path', 'model_kwargs',
    # MAE pre-training
    'mask_ratio', 'alpha', 'beta', 'decoder_pos', 'opt_betas',
)
# train.py arguments that make a tag's recipe: a run that sets any of them otherwise than the tag's config is not
# that tag's run
RECIPE_KEYS = (
    'epochs', 'batch_size', 'opt', 'lr_base', 'lr_base_size', 'lr_base_scale', 'weight_decay', 'layer_decay', 'sched',
    'warmup_epochs', 'min_lr', 'aa', 'scale', 'hflip', 'smoothing', 'mixup', 'cutmix', 'reprob', 'drop_path',
    'model_kwargs',
)


class RunRecordError(UserInputError):
    """A run's records are missing, unreadable, or contradict the tag they would be published under."""


@dataclass
class RunInfo:
    """What a training run tells a card."""
    kind: str  # 'classification' or 'mae'
    dataset: str  # key of DATASETS, or a free name
    eval_split: str = ''
    epochs: int = 0
    metrics: Dict[str, float] = field(default_factory=dict)  # the published weights': top1 / top5 (%) or MAE losses
    recipe: Dict[str, Any] = field(default_factory=dict)
    ema: bool = False  # the published weights are the run's EMA
    # train.py runs
    model: str = ''
    num_classes: Optional[int] = None
    planned_epochs: Optional[int] = None  # args.yaml's --epochs
    args: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)  # summary.csv, one dict per epoch
    weights_epoch: Optional[int] = None  # the summary row of the weights (the checkpoint's 'epoch')
    best: Dict[str, Any] = field(default_factory=dict)  # {'epoch', 'top1', 'top5'} of the best row
    final: Dict[str, Any] = field(default_factory=dict)  # the last row's
    # run_info.json
    hardware: Optional[str] = None
    wall_time_s: Optional[float] = None
    wall_time_how: Optional[str] = None  # how wall_time_s was measured, in the trainer's words
    jpeg_copy: bool = False
    data_dir: str = ''


def _dataset_key(name: str) -> str:
    """'torch/cifar10' -> 'cifar10'; '' or 'folder' (an ImageFolder) -> ''."""
    name = str(name or '').strip().lower()
    for prefix in ('torch/', 'tfds/', 'hfds/', 'hfids/', 'wds/'):
        if name.startswith(prefix):
            name = name[len(prefix):]
    aliases = {'cifar-10': 'cifar10', 'cifar-100': 'cifar100', 'flowers': 'flowers102', 'folder': '',
               'imagefolder': '', 'uoft-cs/cifar10': 'cifar10', 'uoft-cs/cifar100': 'cifar100'}
    return aliases.get(name, name)


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunRecordError(f'{path} is not readable YAML ({e.__class__.__name__}: {e}). It is the args.yaml timm\'s '
                             f'train.py writes into its output folder; pass --run-dir with that folder.') from e
    if not isinstance(data, dict):
        raise RunRecordError(f'{path} holds a {type(data).__name__}, not the mapping of arguments train.py writes.')
    return data


def _number(row: Dict[str, str], key: str, where: str) -> Optional[float]:
    value = row.get(key)
    if value in (None, ''):
        return None
    try:
        number = float(value)
    except ValueError:
        raise RunRecordError(f'{where}: {key} is {value!r}, not a number.') from None
    if not math.isfinite(number):
        raise RunRecordError(f'{where}: {key} is {value!r}, not a finite number.')
    return number


def _read_summary(path: Path) -> List[Dict[str, float]]:
    """One dict per epoch of train.py's ``summary.csv``, in epoch order. A run resumed with ``--resume`` appends a
    second header line (timm's ``update_summary`` writes one whenever it opens the file anew): such lines are skipped.
    An epoch listed twice (a run stopped after its summary row but before its checkpoint, then resumed from the
    epoch before) keeps its later row, the one the resumed run's weights continue from."""
    try:
        with open(path, newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            rows = [(i + 2, row) for i, row in enumerate(reader)
                    if not all(row.get(k) == k for k in reader.fieldnames or ())]  # a resume's header line
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunRecordError(f'{path} is not readable CSV ({e}); it is the summary.csv train.py writes.') from e
    if not rows:
        raise RunRecordError(f'{path} has no epochs: the run evaluated nothing yet.')
    by_epoch: Dict[int, Dict[str, float]] = {}
    for line, row in rows:
        where = f'{path}, row {line}'
        if row.get('epoch') == 'epoch':
            raise RunRecordError(f'{where} is a header line whose columns differ from the first line\'s: the file mixes '
                                 f'two layouts, so its rows cannot be read by one header. Pass the summary.csv of '
                                 f'one run, or split it at that line.')
        epoch, top1 = _number(row, 'epoch', where), _number(row, 'eval_top1', where)
        if epoch is None or top1 is None:
            raise RunRecordError(f'{where} lacks epoch or eval_top1: not a train.py summary of a run with evaluation.')
        if not 0 <= top1 <= 100:
            raise RunRecordError(f'{where}: eval_top1 {top1} is not a percentage.')
        top5 = _number(row, 'eval_top5', where)
        by_epoch[int(epoch)] = {'epoch': int(epoch), 'top1': round(top1, 3),
                                'top5': None if top5 is None else round(top5, 3)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_run_info(run_dir) -> Dict[str, Any]:
    """``run_info.json`` of a run folder ({} when there is none), its fields checked."""
    path = Path(run_dir) / 'run_info.json'
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunRecordError(f'{path} is not JSON ({e}). Write it with mlit-run-info (from a clone: python -m timm_mlit.hub.run_info).') from e
    return check_run_info(info, path)


def check_run_info(info: Any, path) -> Dict[str, Any]:
    """``info`` (what ``path``, a run_info.json, holds or will hold) if its fields are what staging reads."""
    if not isinstance(info, dict):
        raise RunRecordError(f'{path} holds a {type(info).__name__}, not an object.')
    if 'hardware' in info and (not isinstance(info['hardware'], str) or not info['hardware'].strip()):
        raise RunRecordError(f'{path}: "hardware" must name the machine, e.g. "1x NVIDIA H100 80GB".')
    for key, example in (('hardware', '1x NVIDIA H100 80GB'),
                         ('wall_time_how', "the epochs' own durations, pauses left out")):
        text = info.get(key)
        if key in info and (not isinstance(text, str) or not text.strip() or len(text) > 300
                            or any(not c.isprintable() for c in text)):
            raise RunRecordError(f'{path}: "{key}" must be one line of text (at most 300 characters) for the card, '
                                 f'e.g. "{example}"; got {text!r:.80}.')
    wall = info.get('wall_time_s')
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall)
                             or wall <= 0):
        raise RunRecordError(f'{path}: "wall_time_s" must be the run\'s wall time in seconds, got {wall!r}.')
    if 'dataset' in info and _dataset_key(info['dataset']) not in DATASETS:
        raise RunRecordError(f'{path}: "dataset" is {info["dataset"]!r}; expected one of {sorted(DATASETS)}.')
    if not isinstance(info.get('jpeg_copy', False), bool):
        raise RunRecordError(f'{path}: "jpeg_copy" must be true or false.')
    return info


def _checkpoint_epoch(checkpoint: Optional[Path]) -> Optional[int]:
    """The 'epoch' a train.py checkpoint holds, read safely; None for a safetensors file or no checkpoint."""
    if checkpoint is None or checkpoint.suffix == '.safetensors' or not checkpoint.is_file():
        return None
    try:
        state = torch_load(checkpoint, mmap=True)
    except Exception:  # the weights' loader reports what is wrong with the file
        return None
    epoch = state.get('epoch') if isinstance(state, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _read_train_py(run: Path, checkpoint: Optional[Path]) -> RunInfo:
    args_file = run / 'args.yaml'
    if not args_file.is_file():
        raise RunRecordError(f'{run} has summary.csv but no args.yaml: the card would have no recipe. Pass --run-dir '
                             f'with the train.py output folder that holds both.')
    args = _read_yaml(args_file)
    history = _read_summary(run / 'summary.csv')
    weights_epoch = _checkpoint_epoch(checkpoint)
    by_epoch = {h['epoch']: h for h in history}
    if weights_epoch is not None and weights_epoch not in by_epoch:
        raise RunRecordError(
            f'{checkpoint} is epoch {weights_epoch}, which {run / "summary.csv"} does not list (epochs '
            f'{history[0]["epoch"]}-{history[-1]["epoch"]}): the checkpoint is not of this run. Pass --run-dir with '
            f'the folder the checkpoint was written to.')
    row = by_epoch[weights_epoch] if weights_epoch is not None else max(history, key=lambda h: h['top1'])
    best = max(history, key=lambda h: h['top1'])
    info = read_run_info(run)
    dataset = _dataset_key(args.get('dataset', '')) or _dataset_key(info.get('dataset', ''))
    num_classes = args.get('num_classes')
    planned = args.get('epochs')
    return RunInfo(
        'classification', dataset, str(args.get('val_split') or 'validation'), len(history),
        {k: row[k] for k in ('top1', 'top5') if row.get(k) is not None},
        {k: args[k] for k in _CARD_KEYS if args.get(k) not in (None, '', {}, [])},
        model=str(args.get('model') or ''), num_classes=num_classes if isinstance(num_classes, int) else None,
        planned_epochs=planned if isinstance(planned, int) else None, args=args, history=history,
        weights_epoch=weights_epoch, best=dict(best), final=dict(history[-1]),
        hardware=info.get('hardware'), wall_time_s=info.get('wall_time_s'), wall_time_how=info.get('wall_time_how'),
            jpeg_copy=bool(info.get('jpeg_copy')),
        data_dir=str(args.get('data_dir') or ''))


def _mae_args(path: Path) -> Dict[str, Any]:
    """The ``args`` of an MAE ``last.pth``, unpickled by :func:`timm_mlit._io.torch_load` (tensors and plain data)."""
    if not path.is_file():
        return {}
    try:
        state = torch_load(path)
    except Exception as e:
        raise RunRecordError(
            f'{path} is not a readable pre-training checkpoint ({e.__class__.__name__}: {str(e)[:300]}). It is not '
            f'unpickled beyond tensors and plain data; pass --run-dir with the pretrain_mae.py output folder.') from e
    args = state.get('args', {}) if isinstance(state, dict) else {}
    return vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}


def read_run(run_dir, dataset: Optional[str] = None, checkpoint=None) -> RunInfo:
    """The RunInfo of a train.py output folder or of a pretrain_mae.py output folder. ``checkpoint`` (the file
    being published) picks the summary row the card reports; ``dataset`` fills in a dataset the records lack."""
    run = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else None
    if (run / 'summary.csv').is_file():  # timm train.py
        out = _read_train_py(run, checkpoint)
    elif (run / 'log.jsonl').is_file():  # timm_mlit MAE pre-training
        try:
            history = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines() if line.strip()]
            last = history[-1]
            metrics = {'mae_loss': round(float(last['loss']), 6), 'mse_masked': round(float(last['mse_masked']), 6)}
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RunRecordError(f'{run / "log.jsonl"} is not the log pretrain_mae.py writes ({e!r}).') from e
        args = _mae_args(run / 'last.pth')
        info = read_run_info(run)
        out = RunInfo(
            'mae', _dataset_key(args.get('dataset', '')) or _dataset_key(info.get('dataset', '')),
            str(args.get('train_split') or 'train'), len(history), metrics,
            {k: args[k] for k in _CARD_KEYS if args.get(k) not in (None, '', {}, [])},
            model=str(args.get('model') or ''), args=args, hardware=info.get('hardware'),
            wall_time_s=info.get('wall_time_s'), wall_time_how=info.get('wall_time_how'),
            jpeg_copy=bool(info.get('jpeg_copy')),
            data_dir=str(args.get('data_dir') or ''))
    else:
        raise RunRecordError(
            f'{run} is neither a train.py output folder (summary.csv) nor a pretrain_mae.py one (log.jsonl): pass '
            f'--run-dir with the folder of the run that produced the checkpoint.')
    if dataset and not out.dataset:
        out.dataset = _dataset_key(dataset)
    elif dataset and _dataset_key(dataset) != out.dataset:
        raise RunRecordError(f'--dataset {dataset} contradicts the run, which trained on {out.dataset} ({run}).')
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def recipe_differences(run: RunInfo, pretrained_tag: PretrainedTag) -> List[str]:
    """The recipe settings (``RECIPE_KEYS``) where the run's args.yaml differs from the tag's config file."""
    path = config_path(pretrained_tag)
    if path is None or run.kind != 'classification':
        return []
    config = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    out = []
    for key in RECIPE_KEYS:
        if key in config and key not in run.args:
            out.append(f'{key} (the tag: {config[key]!r}; args.yaml: not recorded)')
        elif key in config and not _same(run.args[key], config[key]):
            out.append(f'{key} (the tag: {config[key]!r}; the run: {run.args[key]!r})')
    return out


def check_against_tag(run: RunInfo, model_name: str, pretrained_tag: PretrainedTag, run_dir,
                      strict: bool = True) -> List[str]:
    """Refuse (RunRecordError) a run whose model, dataset or number of classes contradict ``model_name``'s tag.
    Its epochs and recipe must be the tag's too; with ``strict=False`` those differences are returned instead
    (for a card that says so), never ignored."""
    arch, tag = model_name.split('.', 1)
    problems, recipe = [], []
    if run.model and run.model != arch:
        problems.append(f'the run trained {run.model}, not {arch}')
    if run.dataset and pretrained_tag.dataset and run.dataset != pretrained_tag.dataset:
        problems.append(f'the run trained on {run.dataset}, the tag is {DATASETS[pretrained_tag.dataset][0]}')
    if run.kind == 'classification':
        if pretrained_tag.num_classes == 0:
            problems.append(f'{tag} is a headless encoder tag, the run trained a classifier')
        elif run.num_classes is not None and run.num_classes != pretrained_tag.num_classes:
            problems.append(f'the run has {run.num_classes} classes, the tag {pretrained_tag.num_classes}')
        pretrained = run.args.get('pretrained_path') or run.args.get('initial_checkpoint')
        if pretrained_tag.encoder and not pretrained:
            problems.append(f'{tag} is fine-tuned from an MAE encoder ({arch}.{pretrained_tag.encoder}), the run '
                            f'had no --pretrained-path')
        if not pretrained_tag.encoder and pretrained:
            problems.append(f'{tag} is trained from scratch, the run started from {pretrained}')
    elif pretrained_tag.num_classes:
        problems.append(f'{tag} is a classifier tag, the run is MAE pre-training (a headless encoder)')
    if problems:
        raise RunRecordError(
            f'The run in {run_dir} is not a {model_name} run: {"; ".join(problems)}. Publish it under the tag that '
            f'matches it (mlit-config --tags lists them), or publish the right run.')
    if pretrained_tag.epochs and run.epochs != pretrained_tag.epochs:
        recipe.append(f'epochs trained {run.epochs} (the tag: {pretrained_tag.epochs})')
    recipe += [d for d in recipe_differences(run, pretrained_tag) if not d.startswith('epochs ')]
    if recipe and strict:
        raise RunRecordError(
            f'The run in {run_dir} does not follow the {model_name} recipe '
            f'({config_path(pretrained_tag) or pretrained_tag.tag}): {"; ".join(recipe)}. Train with the tag\'s config '
            f'to publish under it.')
    return recipe
