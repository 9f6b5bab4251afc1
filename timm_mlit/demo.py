"""The main job: the whole life cycle on a built-in dataset, in a few minutes on a laptop CPU.

    python -m timm_mlit [--output output/demo] [--mae-epochs 3] [--epochs 6]

  1. the three mLiT sizes: parameters against the paper, MACs;
  2. the built-in dataset: ten classes of procedurally drawn shapes (timm_mlit/data/shapes.py), as an ImageFolder;
  3. mmLiT: masked-autoencoder pre-training of mlit_xxs on it (mlit-pretrain's engine): logs, the loss and
     expert-load plots, a reconstruction grid and the encoder export;
  4. the exported encoder loaded into timm with a new head, fine-tuned through timm's training path
     (create_loader, create_optimizer_v2 with layer decay, a cosine scheduler, timm.task.ClassificationTask with
     the MoE loss), checkpoints and logs written as train.py writes them;
  5. a Hub-protocol server on 127.0.0.1 and the push command (weights, config, model card) to it;
  6. a fresh process that knows only the server's address: ``timm.create_model('hf-hub:…', pretrained=True)``,
     then its top-1 on the validation split, which must equal the fine-tuned model's.
"""
import argparse
import csv
import io
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import timm
import torch
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask
from tqdm import tqdm

from timm_mlit._io import atomic_write, command, write_text
from timm_mlit.argtypes import ProseHelpFormatter, learning_rate, nonneg_int, positive_int
from timm_mlit.data.shapes import SHAPE_CLASSES, write_shapes
from timm_mlit.errors import DivergedError
from timm_mlit.testing.local_hub import LocalHubServer
from timm_mlit.mae.visualize import have_matplotlib

__all__ = ['evaluate', 'evaluate_metrics', 'fine_tune', 'report_mae_outputs', 'main']

_TOKEN = 'hf_demo_token'


@torch.no_grad()
def evaluate_metrics(model, data_dir, split: str = 'validation', batch_size: int = 128,
                     workers: int = 2) -> Dict[str, float]:
    """``loss`` (mean cross-entropy per image), ``top1`` and ``top5`` (%) of ``model`` on an ImageFolder split, with
    the eval transform timm resolves for the model: what train.py's validate() reports and its summary.csv holds as
    eval_loss, eval_top1 and eval_top5 (top-5 is top-k for k = min(5, classes), as timm's accuracy())."""
    cfg = resolve_data_config({}, model=model)
    loader = create_loader(
        create_dataset('', root=str(data_dir), split=split), input_size=cfg['input_size'], batch_size=batch_size,
        is_training=False, interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
        crop_pct=cfg['crop_pct'], num_workers=workers, use_prefetcher=False)
    model.eval()
    correct = correct5 = total = 0
    loss = 0.0
    for x, y in loader:
        logits = model(x)
        correct += (logits.argmax(-1) == y).sum().item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct5 += (top == y[:, None]).any(-1).sum().item()
        loss += torch.nn.functional.cross_entropy(logits.float(), y, reduction='sum').item()
        total += y.numel()
    return {'loss': loss / total, 'top1': 100.0 * correct / total, 'top5': 100.0 * correct5 / total}


def evaluate(model, data_dir, split: str = 'validation', batch_size: int = 128, workers: int = 2) -> float:
    """Top-1 % of ``model`` on an ImageFolder split, with the eval transform timm resolves for the model."""
    return evaluate_metrics(model, data_dir, split, batch_size, workers)['top1']


def fine_tune(encoder_file: Path, data_dir: Path, out: Path, model_name: str, epochs: int, batch_size: int,
              workers: int, lr: float = 2e-3) -> Path:
    """Fine-tune from the MAE encoder through timm's training path; write model_best.pth.tar, args.yaml and
    summary.csv as train.py does (epoch from 0, train_loss, eval_loss, eval_top1, eval_top5, lr: every column
    filled). Returns the run folder."""
    out.mkdir(parents=True, exist_ok=True)
    model = timm.create_model(model_name, pretrained=True, num_classes=len(SHAPE_CLASSES),
                              pretrained_cfg_overlay=dict(file=str(encoder_file)))
    cfg = resolve_data_config({}, model=model)
    loader = create_loader(
        create_dataset('', root=str(data_dir), split='train', is_training=True), input_size=cfg['input_size'],
        batch_size=batch_size, is_training=True, scale=(0.8, 1.0), hflip=0.5, color_jitter=None,
        interpolation='bicubic', mean=cfg['mean'], std=cfg['std'], num_workers=workers, use_prefetcher=False)
    optimizer = create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=0.05, layer_decay=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, 'cosine', num_epochs=epochs, warmup_epochs=1, warmup_lr=0.0,
                                       updates_per_epoch=len(loader), step_on_epochs=False)
    task = ClassificationTask(model, torch.nn.CrossEntropyLoss(), verbose=False)
    args = dict(model=model_name, dataset='shapes', val_split='validation', epochs=epochs, batch_size=batch_size,
                opt='adamw', lr=lr, weight_decay=0.05, layer_decay=0.9, sched='cosine', warmup_epochs=1,
                scale=[0.8, 1.0], hflip=0.5, smoothing=0.0, model_ema=False, pretrained_path=str(encoder_file))
    write_text(out / 'args.yaml', yaml.safe_dump(args), overwrite=True)
    rows, best, updates = [], -1.0, 0
    for epoch in range(epochs):
        model.train()
        losses = []
        for x, y in tqdm(loader, desc=f'fine-tune epoch {epoch}/{epochs - 1}', leave=False, unit='batch'):
            result = task(x, y)
            optimizer.zero_grad()
            result['loss'].backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            losses.append(result['loss'].item())
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            raise DivergedError(
                f'fine-tuning diverged in epoch {epoch}: the training loss is {losses[bad]} at update {bad} of '
                f'{len(losses)}, with --lr {lr:g}; nothing of this epoch was saved. Pass a smaller --lr (the default '
                f'is 3e-3).')
        metrics = evaluate_metrics(model, data_dir, workers=workers)
        top1 = metrics['top1']
        rows.append([epoch, sum(losses) / len(losses), metrics['loss'], top1, metrics['top5'],
                     optimizer.param_groups[0]['lr']])
        print(f'  fine-tune epoch {epoch}/{epochs - 1}: loss {rows[-1][1]:.3f}, validation top-1 {top1:.1f}%')
        if top1 > best:
            best = top1
            state = {'epoch': epoch, 'arch': model_name, 'state_dict': model.state_dict(), 'metric': top1}
            atomic_write(out / 'model_best.pth.tar', lambda tmp: torch.save(state, tmp), overwrite=True)
    summary = io.StringIO()
    w = csv.writer(summary)
    w.writerow(['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'])
    w.writerows(rows)
    write_text(out / 'summary.csv', summary.getvalue(), overwrite=True)
    return out


MAE_OUTPUTS = {
    'log.csv': 'per-epoch losses, LR and speed',
    'loss_curve.png': 'the losses against the epochs (Figure 6)',
    'expert_load.png': "each MoE layer's share of tokens per expert (1/t = balanced) and its least-used expert "
                       "over the epochs (a dense model has none)",
    'recon_epoch*.png': 'originals, masked inputs and reconstructions',
    'encoder.safetensors': 'the encoder, for timm',
}


def report_mae_outputs(run: Path) -> Dict[str, Optional[Path]]:
    """Print what the pre-training run wrote, file by file, and for a promised file that is missing why and the fix.
    Returns each promised name with its file (None where missing)."""
    found = {}
    for pattern, what in MAE_OUTPUTS.items():
        files = sorted(run.glob(pattern))
        found[pattern] = files[-1] if files else None
        if files:
            print(f'  {files[-1]}: {what}')
        elif pattern.endswith('.png') and not have_matplotlib():
            print(f'  {run / pattern}: NOT written, matplotlib cannot be imported. Fix: pip install matplotlib '
                  f'(a dependency of timm-mlit, so a broken or --no-deps install), then run again')
        else:
            print(f'  {run / pattern}: NOT written ({what}); see the pre-training log above')
    return found


_PULL = '''
import timm, timm_mlit
from timm_mlit.demo import evaluate
model = timm.create_model({name!r}, pretrained=True)
top1 = evaluate(model, {data!r})
print(repr(top1))
'''


@command
def main(argv: Optional[Sequence[str]] = None) -> float:
    p = argparse.ArgumentParser(prog='mlit-demo (or python -m timm_mlit)', description=__doc__,
                                formatter_class=ProseHelpFormatter)
    p.add_argument('--output', default='output/demo', help='where the data, runs and the Hub cache go')
    p.add_argument('--model', default='mlit_xxs')
    p.add_argument('--mae-epochs', type=positive_int, default=3)
    p.add_argument('--epochs', type=positive_int, default=6, help='fine-tuning epochs')
    p.add_argument('--batch-size', type=positive_int, default=32, help='fine-tuning batch (MAE pre-training uses twice it)')
    p.add_argument('--lr', type=learning_rate, default=3e-3, help='fine-tuning learning rate')
    p.add_argument('--train-per-class', type=positive_int, default=100)
    p.add_argument('--val-per-class', type=positive_int, default=30)
    p.add_argument('--workers', type=nonneg_int, default=2)
    p.add_argument('--overwrite', action='store_true', help="replace an earlier demo's runs in --output")
    args = p.parse_args(argv)
    out = Path(args.output).resolve()
    runs = [out / 'mae' / args.model, out / 'finetune']
    for run in runs:
        if run.is_symlink() or run.exists() and not run.is_dir():
            p.error(f'--output {out}: {run} is not a folder of an earlier demo; pass another --output.')
    if any(run.exists() for run in runs):
        if not args.overwrite:
            p.error(f'--output {out} holds an earlier demo\'s runs ({", ".join(str(r) for r in runs if r.exists())}); '
                    f'pass --overwrite to replace them, or another --output.')
        for run in runs:
            shutil.rmtree(run, ignore_errors=True)
    start = time.time()
    for name in ('httpx', 'httpx2'):  # no per-request lines from huggingface_hub's HTTP client
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.manual_seed(0)

    print('== 1. the models ==')
    from timm_mlit.summary import main as summary
    summary(['--no-timing'])

    print(f'\n== 2. built-in dataset: {len(SHAPE_CLASSES)} classes of drawn shapes ==')
    data = write_shapes(out / 'data', args.train_per_class, args.val_per_class)
    print(f'  {data}: {args.train_per_class} train / {args.val_per_class} validation images per class')

    print(f'\n== 3. mmLiT: MAE pre-training of {args.model}, {args.mae_epochs} epochs ==')
    from timm_mlit.mae.pretrain import main as pretrain
    mae_run = pretrain([
        '--model', args.model, '--dataset', '', '--data-dir', str(data), '--epochs', str(args.mae_epochs),
        '--batch-size', str(2 * args.batch_size), '--lr', '1.5e-3', '--warmup-epochs', '1', '--workers',
        str(args.workers), '--device', 'cpu', '--output', str(out / 'mae'), '--experiment', args.model,
        '--recon-interval', str(args.mae_epochs), '--plot-interval', str(args.mae_epochs)])
    report_mae_outputs(mae_run)

    print(f'\n== 4. fine-tuning from the encoder through timm\'s training path, {args.epochs} epochs ==')
    ft_run = fine_tune(mae_run / 'encoder.safetensors', data, out / 'finetune', args.model, args.epochs,
                       args.batch_size, args.workers, lr=args.lr)

    print('\n== 5. push to a Hub-protocol server on 127.0.0.1 ==')
    from timm_mlit.hub.push import main as push
    repo = f'demo/{args.model}.shapes'
    with LocalHubServer(token=_TOKEN) as hub:
        push(['--model', args.model, '--checkpoint', str(ft_run / 'model_best.pth.tar'), '--repo-id', repo,
              '--dataset', 'shapes', '--endpoint', hub.endpoint, '--token', _TOKEN])
        print(f'  {hub.endpoint}/{repo}: {", ".join(sorted(hub.files(repo)))}')

        print(f"\n== 6. a fresh process: timm.create_model('hf-hub:{repo}', pretrained=True) ==")
        env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(out / 'hf_home'))
        pulled = subprocess.run([sys.executable, '-c', _PULL.format(name=f'hf-hub:{repo}', data=str(data))],
                                env=env, capture_output=True, text=True)
    if pulled.returncode != 0:
        raise RuntimeError(f'loading from the local Hub failed:\n{pulled.stderr[-3000:]}')
    top1 = float(pulled.stdout.strip().splitlines()[-1])
    best = max(float(r['eval_top1']) for r in csv.DictReader(open(ft_run / 'summary.csv')))
    print(f'  validation top-1 of the model pulled from the Hub: {top1:.1f}% (fine-tuned run: {best:.1f}%, '
          f'chance: {100 / len(SHAPE_CLASSES):.0f}%)')
    if abs(top1 - best) > 1e-6:
        raise RuntimeError(f'the pulled model scores {top1}%, the fine-tuned one {best}%: they should be the same')
    print(f'\nlife cycle done in {time.time() - start:.0f} s; everything is in {out}')
    return top1


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-demo', main)
