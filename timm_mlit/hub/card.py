"""Model cards filled from the run that produced the weights: what the weights are, how they were trained, what
they measured, and how to load them (``import timm_mlit`` first).

:func:`read_run` reads a train.py output folder (``args.yaml``, ``summary.csv``) or an MAE pre-training folder
(``log.jsonl``, ``last.pth``); :func:`render_card` writes the README.md with the YAML metadata the Hub reads
(library_name, license, tags, datasets, pipeline_tag, model-index with the measured metrics).
"""
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import yaml

from .variants import DATASETS, PAPER_TOP1, find_variant

__all__ = ['RunInfo', 'read_run', 'render_card', 'card_metadata']

# train.py arguments worth stating on a card, in this order
_RECIPE_KEYS = (
    'epochs', 'batch_size', 'opt', 'lr', 'lr_base', 'lr_base_scale', 'weight_decay', 'layer_decay', 'sched',
    'warmup_epochs', 'min_lr', 'aa', 'scale', 'hflip', 'smoothing', 'mixup', 'cutmix', 'drop_path', 'model_ema',
    'amp', 'amp_dtype', 'pretrained_path', 'model_kwargs',
    # MAE pre-training
    'mask_ratio', 'alpha', 'beta', 'decoder_pos', 'opt_betas',
)


@dataclass
class RunInfo:
    """What a training run tells a card."""
    kind: str  # 'classification' or 'mae'
    dataset: str  # key of DATASETS, or a free name
    eval_split: str = ''
    epochs: int = 0
    metrics: Dict[str, float] = field(default_factory=dict)  # top1 / top5 (%) or mae_loss / mse_masked
    recipe: Dict[str, Any] = field(default_factory=dict)
    ema: bool = False  # the published weights are the run's EMA


def _dataset_key(name: str) -> str:
    name = (name or '').lower().replace('torch/', '')
    return name if name in DATASETS else name or 'unknown'


def read_run(run_dir, dataset: Optional[str] = None) -> RunInfo:
    """The RunInfo of a train.py output folder or of a pretrain_mae.py output folder."""
    run = Path(run_dir)
    if (run / 'summary.csv').is_file():  # timm train.py
        args = yaml.safe_load((run / 'args.yaml').read_text()) if (run / 'args.yaml').is_file() else {}
        with open(run / 'summary.csv') as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f'{run / "summary.csv"} has no epochs.')
        best = max(rows, key=lambda r: float(r.get('eval_top1') or 0))
        metrics = {k: round(float(best[f'eval_{k}']), 3) for k in ('top1', 'top5') if best.get(f'eval_{k}')}
        return RunInfo(
            'classification', dataset or _dataset_key(args.get('dataset', '')), args.get('val_split', 'validation'),
            len(rows), metrics, {k: args[k] for k in _RECIPE_KEYS if args.get(k) not in (None, '', {}, [])})
    if (run / 'log.jsonl').is_file():  # timm_mlit MAE pre-training
        history = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines() if line.strip()]
        args = torch.load(run / 'last.pth', map_location='cpu', weights_only=False).get('args', {}) \
            if (run / 'last.pth').is_file() else {}
        last = history[-1]
        return RunInfo(
            'mae', dataset or _dataset_key(args.get('dataset', '')), args.get('train_split', 'train'), len(history),
            {'mae_loss': round(last['loss'], 6), 'mse_masked': round(last['mse_masked'], 6)},
            {k: args[k] for k in _RECIPE_KEYS if args.get(k) not in (None, '', {}, [])})
    raise FileNotFoundError(
        f'{run} is neither a train.py output folder (summary.csv) nor a pretrain_mae.py one (log.jsonl): pass '
        f'--run-dir with the folder of the run that produced the checkpoint.')


def card_metadata(model_name: str, repo_id: str, license: str, run: RunInfo) -> Dict[str, Any]:
    """The YAML metadata block of the card (what the Hub indexes)."""
    display, hub_dataset, _ = DATASETS.get(run.dataset, (run.dataset, run.dataset, None))
    meta: Dict[str, Any] = {
        'library_name': 'timm',
        'license': license,
        'tags': ['image-classification', 'timm', 'timm_mlit', 'mlit', 'mixture-of-experts', 'vision-transformer'],
        'datasets': [hub_dataset],
        'pipeline_tag': 'image-classification' if run.kind == 'classification' else 'image-feature-extraction',
    }
    if run.kind == 'mae':
        meta['tags'] = ['image-feature-extraction', 'masked-autoencoder'] + meta['tags'][1:]
    if run.kind == 'classification' and 'top1' in run.metrics:
        metrics = [{'type': 'accuracy', 'name': 'Top-1 accuracy', 'value': run.metrics['top1']}]
        if 'top5' in run.metrics:
            metrics.append({'type': 'top_5_accuracy', 'name': 'Top-5 accuracy', 'value': run.metrics['top5']})
        meta['model-index'] = [{
            'name': repo_id.split('/')[-1],
            'results': [{
                'task': {'type': 'image-classification', 'name': 'Image Classification'},
                'dataset': {'name': display, 'type': hub_dataset, 'split': run.eval_split},
                'metrics': metrics,
            }],
        }]
    return meta


def render_card(model_name: str, model: torch.nn.Module, repo_id: str, run: RunInfo, macs: Optional[int] = None) -> str:
    """README.md for ``repo_id`` holding ``model`` (already loaded with the weights being published)."""
    cfg = model.pretrained_cfg
    arch = cfg.get('architecture') or model_name.split('.')[0]
    variant = find_variant(model_name)
    meta = card_metadata(model_name, repo_id, cfg.get('license') or 'apache-2.0', run)
    params = sum(p.numel() for p in model.parameters())
    display = DATASETS.get(run.dataset, (run.dataset,))[0]
    blk = model.blocks[0]
    lines = [
        '---', yaml.safe_dump(meta, sort_keys=False).strip(), '---', '',
        f'# Model card for {repo_id.split("/")[-1]}', '',
        (variant.description if variant else cfg.get('description') or f'An {arch} trained with timm_mlit.'), '',
        'mLiT is a mixture-of-experts vision transformer for 36x36 images (Tan, *How Lightweight Can A Vision '
        'Transformer Be*, arXiv:2407.17783): SwiGLU experts sharing V and W2, noisy top-k gating, grouped-query '
        'attention, hidden size shrinking with depth and experts added in stages. This checkpoint was trained with '
        'timm-mlit, a timm plugin.', '',
        '## Model details', '',
        f'- **Architecture:** `{arch}`: embed {model.embed_dim}, {len(model.blocks)} layers, hidden size '
        f'{model.hidden_dims[0]}→{model.hidden_dims[-1]}, {blk.attn.num_heads} heads / {blk.attn.num_kv_heads} KV '
        f'groups, experts {model.num_experts[0]}→{model.num_experts[-1]}, top-{blk.mlp.gate.top_k}',
        f'- **Parameters:** {params:,} ({params / 1e6:.2f}M)'
        + (f', {model.num_classes}-class head' if model.num_classes else ', no classifier head'),
    ]
    if macs is not None:
        lines.append(f'- **MACs per image:** {macs / 1e6:.1f}M (36x36 input)')
    lines += [
        f'- **Input:** {cfg["input_size"][1]}x{cfg["input_size"][2]} RGB, mean = {list(cfg["mean"])}, '
        f'std = {list(cfg["std"])}, crop_pct {cfg.get("crop_pct")}',
        f'- **Weights:** {"the exponential moving average (EMA) of the" if run.ema else "the"} training weights',
        f'- **Data:** {display}' + (f', evaluated on its `{run.eval_split}` split' if run.kind == 'classification'
                                    else f', `{run.eval_split}` split, masked-autoencoder pre-training'),
        '', '## Training', '',
        f'{run.epochs} epochs. The recipe, as run:', '', '| setting | value |', '|---|---|',
    ]
    lines += [f'| {k} | {v} |' for k, v in run.recipe.items()]
    lines += ['', '## Results (measured by the run that produced these weights)', '']
    if run.kind == 'classification':
        lines.append(f'| dataset | split | top-1 % | top-5 % |\n|---|---|---|---|\n| {display} | {run.eval_split} | '
                     f'{run.metrics.get("top1", "")} | {run.metrics.get("top5", "")} |')
        paper = PAPER_TOP1.get(variant.tag, {}).get(arch) if variant else None
        if paper is not None:
            lines += ['', f'The paper reports {paper}% top-1 for this setting.']
    else:
        lines.append(f'Final pre-training loss (Eq. 16) {run.metrics["mae_loss"]}, of which masked-patch MSE '
                     f'{run.metrics["mse_masked"]}.')
    head = 'num_classes=NUM_CLASSES' if run.kind == 'mae' else ''
    lines += [
        '', '## How to use', '', '```python',
        'import timm',
        'import timm_mlit  # the timm-mlit package: registers the mLiT models with timm', '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True{', ' + head if head else ''}).eval()",
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        '```', '',
        '## Citation', '', '```bibtex',
        '@article{tan2024mlit,',
        '  title={How Lightweight Can A Vision Transformer Be},',
        '  author={Tan, Jen Hong},',
        '  journal={arXiv preprint arXiv:2407.17783},',
        '  year={2024}',
        '}', '```', '',
    ]
    return '\n'.join(lines)
