"""Errors a user can act on when pretrained weights do not load: what went wrong, with which repo, and what to do.

``timm.create_model(name, pretrained=True)`` on a cfg without weights builds a random model with a warning, and a
failed load ends in huggingface_hub, safetensors or torch errors that name a URL or a byte offset.
:func:`no_weights_error` and :func:`explain_load_error` turn these into one :class:`PretrainedWeightsError` that names
the model, the repo (or file) and the fix: a tag that is a recipe (no weights exist: ``pretrained=False``, or the
recipe's commands in order, :func:`recipe_commands`), a tag staged in the repository but not in this installation,
a repo or file missing, offline without a cached copy, a corrupt file, or weights of another architecture. The zoo's
shared builder (:func:`~timm_mlit.models._dummy_patch_vit.build_dummy_patch_vit`) applies them, so every family gets
them.
"""
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_mlit.configs import list_recipes, recipe_path
from timm_mlit.errors import UserInputError
from . import _pretrained_tags as tags

__all__ = ['PretrainedWeightsError', 'CheckpointMismatchError', 'UnknownTagError', 'explain_load_error',
           'no_weights_error', 'recipe_commands', 'training_step', 'format_steps', 'clone_note', 'check_tag',
           'check_data_config', 'MAX_CLASSES', 'PUSH_CMD', 'PUSH_SCRIPT', 'PRETRAIN_CMD', 'PRETRAIN_SCRIPT', 'TRAIN_PY']


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


# the commands a recipe's steps name: the installed console scripts (pip install timm-mlit), and the same from a clone
PUSH_CMD = 'mlit-push'
PUSH_SCRIPT = 'python train_scripts/push_to_hub.py'
PRETRAIN_CMD = 'mlit-pretrain'
PRETRAIN_SCRIPT = 'python train_scripts/pretrain_mae.py'
TRAIN_PY = 'python timm-scripts/train.py'  # timm's own train.py: not in timm's wheel, a clone of pytorch-image-models


def _run_folder(tag: tags.PretrainedTag) -> str:
    return 'output/mae/<mae-run>' if tag.kind == 'mae' else 'output/train/<run>'


def _reads_image_folder(tag: tags.PretrainedTag) -> bool:
    """Whether the tag's run reads an ImageFolder (its recipe's ``dataset: ''``): train.py's args.yaml then names no
    dataset, so the run's record must (``mlit-run-info --dataset``), or staging refuses the run."""
    if tag.kind == 'mae' or not tag.config:
        return False  # mlit-pretrain reads torch/<dataset>, which its checkpoint records
    import yaml
    cfg = yaml.safe_load(recipe_path(tag.config).read_text(encoding='utf-8')) or {}
    return not cfg.get('dataset')


def training_step(model: str, tag: tags.PretrainedTag) -> Tuple[str, str]:
    """The step that trains ``model.tag``'s weights: (what it does, the command line)."""
    if tag.kind == 'mae':
        return (f'pre-train the MAE encoder {model}.{tag.tag} on {tag.dataset} (Table 3\'s settings, the defaults)',
                f'{PRETRAIN_CMD} --model {model} --dataset torch/{tag.dataset} --data-dir DATA/{tag.dataset} '
                f'--output output/mae --amp')
    command = (f'{TRAIN_PY} --config "$(mlit-config {tag.config})" --model {model} --data-dir DATA/{tag.dataset} '
               f'--output output/train')
    how = 'train from scratch'
    if tag.encoder:
        encoder = tags.find_tag(f'{model}.{tag.encoder}')
        command += f' --pretrained-path {_run_folder(encoder)}/{encoder.checkpoint}'
        how = f'fine-tune the MAE encoder {model}.{tag.encoder}'
    epochs = f', {tag.epochs} epochs' if tag.epochs else ''
    return f'{how} on {tag.dataset} (recipe {tag.config}{epochs})', command


def recipe_commands(model: str, tag: tags.PretrainedTag) -> List[Tuple[str, str]]:
    """The steps that make the weights of ``model.tag`` and publish them, in order, each as (what it does, the
    command line): the MAE pre-training of its encoder first where the tag fine-tunes one, its own training, the
    run's hardware record, staging (``hub_cards/<model>.<tag>/``) and publishing to its Hub repo. ``<run>`` /
    ``<mae-run>`` stand for the folder each run writes, ``DATA/<dataset>`` for the dataset's folder."""
    name, run = f'{model}.{tag.tag}', _run_folder(tag)
    steps = []
    if tag.encoder:
        steps.append(training_step(model, tags.find_tag(f'{model}.{tag.encoder}')))
    steps.append(training_step(model, tag))
    dataset = f' --dataset {tag.dataset}' if _reads_image_folder(tag) else ''  # an ImageFolder's args.yaml names none
    steps += [
        ('record the run\'s hardware and wall time (staging needs them)' + (', and its dataset' if dataset else ''),
         f'mlit-run-info {run}{dataset} --hardware "..." --wall-time-s SECONDS'),
        (f'stage the run as {tags.STAGE_DIR}/{name}/', f'{PUSH_CMD} --model {name} --run-dir {run} --stage-dir '
                                                       f'{tags.STAGE_DIR}/'),
        (f'publish it to {tags.hub_repo_id(model, tag.tag)}', f'{PUSH_CMD} --staged {tags.STAGE_DIR}/{name}'),
    ]
    return steps


def format_steps(steps: Sequence[Tuple[str, str]], indent: str = '  ') -> str:
    """``steps`` (:func:`recipe_commands`) as numbered lines, each a comment saying what it does over its command."""
    return '\n'.join(f'{indent}# {i}. {what}\n{indent}{command}' for i, (what, command) in enumerate(steps, 1))


def clone_note(steps: Sequence[Tuple[str, str]]) -> str:
    """What :func:`recipe_commands`' ``steps`` run from a clone without installing, and what DATA is."""
    scripts = [f'{script} for {cmd}' for cmd, script in (
        (PRETRAIN_CMD, PRETRAIN_SCRIPT), ('mlit-config', 'python -m timm_mlit.recipes'),
        ('mlit-run-info', 'python -m timm_mlit.hub.run_info'), (PUSH_CMD, PUSH_SCRIPT))
        if any(f'{cmd} ' in command for _, command in steps)]
    data = []
    if any(' --dataset torch/' in command for _, command in steps):
        data.append(f'{PRETRAIN_CMD} reads torchvision\'s files there (add --dataset-download to fetch them)')
    if any('mlit-config ' in command for _, command in steps):
        data.append('the recipe file\'s comments say how to make it for train.py')
    return (f'(From a clone without installing: {", ".join(scripts)}. DATA/<dataset> is the dataset\'s folder: '
            f'{"; ".join(data)}.)')


def _own_weights(full_name: str) -> str:
    return (f"timm.create_model('{full_name}', pretrained=True, pretrained_cfg_overlay=dict(file='PATH')), or a "
            f"Hub-style folder or repo with 'local-dir:FOLDER' / 'hf-hub:ORG/NAME'")


def _staged_elsewhere(full_name: str) -> PretrainedWeightsError:
    folder = f'{tags.STAGE_DIR}/{full_name}'
    return PretrainedWeightsError(
        f'{full_name} is staged in the timm-mlit repository ({folder}/) but not published yet, and this '
        f'installation has no copy of that folder (looked in {tags.STAGE_ROOT}). From a clone of the repository, '
        f'installed from it (pip install -e .), timm.create_model(\'{full_name}\', pretrained=True) loads it; with '
        f'any installation, from a clone\'s root: timm.create_model(\'local-dir:{folder}\', pretrained=True) after '
        f'import timm_mlit (or \'local-dir:PATH/{folder}\' from elsewhere). Or publish it (maintainers): '
        f'{PUSH_CMD} --staged {folder} (from a clone: {PUSH_SCRIPT} --staged {folder}), which uploads to '
        f'{tags.hub_repo_id(*full_name.split(".", 1))}. Without weights: timm.create_model(\'{full_name}\', '
        f'pretrained=False).')


def _recipe_only(full_name: str, tag: tags.PretrainedTag, where: str = '') -> PretrainedWeightsError:
    model = full_name.split('.')[0]
    steps = recipe_commands(model, tag)
    return PretrainedWeightsError(
        f'No weights exist for {full_name}{where}: the tag is a recipe, not trained yet '
        f"(timm.list_models('{model}*', pretrained=True) lists the tags with weights). Create the model without "
        f"them, timm.create_model('{full_name}', pretrained=False), or load weights of your own: "
        f'{_own_weights(full_name)}. To make the weights, follow the recipe:\n'
        f'{format_steps(steps)}\n{clone_note(steps)}')


def no_weights_error(model_name: str, cfg: Dict[str, Any]) -> Optional[PretrainedWeightsError]:
    """The error for ``pretrained=True`` when ``cfg`` (resolved, overlay included) names no weights (no
    ``hf_hub_id``, ``url``, ``file`` or ``state_dict``), where timm would warn and build a random model: for a tag
    of ours, why it has none here and how to make or get them; None when the cfg has weights."""
    if any(cfg.get(key) for key in ('hf_hub_id', 'url', 'file', 'state_dict')):
        return None
    arch = cfg.get('architecture') or model_name
    full_name = f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch
    tag = tags.find_tag(full_name)
    if tag is not None and full_name in tags.STAGED:
        return _staged_elsewhere(full_name)
    if tag is not None:
        return _recipe_only(full_name, tag)
    import timm
    family = timm.models.model_entrypoint(arch).__module__.rpartition('.')[2] if timm.is_model(arch) else arch
    recipes = sorted((r for r in list_recipes() if r.startswith(family)), key=lambda r: ('pretrain' not in r, r))
    recipes = (f'its recipes, pre-training first where there is one: {", ".join(recipes)} (mlit-config NAME prints '
               f'the file, whose comments give the commands)') if recipes else 'the recipes: mlit-config --list'
    return PretrainedWeightsError(
        f"No weights exist for {full_name} (timm.list_models('{family}*', pretrained=True) lists the models with "
        f"weights). Create it without them, timm.create_model('{full_name}', pretrained=False), or load weights of "
        f"your own: {_own_weights(full_name)}. To train it: {recipes}.")


def explain_load_error(model_name: str, cfg: Dict[str, Any], error: BaseException) -> Optional[Exception]:
    """A PretrainedWeightsError for ``error`` raised while loading ``model_name``'s weights from ``cfg``, or None
    when the error is not about the weights (it should then propagate unchanged)."""
    from huggingface_hub import errors as hf_errors
    from safetensors import SafetensorError

    tag = cfg.get('tag') or ''
    full_name = f"{cfg.get('architecture') or model_name}.{tag}" if tag else model_name
    where = _source(cfg)
    local = f"timm.create_model('{full_name}', pretrained=True, pretrained_cfg_overlay=dict(file='PATH'))"
    tag = tags.find_tag(full_name)
    is_ours = tag is not None and cfg.get('hf_hub_id') == tags.hub_repo_id(*full_name.split('.', 1))
    missing = isinstance(error, (hf_errors.RepositoryNotFoundError, hf_errors.EntryNotFoundError,
                                 hf_errors.RevisionNotFoundError, hf_errors.OfflineModeIsEnabled))

    if isinstance(error, CheckpointMismatchError):
        return PretrainedWeightsError(f'{where} does not hold {full_name} weights: {error}')
    if isinstance(error, hf_errors.LocalEntryNotFoundError):
        return PretrainedWeightsError(
            f'The weights of {full_name} ({where}) are not in the local cache and the Hub cannot be reached '
            f'(HF_HUB_OFFLINE set, or no network). Download them once online, or load a local file: {local}')
    if is_ours and missing and tags.tag_state(full_name) == 'recipe':  # its repo named by hand: nothing there
        return _recipe_only(full_name, tag, f' ({where})')
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return PretrainedWeightsError(
            f'{where} does not exist. Check the name (hf-hub:ORG/NAME), HF_ENDPOINT, and HF_TOKEN for a private '
            f'repo; or publish it with {PUSH_CMD} (from a clone: {PUSH_SCRIPT}).')
    if isinstance(error, (hf_errors.EntryNotFoundError, hf_errors.RevisionNotFoundError)):
        return PretrainedWeightsError(
            f'{where} has no weights file for {full_name} ({error.__class__.__name__}): push model.safetensors '
            f'with {PUSH_CMD} (from a clone: {PUSH_SCRIPT}), or set hf_hub_filename in '
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
