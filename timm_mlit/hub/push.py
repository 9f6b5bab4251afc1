"""Publish a checkpoint to the Hugging Face Hub: ``model.safetensors`` + timm's ``config.json`` (both through timm's
``save_for_hf``) + a model card filled from the run, in one commit.

    python train_scripts/push_to_hub.py --model mlit_xxs.c10 --checkpoint output/train/<run>/model_best.pth.tar \\
        --repo-id ORG/mlit_xxs.c10 [--card-out hub_cards/]

The endpoint and token are huggingface_hub's: ``HF_ENDPOINT`` and ``HF_TOKEN`` (or ``huggingface-cli login``),
unless ``--endpoint`` / ``--token`` are given. ``--dry-run DIR`` writes the three files to DIR and uploads nothing.
"""
import argparse
import tempfile
from pathlib import Path
from typing import List, Optional

import timm
import torch
import yaml
from huggingface_hub import HfApi
from timm.models import load_state_dict, save_for_hf

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.models.mlit import checkpoint_filter_fn
from timm_mlit.profiling import count_macs
from .card import RunInfo, read_run, render_card
from .variants import find_variant

__all__ = ['load_for_push', 'write_repo_files', 'push', 'main']


def load_for_push(model_name: str, checkpoint, use_ema: bool = False, num_classes: Optional[int] = None):
    """The timm model ``model_name`` ('mlit_xxs.c10' or 'mlit_xxs') with the checkpoint's weights, loaded strictly
    (after the architecture check of ``checkpoint_filter_fn``). The file is read once."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'No checkpoint at {checkpoint}.')
    state = load_state_dict(str(checkpoint), use_ema=use_ema)
    variant = find_variant(model_name)
    if num_classes is None:
        head = state.get('head.weight', state.get('module.head.weight'))
        num_classes = variant.num_classes if variant else (0 if head is None else head.shape[0])
    overlay = None
    if variant is None:  # an untagged or custom name: not the default tag's description
        overlay = dict(tag=None, description=f'{model_name.split(".")[0]} trained with timm_mlit.')
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model.eval()


def write_repo_files(model, model_name: str, repo_id: str, run: RunInfo, folder) -> Path:
    """model.safetensors, config.json (timm's save_for_hf) and README.md (the card) in ``folder``."""
    folder = Path(folder)
    save_for_hf(model, str(folder), safe_serialization=True)
    macs = count_macs(model, torch.randn(1, *model.pretrained_cfg['input_size']))
    (folder / 'README.md').write_text(render_card(model_name, model, repo_id, run, macs=macs), encoding='utf-8')
    return folder


def push(model, model_name: str, repo_id: str, run: RunInfo, token: Optional[str] = None,
         endpoint: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
         commit_message: Optional[str] = None, card_out=None):
    """Create ``repo_id`` if needed and commit the weights, config and card. Returns the commit info."""
    api = HfApi(endpoint=endpoint, token=token, library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_repo_files(model, model_name, repo_id, run, tmp)
        if card_out:
            Path(card_out).mkdir(parents=True, exist_ok=True)
            (Path(card_out) / f'{model_name}.md').write_text((folder / 'README.md').read_text(), encoding='utf-8')
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision,
            commit_message=commit_message or f'Add {model_name} weights (timm_mlit)')


def _run_uses_ema(run_dir: Path) -> bool:
    args_file = run_dir / 'args.yaml'
    return bool(args_file.is_file() and (yaml.safe_load(args_file.read_text()) or {}).get('model_ema'))


def main(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                prog='push_to_hub.py')
    p.add_argument('--model', required=True, help="timm name with tag, e.g. mlit_xxs.c10 (or an untagged mlit_xxs)")
    p.add_argument('--checkpoint', required=True, help='train.py checkpoint (.pth.tar) or MAE encoder.safetensors')
    p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hub')
    p.add_argument('--run-dir', default=None, help="the run's output folder (default: the checkpoint's folder)")
    p.add_argument('--dataset', default=None, help="dataset key for the card (default: the run's)")
    p.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                   help="push the EMA weights (default: when the run trained with --model-ema)")
    p.add_argument('--num-classes', type=int, default=None, help='untagged models: default from the checkpoint')
    p.add_argument('--token', default=None, help="default: huggingface_hub's (HF_TOKEN or the saved login)")
    p.add_argument('--endpoint', default=None, help="default: huggingface_hub's (HF_ENDPOINT or the public Hub)")
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.add_argument('--commit-message', default=None)
    p.add_argument('--card-out', default=None, help='also write the card to DIR/<model>.md (e.g. hub_cards/)')
    p.add_argument('--dry-run', default=None, metavar='DIR', help='write the repo files to DIR, upload nothing')
    args = p.parse_args(argv)

    run_dir = Path(args.run_dir or Path(args.checkpoint).parent)
    use_ema = _run_uses_ema(run_dir) if args.use_ema is None else args.use_ema
    model = load_for_push(args.model, args.checkpoint, use_ema=use_ema, num_classes=args.num_classes)
    variant = find_variant(args.model)
    run = read_run(run_dir, dataset=args.dataset or (variant.dataset if variant else None))
    run.ema = use_ema
    if args.dry_run:
        Path(args.dry_run).mkdir(parents=True, exist_ok=True)
        folder = write_repo_files(model, args.model, args.repo_id, run, args.dry_run)
        print(f'wrote {", ".join(sorted(f.name for f in folder.iterdir()))} to {folder}')
        return None
    info = push(model, args.model, args.repo_id, run, token=args.token, endpoint=args.endpoint,
                private=args.private, revision=args.revision, commit_message=args.commit_message,
                card_out=args.card_out)
    print(f'pushed {args.model} to {args.repo_id}: {getattr(info, "commit_url", info)}')
    return info
