"""Hub-style model folders (``config.json`` + ``model.safetensors``, what ``timm.models.save_for_hf`` writes and
``local-dir:`` / ``hf-hub:`` load): the checks ``pretrained=True`` runs on them, in one place.

* :func:`check_hub_config` checks a folder's or repo's config.json: a JSON object naming a registered
  ``architecture`` (for the zoo's families also the data config, :func:`~._load_errors.check_data_config`).
* :func:`install_source_checks` puts it in front of timm's config readers, so that ``timm.create_model(
  'local-dir:PATH')`` / ``('hf-hub:ORG/NAME')`` refuse a missing folder, a config.json without ``architecture`` or
  of another family than its weights, and an invalid repo id with a :class:`~._load_errors.PretrainedWeightsError`
  naming the input, what was expected and the fix (timm would end in a bare FileNotFoundError, KeyError or
  HFValidationError).
* :func:`verify_hub_folder` loads a folder exactly as ``timm.create_model('local-dir:FOLDER', pretrained=True)``
  does (the family's checkpoint filter: finite floating-point weights of the model's shapes; the data config), and
  more strictly: every tensor of the file lands in the model, the classifier included. The publishing command
  (:mod:`timm_mlit.hub.push`) runs it on what it stages and on what it uploads.
"""
import functools
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from timm_mlit._io import load_safetensors
from ._load_errors import PretrainedWeightsError, check_data_config
from ._pretrained_tags import WEIGHTS_FILE

__all__ = ['WEIGHTS_FILE', 'check_hub_config', 'verify_hub_folder', 'install_source_checks', 'is_zoo_model']

_FOLDER_HINT = ('a Hub-style model folder holding config.json and model.safetensors (a staged folder such as '
                'hub_cards/mlit_xxs.c10, or what timm.models.save_for_hf writes)')


def is_zoo_model(architecture: str) -> bool:
    """Whether ``architecture`` is a registered model of this package's families."""
    import timm
    if not timm.is_model(architecture):
        return False
    return getattr(timm.models.model_entrypoint(architecture), '__module__', '').startswith('timm_mlit.')


def _zoo_models() -> str:
    import timm
    zoo = [m for m in timm.list_models() if is_zoo_model(m)]
    named = [m for m in zoo if not m.startswith('mobile_vmoe_')]
    rest = len(zoo) - len(named)
    return ', '.join(named) + (f" or one of the {rest} mobile_vmoe_* models (timm.list_models('mobile_vmoe_*'))"
                               if rest else '')


def _weights_family(weights: Path) -> Optional[str]:
    """What the zoo family describes ``weights`` (a safetensors file) as, from its header only; None when no family
    of the zoo recognises it or it cannot be read."""
    try:
        from safetensors import safe_open
        with safe_open(str(weights), framework='pt') as f:
            keys = list(f.keys())
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device='meta') for k in keys
                      if k == 'pos_embed' or k.endswith(('fc1.weight', 'fc1_weight'))}
    except Exception:
        return None
    from .maevit import _describe_dense_vit
    from .mlit import _describe_mlit
    from .mobile_vmoe import _describe_mobile_vmoe
    state = dict.fromkeys(keys, torch.empty(0, device='meta'))
    state.update(shapes)
    if 'cls_token' in state:  # timm's own ViTs: not ours
        return None
    for describe in (_describe_mlit, _describe_mobile_vmoe, _describe_dense_vit):
        try:
            found = describe(state)
        except Exception:
            found = None
        if found:
            return found
    return None


def check_hub_config(config: Any, where: str, folder: Optional[Path] = None) -> str:
    """Check a parsed config.json (``where`` names it in messages): a JSON object with a registered ``architecture``;
    for the zoo's families, a usable data config. With ``folder``, weights of a zoo family under a config.json of
    another architecture are refused. Returns the architecture."""
    import timm
    if not isinstance(config, dict):
        raise PretrainedWeightsError(
            f'{where} holds a {type(config).__name__}, not a JSON object; expected timm\'s config.json '
            f'({{"architecture": "mlit_xxs", "num_classes": 10, "pretrained_cfg": {{...}}}}). Write it with '
            f'timm.models.save_for_hf, or stage the folder again (mlit-push --stage-dir).')
    arch = config.get('architecture')
    if not isinstance(arch, str) or not arch:
        raise PretrainedWeightsError(
            f'{where} has no "architecture" (got {arch!r}); expected the timm model it holds, e.g. '
            f'"architecture": "mlit_xxs" (the zoo: {_zoo_models()}). Add it, or write the folder with '
            f'timm.models.save_for_hf.')
    if not timm.is_model(arch.partition('.')[0]):
        raise PretrainedWeightsError(
            f'{where} names architecture {arch!r}, which is not a registered timm model; expected one of the zoo '
            f'({_zoo_models()}) or another timm model. Import the package that registers it (import timm_mlit), or '
            f'fix "architecture".')
    if is_zoo_model(arch.partition('.')[0]):
        cfg = dict(config.get('pretrained_cfg') or {}) if isinstance(config.get('pretrained_cfg'), dict) else {}
        if 'num_classes' in config:
            cfg['num_classes'] = config['num_classes']
        check_data_config(cfg, where, unknown_classes_ok=False)
    elif folder is not None:
        found = _weights_family(folder / WEIGHTS_FILE)
        if found:
            raise PretrainedWeightsError(
                f'{where} names architecture {arch!r}, but its {WEIGHTS_FILE} holds {found}, a model of this '
                f'package. Set "architecture" to the model the weights are of (the zoo: {_zoo_models()}), or stage '
                f'the folder again.')
    return arch


def _read_config(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedWeightsError(
            f'{where} is not JSON ({e}); expected timm\'s config.json. Write it with timm.models.save_for_hf, or '
            f'stage the folder again.') from e


def _checked_path_config(original, model_path, *args, **kwargs):
    path = Path(model_path)
    source = f'local-dir:{model_path}'
    if not path.is_dir():
        state = 'is a file, not a folder' if path.exists() else 'does not exist'
        raise PretrainedWeightsError(f'{source}: {path} {state}; expected {_FOLDER_HINT}. Fix the path.')
    if not (path / 'config.json').is_file():
        raise PretrainedWeightsError(
            f'{source}: {path} has no config.json; expected {_FOLDER_HINT}. Point local-dir: at such a folder, or '
            f'load a bare weights file with timm.create_model(NAME, pretrained=True, '
            f'pretrained_cfg_overlay=dict(file=PATH)).')
    check_hub_config(_read_config(path / 'config.json', f'config.json of {source}'), f'config.json of {source}', path)
    return original(model_path, *args, **kwargs)


def _checked_hf_config(original, model_id, *args, **kwargs):
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import validate_repo_id
    source = f'hf-hub:{model_id}'
    repo = str(model_id).partition('@')[0]
    try:
        validate_repo_id(repo)
    except hf_errors.HFValidationError as e:
        raise PretrainedWeightsError(
            f'{source}: {repo!r} is not a valid Hub repo id ({str(e).split(":")[0].rstrip(".")}); expected '
            f'hf-hub:ORG/NAME (optionally @REVISION), e.g. hf-hub:timm-mlit/mlit_xxs.c10. Fix the name.') from None
    try:
        result = original(model_id, *args, **kwargs)
    except KeyError as e:
        raise PretrainedWeightsError(
            f'config.json of {source} has no "architecture"; expected the timm model it holds, e.g. '
            f'"architecture": "mlit_xxs". Re-push the repo with mlit-push, which writes it.') from e
    except json.JSONDecodeError as e:
        raise PretrainedWeightsError(
            f'config.json of {source} is not JSON ({e}); re-push the repo with mlit-push.') from e
    except hf_errors.EntryNotFoundError as e:
        raise PretrainedWeightsError(
            f'{source} has no config.json, so it is not a timm model repo; expected a repo pushed with mlit-push '
            f'(or timm.models.push_to_hf_hub). Check the name, or re-push it.') from e
    except hf_errors.RepositoryNotFoundError as e:
        raise PretrainedWeightsError(
            f'{source}: the Hub has no repo {repo!r} (RepositoryNotFoundError: {str(e).splitlines()[0]}). Check the '
            f'name, HF_ENDPOINT, and HF_TOKEN for a private repo; or publish it with mlit-push.') from e
    pretrained_cfg, name, _ = result
    arch = name.partition('.')[0] if isinstance(name, str) else name
    config = {'architecture': arch, 'pretrained_cfg': pretrained_cfg}
    if isinstance(pretrained_cfg, dict) and 'num_classes' in pretrained_cfg:
        config['num_classes'] = pretrained_cfg['num_classes']
    check_hub_config(config, f'config.json of {source}')
    return result


def install_source_checks() -> None:
    """Put :func:`check_hub_config` (and a repo-id check) in front of the config readers timm's ``create_model``
    calls for ``local-dir:`` and ``hf-hub:`` names (``timm.models._factory``'s module globals; idempotent)."""
    from timm.models import _factory
    for name, wrapper in (('load_model_config_from_path', _checked_path_config),
                          ('load_model_config_from_hf', _checked_hf_config)):
        current = getattr(_factory, name, None)
        if current is None or getattr(current, '_timm_mlit_checked', False):
            continue
        checked = functools.wraps(current)(functools.partial(wrapper, current))
        checked._timm_mlit_checked = True
        setattr(_factory, name, checked)


def _head(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith('head.')}


def verify_hub_folder(folder, model_name: Optional[str] = None) -> Tuple[str, Dict[str, Any], nn.Module]:
    """Load ``folder`` as ``timm.create_model('local-dir:FOLDER', pretrained=True)`` will (same config checks,
    same checkpoint filter and data-config checks), and refuse what that load would let through: a classifier in the
    file the model does not take, or a model head the file lacks (a random head). ``model_name`` (``mlit_xxs.c10``)
    must be of the config's architecture. Returns (architecture, config, the loaded model); raises
    :class:`~._load_errors.PretrainedWeightsError` naming the file and the fix."""
    import timm
    folder = Path(folder)
    where = f'config.json of local-dir:{folder}'
    if not (folder / 'config.json').is_file():
        raise PretrainedWeightsError(f'{folder} has no config.json; expected {_FOLDER_HINT}.')
    config = _read_config(folder / 'config.json', where)
    arch = check_hub_config(config, where, folder)
    if not is_zoo_model(arch):
        raise PretrainedWeightsError(
            f'{where} names {arch!r}, not a model of this package ({_zoo_models()}); fix "architecture", or stage '
            f'the folder again.')
    if model_name is not None and model_name.partition('.')[0] != arch:
        raise PretrainedWeightsError(f'{folder} is named {model_name}, but its config.json is of {arch}: stage the '
                                     f'folder again, or rename it.')
    if not (folder / WEIGHTS_FILE).is_file():
        raise PretrainedWeightsError(f'{folder} has no {WEIGHTS_FILE}; expected {_FOLDER_HINT}.')
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    file_head = _head(load_safetensors(folder / WEIGHTS_FILE))
    model_head = _head(model.state_dict())
    classes = config.get('num_classes')
    if set(file_head) != set(model_head) or any(not torch.equal(file_head[k], model_head[k]) for k in file_head):
        got = file_head.get('head.weight')
        got = f'a {got.shape[0]}-class classifier' if got is not None and got.ndim == 2 else 'no classifier'
        raise PretrainedWeightsError(
            f'{folder / WEIGHTS_FILE} holds {got}, but its config.json has num_classes {classes}: loading it would '
            f'{"drop the file" if file_head else "give the model a random"} head. Stage the folder again from the '
            f'run, so that the two agree.')
    return arch, config, model
