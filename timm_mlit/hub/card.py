"""Model cards filled from the run that produced the weights: what the weights are, how they were trained, what
they measured, and how to load them (``import timm_mlit`` first).

:func:`~timm_mlit.hub.records.read_run` reads the run's records; :func:`render_card` writes the README.md with the
YAML metadata the Hub reads (library_name, license, tags, datasets, pipeline_tag, model-index with the metrics of
the published weights). Every number on a card is one the run recorded; what the run did not record (hardware,
wall time) is left off, never guessed.
"""
from typing import Any, Dict, Optional, Sequence

import torch
import yaml

from .records import RunInfo, read_run
from timm_mlit.models._pretrained_tags import find_tag
from .tag_info import DATASETS, PAPER_SOURCE, PAPER_TOP1, VALIDATION_IS, config_path

__all__ = ['RunInfo', 'read_run', 'render_card', 'card_metadata', 'JPEG_CAVEAT']

JPEG_CAVEAT = (
    'The images are a JPEG copy of {name} (PSNR about 28-35 dB against the original files), not the original '
    'files, so the accuracy lands close to, not exactly at, what the same recipe gives on the originals.')


def _unnamed(run: RunInfo) -> str:
    """How a card names data the run's records do not name (an ImageFolder without run_info.json's dataset)."""
    if run.dataset:
        return run.dataset
    return 'an ImageFolder the run\'s records do not name' + (f' ({run.data_dir})' if run.data_dir else '')


def eval_split(run: RunInfo) -> str:
    """The split a classifier's figures were measured on, named as the dataset names it: a known dataset's test split
    where the run read train.py's default ``validation`` split (:data:`~timm_mlit.hub.tag_info.VALIDATION_IS`), else
    the run's own split name."""
    if run.kind == 'classification' and run.eval_split == 'validation' and run.dataset in VALIDATION_IS:
        return VALIDATION_IS[run.dataset]
    return run.eval_split


def _data_line(run: RunInfo, display: str) -> str:
    if run.kind != 'classification':
        return f'- **Data:** {display}, `{run.eval_split}` split, masked-autoencoder pre-training'
    split = eval_split(run)
    if split == run.eval_split:
        return f'- **Data:** {display}, evaluated on its `{split}` split'
    return (f'- **Data:** {display}, trained on its train split and evaluated on its {split} split (train.py\'s '
            f'`{run.eval_split}` split: the `{run.eval_split}/` folder mlit-prepare-data writes from the {split} '
            f'images, or timm\'s torch/{run.dataset} reader)')


def _precision(run: RunInfo, recipe: Dict[str, Any]) -> Optional[str]:
    """How train.py ran the model's arithmetic (its --amp / --amp-dtype), when the run's args.yaml records it, and
    where the tag's ``recipe`` asked for autocast the run did not use."""
    if run.kind != 'classification' or 'amp' not in run.args:
        return None
    if not run.args.get('amp'):
        turned_off = (f'; the recipe\'s {recipe.get("amp_dtype") or "float16"} autocast (`amp: true`) was turned off '
                      f'for this run' if recipe.get('amp') else '')
        return f'- **Precision:** float32 throughout (no autocast{turned_off})'
    return f'- **Precision:** {run.args.get("amp_dtype") or "float16"} autocast (mixed precision)'


def _recipe(pretrained_tag) -> Dict[str, Any]:
    """The tag's train.py recipe (its shipped YAML file), or {} where the tag has none."""
    path = config_path(pretrained_tag) if pretrained_tag else None
    return (yaml.safe_load(path.read_text(encoding='utf-8')) or {}) if path else {}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f'{minutes // 60} h {minutes % 60:02d} min' if minutes >= 60 else f'{seconds / 60:.1f} min'


def card_metadata(model_name: str, repo_id: str, license: str, run: RunInfo) -> Dict[str, Any]:
    """The YAML metadata block of the card (what the Hub indexes)."""
    display, hub_dataset = DATASETS.get(run.dataset, (_unnamed(run), run.dataset))
    meta: Dict[str, Any] = {
        'library_name': 'timm',
        'license': license,
        'tags': ['image-classification', 'timm', 'timm_mlit', 'mlit', 'mixture-of-experts', 'vision-transformer'],
        **({'datasets': [hub_dataset]} if hub_dataset else {}),  # never a dataset the run did not record
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
                'dataset': {'name': display, 'type': hub_dataset or 'imagefolder', 'split': eval_split(run)},
                'metrics': metrics,
            }],
        }]
    return meta


def render_card(model_name: str, model: torch.nn.Module, repo_id: str, run: RunInfo, macs: Optional[int] = None,
                deviations: Sequence[str] = ()) -> str:
    """README.md for ``repo_id`` holding ``model`` (already loaded with the weights being published).
    ``deviations``: where the run departs from the tag's recipe (pushed with --off-recipe); the card says so first."""
    cfg = model.pretrained_cfg
    arch = cfg.get('architecture') or model_name.split('.')[0]
    pretrained_tag = find_tag(model_name)
    meta = card_metadata(model_name, repo_id, cfg.get('license') or 'apache-2.0', run)
    params = sum(p.numel() for p in model.parameters())
    display = DATASETS.get(run.dataset, (_unnamed(run),))[0]
    blk = model.blocks[0]
    lines = [
        '---', yaml.safe_dump(meta, sort_keys=False).strip(), '---', '',
        f'# Model card for {repo_id.split("/")[-1]}', '',
        (pretrained_tag.description if pretrained_tag
         else cfg.get('description') or f'An {arch} trained with timm_mlit.'), '',
    ]
    if deviations:
        lines += [
            '> **Not the tag\'s recipe.** This run departs from it: ' + '; '.join(deviations) + '. Its numbers are '
            'not comparable with the paper\'s.', '']
    lines += [
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
        _data_line(run, display),
    ]
    precision = _precision(run, _recipe(pretrained_tag))
    if precision:
        lines.append(precision)
    if run.jpeg_copy:
        lines.append('- **Data caveat:** ' + JPEG_CAVEAT.format(name=display))
    if run.weights_epoch is not None:
        final = run.history and run.weights_epoch == run.history[-1]['epoch']
        lines.append(f'- **Checkpoint:** epoch {run.weights_epoch}' + (
            f', the last of {run.epochs} (train.py numbers epochs from 0): the final epoch\'s weights, not the '
            'best-on-test' if final else f' of {run.epochs}, numbered from 0 as train.py does'))
    lines += ['', '## Training', '']
    if run.hardware or run.wall_time_s:
        lines += [f'Trained on {run.hardware or "(hardware not recorded)"}'
                  + (f' in {_duration(run.wall_time_s)} wall time' if run.wall_time_s else '')
                  + (f' ({run.wall_time_how})' if run.wall_time_s and run.wall_time_how else '')
                  + ' (the run\'s run_info.json).', '']
    lines += [
        f'{run.epochs} epochs. The recipe, as run:', '', '| setting | value |', '|---|---|',
    ]
    lines += [f'| {k} | {v} |' for k, v in run.recipe.items()]
    lines += ['', '## Results (measured by the run that produced these weights)', '']
    if run.kind == 'classification':
        lines.append(f'| dataset | split | top-1 % | top-5 % |\n|---|---|---|---|\n| {display} | {eval_split(run)} | '
                     f'{run.metrics.get("top1", "")} | {run.metrics.get("top5", "")} |')
        if run.best and run.final and len(run.history) > 1:
            lines += [
                '', '| epoch (train.py\'s, from 0) | top-1 % | top-5 % |', '|---|---|---|',
                f'| final ({run.final["epoch"]}) | {run.final["top1"]} | {run.final["top5"] or ""} |',
                f'| best on the {eval_split(run)} split ({run.best["epoch"]}) | {run.best["top1"]} | {run.best["top5"] or ""} |']
        paper = PAPER_TOP1.get(pretrained_tag.tag, {}).get(arch) if pretrained_tag else None
        if paper is not None:
            lines += ['', f'The paper reports {paper}% top-1 for this setting ({PAPER_SOURCE[pretrained_tag.tag]}).']
    else:
        lines.append(f'Final pre-training loss (mLiT Eq. 16) {run.metrics["mae_loss"]}, of which masked-patch MSE '
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
