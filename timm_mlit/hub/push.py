"""Publish trained weights on the Hugging Face Hub as timm does: ``model.safetensors`` + timm's ``config.json``
(both through timm's ``save_for_hf``) + a model card filled from the run's own records, in one commit.

Three ways to use it (installed: ``mlit-push``; from a clone: ``python train_scripts/push_to_hub.py``):

  stage a finished run as a Hub repo folder, hub_cards/<model>.<tag>/ (nothing uploaded):
    mlit-push --model mlit_xxs.c10 --run-dir output/train/<run> --stage-dir hub_cards/
  publish a staged folder (to timm-mlit/<model>.<tag> unless --repo-id says otherwise):
    mlit-push --staged hub_cards/mlit_xxs.c10
  push a checkpoint straight from its run:
    mlit-push --model mlit_xxs.c10 --checkpoint output/train/<run>/last.pth.tar --repo-id ORG/mlit_xxs.c10

A checkpoint is read without unpickling anything but tensors and plain data. It must fit the tag: a classifier tag
takes a checkpoint with a head of the tag's classes (never a headless MAE encoder, which would publish a random
head), an encoder tag a headless one. The run's records (train.py's args.yaml and summary.csv, run_info.json) must
agree with the tag: model, dataset, number of classes, and (unless --off-recipe, which the card then states)
epochs and recipe. Staging is always strict, takes the final epoch's weights (last.pth.tar), needs run_info.json's
hardware and wall time, and writes the folder atomically: it appears complete or not at all.

The endpoint and token are huggingface_hub's: ``HF_ENDPOINT`` and ``HF_TOKEN`` (or ``hf auth login``), unless
``--endpoint`` / ``--token`` are given. ``--dry-run DIR`` writes the three files to DIR and uploads nothing.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch
from huggingface_hub import HfApi
from timm.models import get_arch_pretrained_cfgs, load_checkpoint, save_for_hf

from timm_mlit._io import (
    PartialFolder, check_target, command, copy_inside, file_inside, load_safetensors, move_file, temporary_folder,
    torch_load, write_bytes, write_text)
from timm_mlit.argtypes import ProseHelpFormatter, hub_repo_id as repo_id_arg, num_classes as num_classes_arg
from timm_mlit.errors import UserInputError
from timm_mlit.models import (  # importing the models registers them
    CheckpointMismatchError, PretrainedWeightsError, family_filter_fn, verify_hub_folder)
from timm_mlit.profiling import count_macs
from .card import render_card
from .records import RunInfo, RunRecordError, check_against_tag, read_run
from timm_mlit.models._pretrained_tags import PUSH_CMD, PUSH_SCRIPT, STAGE_DIR, find_variant, hub_repo_id

__all__ = ['PushError', 'read_checkpoint', 'load_for_push', 'write_repo_files', 'push', 'stage', 'verify_staged',
           'publish_staged', 'main']

REPO_FILES = ('model.safetensors', 'config.json', 'README.md')


class PushError(UserInputError):
    """The push or staging command refuses its input; the message says why and what to do."""


def read_checkpoint(path, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict in ``path`` (safetensors, or a torch file unpickled with ``weights_only=True``: tensors and
    plain data only; train.py's ``args`` Namespace is allowed). ``use_ema`` takes the EMA weights, which must exist."""
    path = Path(path)
    if not path.is_file():
        raise PushError(f'No checkpoint at {path}: pass --checkpoint with a train.py .pth.tar or a .safetensors file.')
    if path.stat().st_size == 0:
        raise PushError(f'{path} is empty (0 bytes): the run did not finish writing it, or the copy failed. Copy it '
                        f'again, or pass another checkpoint of the run.')
    try:
        if path.suffix == '.safetensors':
            return load_safetensors(path)
        state = torch_load(path)
    except Exception as e:
        unsafe = 'Unsupported global' in str(e) or 'weights_only' in str(e).split('\n')[0]
        reason = ('it holds pickled Python objects besides tensors, which are not loaded because unpickling them '
                  'could run code' if unsafe else 'it is corrupt, truncated, or not a checkpoint')
        raise PushError(f'{path} cannot be read: {reason} ({e.__class__.__name__}: {str(e).splitlines()[0][:300]}). '
                        f'Pass the last.pth.tar train.py wrote, or a safetensors file.') from e
    if not isinstance(state, dict):
        raise PushError(f'{path} holds a {type(state).__name__}, not a checkpoint (a state dict, or train.py\'s '
                        f'dict with state_dict).')
    if use_ema:
        for key in ('state_dict_ema', 'model_ema'):
            if isinstance(state.get(key), dict):
                return state[key]
        raise PushError(f'{path} holds no EMA weights (state_dict_ema), but the EMA was asked for (--use-ema, or '
                        f'args.yaml\'s model_ema). Pass --no-use-ema to push the training weights.')
    return state


def _head_classes(state: Dict[str, torch.Tensor]) -> Optional[int]:
    for container in ('state_dict', 'model'):
        if isinstance(state.get(container), dict):
            state = state[container]
            break
    head = state.get('head.weight', state.get('module.head.weight'))
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else None


def _check_model_name(model_name: str) -> None:
    from timm_mlit.models.mlit import MODELS, VARIANTS
    arch, _, tag = model_name.partition('.')
    if not timm.is_model(arch):
        raise PushError(f'Unknown model {arch!r} (--model {model_name}): expected one of {", ".join(MODELS)} with a '
                        f'tag, e.g. mlit_xxs.c10 (tags: {", ".join(VARIANTS)}).')
    tags = [name.partition('.')[2] for name in get_arch_pretrained_cfgs(arch)]
    if tag and tag not in tags:
        raise PushError(f'Unknown tag {tag!r} for {arch} (--model {model_name}): expected one of {", ".join(tags)}.')


def load_for_push(model_name: str, checkpoint, use_ema: bool = False, num_classes: Optional[int] = None):
    """The timm model ``model_name`` ('mlit_xxs.c10' or 'mlit_xxs') with the checkpoint's weights, loaded strictly
    through timm (``load_checkpoint`` with the family's ``checkpoint_filter_fn``, which checks the architecture).
    The file is first checked by :func:`read_checkpoint` and its head must fit the tag (or ``num_classes``); both
    reads take tensors and plain data only (``weights_only=True``, train.py's ``args`` Namespace allowed)."""
    _check_model_name(model_name)
    state = read_checkpoint(checkpoint, use_ema=use_ema)
    variant = find_variant(model_name)
    head = _head_classes(state)
    if variant is not None:
        expected = variant.num_classes
        if expected and head is None:
            raise PushError(
                f'{checkpoint} holds no classifier head (a headless encoder, such as MAE\'s encoder.safetensors), but '
                f'{model_name} is a {expected}-class classifier: publishing it would publish a random head. Fine-tune '
                f'it first ({variant.commands(model_name.split(".")[0])["produce"]}), or push it under the encoder '
                f'tag {model_name.split(".")[0]}.mae_c100.')
        if expected and head != expected:
            raise PushError(f'{checkpoint} has a {head}-class head, but {model_name} classifies {expected} classes. '
                            f'Push it under the tag of the dataset it was trained on.')
        if not expected and head is not None:
            raise PushError(f'{checkpoint} has a {head}-class head, but {model_name} is a headless encoder tag. Push '
                            f'the MAE encoder (encoder.safetensors), or this classifier under its classifier tag.')
        num_classes = expected
    elif num_classes is None:
        num_classes = head or 0
    elif head is not None and head != num_classes:
        raise PushError(f'{checkpoint} has a {head}-class head, but --num-classes is {num_classes}.')
    overlay = None
    if variant is None:  # an untagged or custom name: not the default tag's description
        overlay = dict(tag=None, description=f'{model_name.split(".")[0]} trained with timm_mlit.')
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    try:
        load_checkpoint(model, str(checkpoint), use_ema=use_ema, strict=True, filter_fn=family_filter_fn(model),
                        weights_only=True)
    except CheckpointMismatchError as e:
        raise PushError(f'{checkpoint} does not hold {model_name} weights: {e}') from e
    return model.eval()


def write_repo_files(model, model_name: str, repo_id: str, run: RunInfo, folder, deviations: Sequence[str] = ()):
    """model.safetensors, config.json (timm's save_for_hf) and README.md (the card) in ``folder``."""
    folder = Path(folder)
    save_for_hf(model, str(folder), safe_serialization=True)
    macs = count_macs(model, torch.randn(1, *model.pretrained_cfg['input_size']))
    card = render_card(model_name, model, repo_id, run, macs=macs, deviations=deviations)
    write_text(folder / 'README.md', card)
    return folder


def push(model, model_name: str, repo_id: str, run: RunInfo, token: Optional[str] = None,
         endpoint: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
         commit_message: Optional[str] = None, card_out=None, deviations: Sequence[str] = (),
         overwrite: bool = False):
    """Create ``repo_id`` if needed and commit the weights, config and card. Returns the commit info. ``card_out``
    also gets the card as ``<model>.md``; an existing one is replaced only with ``overwrite``."""
    card = Path(card_out) / f'{model_name}.md' if card_out else None
    if card is not None:
        check_target(card, overwrite, '--card-out')  # before anything is uploaded
    api = HfApi(endpoint=endpoint, token=token, library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with temporary_folder() as tmp:
        folder = write_repo_files(model, model_name, repo_id, run, tmp, deviations=deviations)
        verify_staged(folder, model_name)  # what pretrained=True will check, before anything is uploaded
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(tmp), revision=revision,
            commit_message=commit_message or f'Add {model_name} weights (timm_mlit)')
        if card is not None:  # the record of what was published, once it is
            card.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(card, (folder / 'README.md').read_bytes(), overwrite=overwrite, what='--card-out')
        return info


def _run_and_checkpoint(model_name: str, run_dir, checkpoint=None):
    _check_model_name(model_name)
    variant = find_variant(model_name)
    if variant is None:
        raise PushError(f'{model_name} is not a model.tag of timm_mlit.models.mlit.VARIANTS: staging is for the '
                        f'zoo\'s tags (e.g. mlit_xxs.c10).')
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PushError(f'No run folder at {run_dir}: pass --run-dir with the train.py (or pretrain_mae.py) output '
                        f'folder of the run.')
    checkpoint = Path(checkpoint) if checkpoint else run_dir / Path(variant.checkpoint).name
    return variant, run_dir, checkpoint


def stage(model_name: str, run_dir, stage_dir, checkpoint=None, overwrite: bool = False) -> Path:
    """Write ``stage_dir/<model>.<tag>/`` (model.safetensors, config.json, README.md) from a finished run whose
    records match the tag in everything, atomically. Returns the folder."""
    variant, run_dir, checkpoint = _run_and_checkpoint(model_name, run_dir, checkpoint)
    target = Path(stage_dir) / model_name
    if os.path.lexists(target) and not overwrite:
        raise PushError(f'{target} exists already. Pass --overwrite to replace it with this run.')
    if os.path.lexists(target) and not _is_staged_folder(target):
        raise PushError(f'{target} exists and is not a staged folder (only {", ".join(REPO_FILES)}): --overwrite '
                        f'replaces only what staging wrote. Remove it yourself, or pass another --stage-dir.')
    run = read_run(run_dir, checkpoint=checkpoint)
    check_against_tag(run, model_name, variant, run_dir, strict=True)
    missing = [k for k, v in (('hardware', run.hardware), ('wall_time_s', run.wall_time_s)) if not v]
    if missing:
        raise PushError(
            f'{run_dir / "run_info.json"} does not record {" and ".join(missing)}; train.py records neither, and a '
            f'card never guesses them. Write it: mlit-run-info {run_dir} --hardware "..." '
            f'--wall-time-s SECONDS (or run the training through mlit-run-info {run_dir} -- '
            f'<train command>).')
    if not run.dataset:
        raise PushError(f'The run in {run_dir} trained on an ImageFolder ({run.data_dir or "no --dataset"}); record '
                        f'which dataset it is in run_info.json ("dataset": "{variant.dataset}").')
    if run.kind == 'classification':
        if run.planned_epochs is not None and run.epochs != run.planned_epochs:
            raise PushError(f'The run in {run_dir} logged {run.epochs} of its {run.planned_epochs} epochs: it did '
                            f'not finish. Stage a finished run.')
        if run.weights_epoch is None:
            read_checkpoint(checkpoint)  # says what is wrong with the file, if anything
            raise PushError(f'{checkpoint} records no epoch: it is not a train.py checkpoint. Pass the run\'s '
                            f'last.pth.tar.')
        if run.weights_epoch != run.final['epoch']:
            raise PushError(
                f'{checkpoint} is epoch {run.weights_epoch}, not the run\'s final epoch {run.final["epoch"]}: a tag '
                f'publishes the final weights, not the best-on-test. Pass the run\'s last.pth.tar.')
    use_ema = bool(run.args.get('model_ema'))
    model = load_for_push(model_name, checkpoint, use_ema=use_ema)
    run.ema = use_ema
    target.parent.mkdir(parents=True, exist_ok=True)
    with PartialFolder(target.parent / f'.{model_name}.tmp-{os.getpid()}', '--stage-dir') as tmp:
        write_repo_files(model, model_name, hub_repo_id(*model_name.split('.', 1)), run, tmp.path)
        verify_staged(tmp.path, model_name)
        return tmp.commit(target, replace=lambda old: overwrite and _is_staged_folder(old))


def _is_staged_folder(folder: Path) -> bool:
    """A real folder holding nothing but (some of) the staged files, each a regular file: what staging writes."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return all(p.name in REPO_FILES and p.is_file() and not p.is_symlink() for p in folder.iterdir())


def verify_staged(folder, model_name: Optional[str] = None):
    """Check a staged folder before it is published: the three files, and then what ``pretrained=True`` will check
    when it is loaded (:func:`~timm_mlit.models.verify_hub_folder`: a config.json of a zoo architecture with a sane
    data config; finite floating-point weights that the family's checkpoint filter and a strict load put into the
    model config.json describes, the classifier included). Returns (model name with tag, config)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f'No staged folder at {folder}: stage one with {PUSH_CMD} --model MODEL.TAG --run-dir RUN '
                        f'--stage-dir {STAGE_DIR}/ (from a clone: {PUSH_SCRIPT} ...).')
    for file in REPO_FILES:  # each a regular file of the folder: a symlink out of it is never read or published
        file_inside(folder, file, '--staged', missing_ok=True)
    missing = [f for f in REPO_FILES if not (folder / f).is_file()]
    if missing:
        raise PushError(f'{folder} lacks {", ".join(missing)}: it is not a complete staged folder. Stage it again.')
    try:
        config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PushError(f'{folder / "config.json"} is not JSON ({e}): it must be the config.json timm\'s save_for_hf '
                        f'writes. Stage the folder again.') from e
    name = model_name or folder.name
    try:  # the checks pretrained=True runs on the folder (local-dir:), and a strict head
        verify_hub_folder(folder, name)
    except PretrainedWeightsError as e:
        raise PushError(f'{folder} would not load as published: {e}') from e
    return name, config


def _check_repo_id(repo_id: str, flag: str) -> None:
    try:
        repo_id_arg(repo_id)
    except argparse.ArgumentTypeError as e:
        raise PushError(f'{flag} {repo_id!r}: {e}. Fix the repo id.') from None


def _check_card_names(folder, repo_id: str) -> None:
    """The card (README.md) tells readers ``timm.create_model('hf-hub:REPO', ...)``: it must name the repo it is
    published to."""
    card = (Path(folder) / 'README.md').read_text(encoding='utf-8', errors='replace')
    if f"hf-hub:{repo_id}'" not in card:
        import re
        named = sorted(set(re.findall(r"hf-hub:([^'\s)]+)'", card)))
        raise PushError(
            f'{Path(folder) / "README.md"} names {" and ".join(named) or "no hf-hub: repo"}, not {repo_id}, the repo '
            f'it would be published to: its usage lines would load another repo. Publish the folder to the repo its '
            f'card names (drop --repo-id), or push the run\'s checkpoint to {repo_id} with {PUSH_CMD} --model MODEL.TAG '
            f'--checkpoint CKPT --repo-id {repo_id}, which writes a card for it.')


def publish_staged(folder, repo_id: Optional[str] = None, token: Optional[str] = None,
                   endpoint: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
                   commit_message: Optional[str] = None):
    """Upload a staged folder's three files, after :func:`verify_staged`, to ``repo_id`` (default: the tag's); then
    write its card beside the folder as ``<model>.<tag>.md``, the record of a published repo. Each file must be a
    regular file inside the folder (a symlink out of it is refused, never published), and what is uploaded is a
    copy taken of the verified files."""
    name, _ = verify_staged(folder)
    if repo_id is None:
        if find_variant(name) is None:
            raise PushError(f'{folder} is not named <model>.<tag> of a zoo tag, so it has no default repo: pass '
                            f'--repo-id ORG/NAME.')
        repo_id = hub_repo_id(*name.split('.', 1))
    _check_repo_id(repo_id, '--repo-id')
    _check_card_names(folder, repo_id)
    card = Path(folder).parent / f'{name}.md'
    check_target(card, overwrite=True)  # the record of the last publish may be replaced; a special file may not
    with temporary_folder() as snapshot:
        copy_inside(folder, REPO_FILES, snapshot, '--staged')
        api = HfApi(endpoint=endpoint, token=token, library_name='timm', library_version=timm.__version__)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(snapshot), revision=revision, allow_patterns=list(REPO_FILES),
            commit_message=commit_message or f'Add {name} weights (timm_mlit)')
        write_bytes(card, (snapshot / 'README.md').read_bytes(), overwrite=True)
    return repo_id, info


def _run_uses_ema(run_dir: Path) -> bool:
    args_file = run_dir / 'args.yaml'
    if not args_file.is_file():
        return False
    from .records import _read_yaml
    return bool(_read_yaml(args_file).get('model_ema'))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=ProseHelpFormatter,
                                prog=PUSH_CMD)
    p.add_argument('--model', default=None, help="timm name with tag, e.g. mlit_xxs.c10 (or an untagged mlit_xxs)")
    p.add_argument('--checkpoint', default=None,
                   help="train.py checkpoint (.pth.tar) or MAE encoder.safetensors (staging: default the run's "
                        "last.pth.tar / encoder.safetensors)")
    p.add_argument('--repo-id', default=None, type=repo_id_arg,
                   help='ORG/NAME on the Hub (--staged: default timm-mlit/<model>.<tag>)')
    p.add_argument('--run-dir', default=None, help="the run's output folder (default: the checkpoint's folder)")
    p.add_argument('--stage-dir', default=None, metavar='DIR',
                   help=f'stage the run as DIR/<model>.<tag>/ (e.g. {STAGE_DIR}/) instead of uploading')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing staged folder (--stage-dir), or existing files in --dry-run / --card-out')
    p.add_argument('--staged', default=None, metavar='DIR',
                   help='publish a staged folder (e.g. hub_cards/mlit_xxs.c10)')
    p.add_argument('--dataset', default=None, help="dataset key for the card when the run's records lack one "
                                                   "(an ImageFolder run); it may not contradict them")
    p.add_argument('--use-ema', action=argparse.BooleanOptionalAction, default=None,
                   help="push the EMA weights (default: when the run trained with --model-ema)")
    p.add_argument('--num-classes', type=num_classes_arg, default=None,
                   help='untagged models: default from the checkpoint')
    p.add_argument('--off-recipe', action='store_true',
                   help="push a run whose epochs or recipe differ from the tag's; the card says so at the top "
                        "(never for --stage-dir)")
    p.add_argument('--token', default=None, help="default: huggingface_hub's (HF_TOKEN or the saved login)")
    p.add_argument('--endpoint', default=None, help="default: huggingface_hub's (HF_ENDPOINT or the public Hub)")
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.add_argument('--commit-message', default=None)
    p.add_argument('--card-out', default=None, help='also write the card to DIR/<model>.md')
    p.add_argument('--dry-run', default=None, metavar='DIR', help='write the repo files to DIR, upload nothing')
    return p


def _main(args, p: argparse.ArgumentParser):
    if args.staged:
        if args.model or args.checkpoint or args.stage_dir:
            p.error('--staged publishes a staged folder as it is: drop --model / --checkpoint / --stage-dir')
        repo_id, info = publish_staged(args.staged, args.repo_id, token=args.token, endpoint=args.endpoint,
                                       private=args.private, revision=args.revision,
                                       commit_message=args.commit_message)
        print(f'published {args.staged} to {repo_id}: {getattr(info, "commit_url", info)}')
        return info
    if not args.model:
        p.error('--model is required (e.g. --model mlit_xxs.c10), unless --staged DIR is given')
    if args.stage_dir:
        if not args.run_dir:
            p.error('--stage-dir needs --run-dir: the folder of the finished run')
        if args.off_recipe or args.dry_run or args.repo_id:
            p.error('--stage-dir stages the tag\'s own repo from a run that follows its recipe: drop --off-recipe, '
                    '--dry-run and --repo-id')
        folder = stage(args.model, args.run_dir, args.stage_dir, checkpoint=args.checkpoint, overwrite=args.overwrite)
        print(f'staged {args.model} in {folder} ({", ".join(REPO_FILES)}). Publish it with {PUSH_CMD} --staged '
              f'{folder} (from a clone: {PUSH_SCRIPT} --staged {folder}); load it now with '
              f"timm.create_model('local-dir:{folder}', pretrained=True) after import timm_mlit.")
        return folder
    if not args.checkpoint or not (args.repo_id or args.dry_run):
        p.error('pushing needs --checkpoint and --repo-id (or --dry-run DIR); or use --stage-dir / --staged')
    for name in REPO_FILES if args.dry_run else ():  # before any work: the user's files are never replaced unasked
        check_target(Path(args.dry_run) / name, args.overwrite, '--dry-run')
    if args.card_out and not args.dry_run:
        check_target(Path(args.card_out) / f'{args.model}.md', args.overwrite, '--card-out')
    run_dir = Path(args.run_dir or Path(args.checkpoint).parent)
    use_ema = _run_uses_ema(run_dir) if args.use_ema is None else args.use_ema
    model = load_for_push(args.model, args.checkpoint, use_ema=use_ema, num_classes=args.num_classes)
    variant = find_variant(args.model)
    run = read_run(run_dir, dataset=args.dataset, checkpoint=args.checkpoint)
    run.ema = use_ema
    deviations: List[str] = []
    if variant is not None:
        deviations = check_against_tag(run, args.model, variant, run_dir, strict=False)
        if deviations and not args.off_recipe:
            raise RunRecordError(
                f'The run in {run_dir} does not follow the {args.model} recipe: {"; ".join(deviations)}. Train with '
                f'the tag\'s config to publish under it, or pass --off-recipe to push it with a card that says so.')
    repo_id = args.repo_id or 'ORG/NAME'
    if args.dry_run:
        folder = Path(args.dry_run)
        folder.mkdir(parents=True, exist_ok=True)
        with PartialFolder(folder / f'.dry-run-{os.getpid()}', '--dry-run') as tmp:  # all three files, or none
            write_repo_files(model, args.model, repo_id, run, tmp.path, deviations=deviations)
            for name in REPO_FILES:
                check_target(folder / name, args.overwrite, '--dry-run')
            for name in REPO_FILES:
                move_file(tmp.path / name, folder / name, overwrite=args.overwrite, what='--dry-run')
        print(f'wrote {", ".join(REPO_FILES)} to {folder}')
        return None
    info = push(model, args.model, repo_id, run, token=args.token, endpoint=args.endpoint,
                private=args.private, revision=args.revision, commit_message=args.commit_message,
                card_out=args.card_out, deviations=deviations, overwrite=args.overwrite)
    print(f'pushed {args.model} to {repo_id}: {getattr(info, "commit_url", info)}')
    return info


@command
def main(argv: Optional[List[str]] = None):
    """``mlit-push``: see the module docstring or ``--help``. Input it refuses exits with status 2 and a message
    that names the input, what was expected and the fix."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        return _main(args, p)
    except UserInputError as e:  # PushError, RunRecordError, PretrainedWeightsError, ...
        p.exit(2, f'{p.prog}: error: {" ".join(str(e).splitlines())}\n')


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-push', main)
