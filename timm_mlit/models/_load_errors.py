"""Errors a user can act on when pretrained weights do not load: what went wrong, with which repo, and what to do.

``timm.create_model(name, pretrained=True)`` ends in huggingface_hub, safetensors or torch errors that name a
URL or a byte offset. :func:`explain_load_error` turns those into one :class:`PretrainedWeightsError` that names the
model, the repo (or file) and the fix: weights not published yet, repo or file missing, offline without a cached
copy, a corrupt file, or weights of another architecture. The zoo's shared builder
(:func:`~timm_mlit.models._dummy_patch_vit.build_dummy_patch_vit`) applies it, so every family gets it.
"""
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

from timm_mlit.errors import UserInputError
from . import _pretrained_tags as tags

__all__ = ['PretrainedWeightsError', 'CheckpointMismatchError', 'UnknownTagError', 'explain_load_error',
           'unpublished_on_public_hub', 'check_tag', 'check_data_config', 'MAX_CLASSES']


class PretrainedWeightsError(UserInputError, RuntimeError):
    """Pretrained weights could not be loaded; the message says why and what to do."""


class CheckpointMismatchError(UserInputError):
    """A checkpoint belongs to another architecture or model size."""


class UnknownTagError(UserInputError, RuntimeError):
    """``model.tag`` names a tag the architecture does not have (a RuntimeError as timm's own 'Invalid pretrained
    tag'); the message lists the valid tags."""


MAX_CLASSES = 100_000  # more than any classification dataset (ImageNet-21k: 21,841): a larger count is a typo


def check_tag(architecture: str, pretrained_cfg: Any) -> None:
    """Refuse ``pretrained_cfg`` when it is a tag (the part after the dot of ``mlit_xxs.c10``) that ``architecture``
    does not have, listing the tags it has. Anything else (None, a dict, a PretrainedCfg) passes."""
    if not isinstance(pretrained_cfg, str) or not pretrained_cfg:
        return
    from timm.models import get_arch_pretrained_cfgs
    valid = [name.partition('.')[2] for name in get_arch_pretrained_cfgs(architecture)]
    if pretrained_cfg in valid:
        return
    example = f' (e.g. {architecture}.{valid[0]}, the default, which the bare name {architecture} also loads)' \
        if valid else ''
    raise UnknownTagError(
        f'{architecture}.{pretrained_cfg}: {architecture} has no pretrained tag {pretrained_cfg!r}; its tags are '
        f'{", ".join(valid) or "none"}. Use one of them{example}.')


def _numbers(value, length: Optional[int] = None) -> bool:
    import math
    return isinstance(value, (list, tuple)) and (length is None or len(value) == length) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def check_data_config(cfg: Dict[str, Any], where: str, unknown_classes_ok: bool = True) -> None:
    """Refuse a pretrained cfg (timm's ``pretrained_cfg``: a registry tag's, or a config.json's) whose data config
    would make wrong predictions without a word: ``input_size`` not (C, H, W) positive integers, ``mean`` / ``std``
    not C finite numbers, a ``std`` that is not > 0 (the normalisation divides by it), a ``crop_pct`` outside
    (0, 1], or a ``num_classes`` that is not an integer from 0 (no classifier) to :data:`MAX_CLASSES`. ``where``
    names the source in the message (e.g. 'config.json of local-dir:hub_cards/mlit_xxs.c10'). ``num_classes=-1`` is
    timm's 'unknown' (train.py's ``--pretrained-path`` overlay sets it): allowed unless ``unknown_classes_ok`` is
    False (a config.json records the classes of the weights it comes with)."""
    problems = []
    size = cfg.get('input_size')
    chans = None
    if size is not None:
        if _numbers(size, 3) and all(isinstance(v, int) and v > 0 for v in size):
            chans = size[0]
        else:
            problems.append(f'input_size {size!r} is not (channels, height, width), three positive integers')
    for key in ('mean', 'std'):
        value = cfg.get(key)
        if value is None:
            continue
        if not _numbers(value) or (chans is not None and len(value) != chans):
            problems.append(f'{key} {value!r} is not {chans or "one per channel"} finite numbers'
                            f'{" (one per input channel)" if chans else ""}')
        elif key == 'std' and not all(v > 0 for v in value):
            problems.append(f'std {value!r} has a value that is not > 0 (the normalisation divides by it)')
    crop = cfg.get('crop_pct')
    if crop is not None and not (isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0 < crop <= 1):
        problems.append(f'crop_pct {crop!r} is not in (0, 1]')
    classes = cfg.get('num_classes')
    if classes is not None and not (isinstance(classes, int) and not isinstance(classes, bool) and (
            0 <= classes <= MAX_CLASSES or (unknown_classes_ok and classes == -1))):
        problems.append(f'num_classes {classes!r} is not an integer from 0 (no classifier) to {MAX_CLASSES}')
    if problems:
        raise PretrainedWeightsError(
            f'{where}: the data config is not usable: {"; ".join(problems)}. Fix these fields (timm.models.save_for_hf '
            f'writes them from the model\'s pretrained_cfg), or stage the folder again.')


def _source(cfg: Dict[str, Any]) -> str:
    if cfg.get('file'):
        return f"file {cfg['file']}"
    if cfg.get('hf_hub_id'):
        from huggingface_hub import constants
        return f"Hub repo {cfg['hf_hub_id']} (at {constants.ENDPOINT})"
    return f"URL {cfg.get('url')}"


def _cached_weights(cfg: Dict[str, Any]) -> Optional[str]:
    if not cfg.get('hf_hub_id'):
        return cfg.get('file')
    try:
        from huggingface_hub import try_to_load_from_cache
        for name in (cfg.get('hf_hub_filename'), 'model.safetensors', 'pytorch_model.bin'):
            if name:
                path = try_to_load_from_cache(cfg['hf_hub_id'], name)
                if isinstance(path, str):
                    return path
    except Exception:  # only for the hint
        pass
    return None


def _not_published(full_name: str, variant, where: str, local: str) -> PretrainedWeightsError:
    cmds, stage_dir = variant.commands(full_name.split('.')[0]), tags.STAGE_DIR
    if full_name in tags.STAGED:
        return PretrainedWeightsError(
            f'{full_name} is staged in the timm-mlit repository ({stage_dir}/{full_name}/) but not published yet '
            f'({where}). From a clone, load the staged folder: '
            f"timm.create_model('local-dir:{stage_dir}/{full_name}', pretrained=True) after import timm_mlit; or "
            f'publish it with\n  {cmds["publish"]}')
    return PretrainedWeightsError(
        f'No weights are published yet for {full_name} ({where}). Produce them with\n  {cmds["produce"]}\n'
        f'stage the finished run with\n  {cmds["stage"]}\npublish it with\n  {cmds["publish"]}\n'
        f'or load a local file: {local}')


def unpublished_on_public_hub(model_name: str, cfg: Dict[str, Any]) -> Optional[PretrainedWeightsError]:
    """The error for a tag of ours that is not in ``PUBLISHED``, when the weights would come from the public Hub:
    raised before any download, so nobody waits for retries. With HF_ENDPOINT set to a mirror or a local server,
    the download is tried (weights may have been pushed there)."""
    from huggingface_hub import constants
    tag = cfg.get('tag') or ''
    full_name = f"{cfg.get('architecture') or model_name}.{tag}"
    variant = tags.find_variant(full_name)
    if (variant is None or full_name in tags.PUBLISHED or cfg.get('file') or cfg.get('url')
            or cfg.get('hf_hub_id') != tags.hub_repo_id(*full_name.split('.', 1))
            or constants.ENDPOINT.rstrip('/') != getattr(constants, '_HF_DEFAULT_ENDPOINT', 'https://huggingface.co')):
        return None
    local = f"timm.create_model('{full_name}', pretrained=True, pretrained_cfg_overlay=dict(file='PATH'))"
    return _not_published(full_name, variant, _source(cfg), local)


def explain_load_error(model_name: str, cfg: Dict[str, Any], error: BaseException) -> Optional[Exception]:
    """A PretrainedWeightsError for ``error`` raised while loading ``model_name``'s weights from ``cfg``, or None
    when the error is not about the weights (it should then propagate unchanged)."""
    from huggingface_hub import errors as hf_errors
    from safetensors import SafetensorError

    tag = cfg.get('tag') or ''
    full_name = f"{cfg.get('architecture') or model_name}.{tag}" if tag else model_name
    where = _source(cfg)
    local = f"timm.create_model('{full_name}', pretrained=True, pretrained_cfg_overlay=dict(file='PATH'))"
    variant = tags.find_variant(full_name)
    is_ours = variant is not None and cfg.get('hf_hub_id') == tags.hub_repo_id(*full_name.split('.', 1))
    missing = isinstance(error, (hf_errors.RepositoryNotFoundError, hf_errors.EntryNotFoundError,
                                 hf_errors.RevisionNotFoundError, hf_errors.OfflineModeIsEnabled))

    if isinstance(error, CheckpointMismatchError):
        return PretrainedWeightsError(f'{where} does not hold {full_name} weights: {error}')
    if isinstance(error, hf_errors.LocalEntryNotFoundError):
        return PretrainedWeightsError(
            f'The weights of {full_name} ({where}) are not in the local cache and the Hub cannot be reached '
            f'(HF_HUB_OFFLINE set, or no network). Download them once online, or load a local file: {local}')
    if is_ours and full_name not in tags.PUBLISHED and missing:
        return _not_published(full_name, variant, where, local)
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return PretrainedWeightsError(
            f'{where} does not exist. Check the name (hf-hub:ORG/NAME), HF_ENDPOINT, and HF_TOKEN for a private '
            f'repo; or publish it with mlit-push (from a clone: python train_scripts/push_to_hub.py).')
    if isinstance(error, (hf_errors.EntryNotFoundError, hf_errors.RevisionNotFoundError)):
        return PretrainedWeightsError(
            f'{where} has no weights file for {full_name} ({error.__class__.__name__}): push model.safetensors '
            f'with mlit-push (from a clone: python train_scripts/push_to_hub.py), or set hf_hub_filename in '
            f'pretrained_cfg_overlay.')
    if isinstance(error, RuntimeError) and 'weights_only=True blocked' in str(error):
        return PretrainedWeightsError(
            f'{where} is a pickle that holds Python objects besides tensors ({error.__cause__ or error}). It was not '
            f'loaded: unpickling them could run code. Load the weights from a safetensors file instead (or, if you '
            f'made the file yourself, re-save its state dict: '
            f'safetensors.torch.save_file(checkpoint["state_dict"], "model.safetensors")).')
    corrupt = isinstance(error, (SafetensorError, EOFError, pickle.UnpicklingError)) or (
        isinstance(error, RuntimeError) and any(
            s in str(error) for s in ('zip archive', 'unpickl', 'invalid load key', 'Ran out of input', 'EOF')))
    if corrupt:
        detail = f'{error.__class__.__name__}: {error}' if str(error) else error.__class__.__name__
        if cfg.get('file'):
            path = Path(cfg['file'])
            state = 'empty (0 bytes)' if path.is_file() and path.stat().st_size == 0 else 'corrupt or truncated'
            return PretrainedWeightsError(
                f'The weights file of {full_name}, {where}, is {state} ({detail}). It is not a readable checkpoint: '
                f'copy it again, or re-save the weights (timm.models.save_for_hf, or '
                f'safetensors.torch.save_file(model.state_dict(), PATH)).')
        path = _cached_weights(cfg) or 'the cached weights file'
        return PretrainedWeightsError(
            f'The weights file of {full_name} from {where} is corrupt or truncated ({detail}). Delete {path} '
            f'(or the repo\'s folder in the Hugging Face cache) and load again; if it persists, re-push the weights.')
    if isinstance(error, RuntimeError) and 'Error(s) in loading state_dict' in str(error):
        return PretrainedWeightsError(
            f'{where} does not fit {full_name}: {error}\nLoad a checkpoint of this architecture, or create the model '
            f'with the arguments it was trained with.')
    if isinstance(error, FileNotFoundError) and cfg.get('file'):
        if Path(cfg['file']).is_dir():
            return PretrainedWeightsError(
                f'{where} is a folder, not a checkpoint file: pass the weights file in it (e.g. model.safetensors), '
                f"or load a Hub-style folder with timm.create_model('local-dir:{cfg['file']}', pretrained=True).")
        return PretrainedWeightsError(f'{where} does not exist: pass the path of a checkpoint file.')
    if isinstance(error, AttributeError) and cfg.get('file') and any(
            f"no attribute '{name}'" in str(error) for name in ('items', 'keys', 'get')):
        return PretrainedWeightsError(
            f'{where} does not hold a state dict ({error}): pass a file saved from model.state_dict(), a train.py '
            f'checkpoint or a safetensors file.')
    if isinstance(error, RuntimeError) and 'No suitable checkpoints found' in str(error):
        return PretrainedWeightsError(
            f'{where} holds no weights file for {full_name} (no model.safetensors or pytorch_model.bin): stage the '
            f'folder again (mlit-push --stage-dir), or copy the weights into it as model.safetensors.')
    if isinstance(error, hf_errors.HfHubHTTPError):
        return PretrainedWeightsError(f'Downloading {full_name} from {where} failed: {error}')
    return None
