"""The pretrained tags of the zoo's families, one Hugging Face Hub repo per ``model.tag`` as timm does: what each
tag's weights are, the recipe that makes them, whether they exist, and so where its pretrained cfg loads them from.

Each family writes its tags in its file (``mlit.py``: :data:`~timm_mlit.models.mlit.TAGS`) as
:class:`PretrainedTag` records, which hold data only, and registers them here with :func:`register_tags`, which
returns the family's ``default_cfgs``. The commands that follow a tag's recipe are built by the code that prints them
(:func:`~timm_mlit.models._load_errors.recipe_commands`). A tag is in one of three states, and its cfg has weights
(timm's ``hf_hub_id`` or ``file``, what ``timm.list_models(..., pretrained=True)`` lists) exactly where they load:

  * ``PUBLISHED``: the weights are on the Hub; the cfg's ``hf_hub_id`` is the tag's repo. Empty today.
  * ``STAGED``: a trained run has been staged in the repository as a Hub repo folder, ``hub_cards/<model>.<tag>/``
    (model.safetensors, config.json, README.md card), which one command publishes (``mlit-push --staged
    hub_cards/<model>.<tag>``). Until it is published, in a clone (the folder lies beside the package,
    :data:`STAGE_ROOT`) the cfg's ``file`` is the folder's model.safetensors, so ``timm.create_model('mlit_xxs.c10',
    pretrained=True)`` loads it; an installed package has no such folder, so there the tag has no weights and
    ``pretrained=True`` says how to get them. A published tag stays in STAGED (its folder stays as the record).
    Empty today.
  * every other tag is a recipe: its cfg has no weights, and ``pretrained=True`` raises PretrainedWeightsError with
    the recipe's commands.

Publishing (model cards, the paper's figures, the Hub datasets, the recipe files) is ``timm_mlit.hub``'s job.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

__all__ = ['HUB_ORG', 'PretrainedTag', 'PUBLISHED', 'STAGED', 'STAGE_DIR', 'STAGE_ROOT', 'WEIGHTS_FILE',
           'hub_repo_id', 'register_tags', 'pretrained_cfgs', 'find_tag', 'tags_of', 'tagged_models', 'staged_folder',
           'weights_source', 'tag_state']

HUB_ORG = 'timm-mlit'
PUBLISHED: FrozenSet[str] = frozenset()  # model.tag names whose weights are on the Hub
STAGED: FrozenSet[str] = frozenset()  # the model.tag folders under hub_cards/ (a test checks they agree)
STAGE_DIR = 'hub_cards'  # where staged repo folders live, relative to a clone's root
STAGE_ROOT = Path(__file__).resolve().parents[2] / STAGE_DIR  # that folder beside the package: exists in a clone only
WEIGHTS_FILE = 'model.safetensors'  # the weights file of a Hub repo folder (timm's save_for_hf)


@dataclass(frozen=True)
class PretrainedTag:
    """One pretrained tag of a family (the part after the dot of ``mlit_xxs.c10``): what its weights are and the
    recipe that makes them."""
    tag: str
    dataset: str  # what the head classifies, or what the encoder was pre-trained on: a name of
    #               timm_mlit.hub.tag_info.DATASETS (cifar100, cifar10, svhn, flowers102)
    num_classes: int  # 0 for a headless encoder
    description: str
    kind: str = 'classification'  # 'classification': a classifier trained with timm's train.py; 'mae': the encoder
    #                               of MAE pre-training (mlit-pretrain), no head (a run's records say the same)
    config: str = ''  # the train.py recipe a run must follow (timm_mlit/configs/<config>.yaml, mlit-config <config>);
    #                   '' for MAE pre-training, whose defaults are the paper's (Table 3)
    epochs: Optional[int] = None  # epochs the recipe trains (None: depends on the model, not checked)
    encoder: str = ''  # the tag of the MAE encoder it fine-tunes (train.py --pretrained-path); '' from scratch
    checkpoint: str = 'last.pth.tar'  # the run's file that is staged: the final epoch's weights, never the best


_TAGS: Dict[str, Dict[str, PretrainedTag]] = {}  # architecture -> tag -> PretrainedTag, filled by register_tags
_CFGS: Dict[str, Tuple[str, Callable[..., Dict[str, Any]]]] = {}  # architecture -> (default tag, cfg function)


def hub_repo_id(model: str, tag: str) -> str:
    return f'{HUB_ORG}/{model}.{tag}'


def staged_folder(model_tag: str) -> Optional[Path]:
    """The staged folder of ``model_tag`` when it is in STAGED and lies beside the package (a clone) with its weights
    and config.json as regular files of its own; None otherwise (an installed package has no such folder)."""
    if model_tag not in STAGED:
        return None
    folder = STAGE_ROOT / model_tag
    for name in (WEIGHTS_FILE, 'config.json'):
        file = folder / name
        if file.is_symlink() or not file.is_file():
            return None
    return folder


def weights_source(model: str, tag: str) -> Dict[str, str]:
    """Where the weights of ``model.tag`` load from where the package runs, as timm's cfg fields: ``hf_hub_id``
    (published), ``file`` (staged, in a clone: the folder's model.safetensors), or nothing (no weights here)."""
    name = f'{model}.{tag}'
    if name in PUBLISHED:
        return {'hf_hub_id': hub_repo_id(model, tag)}
    folder = staged_folder(name)
    return {'file': str(folder / WEIGHTS_FILE)} if folder is not None else {}


def tag_state(model_tag: str) -> str:
    """'published', 'staged' (its folder is here), 'staged elsewhere' (in the repository, not in this installation)
    or 'recipe' (no weights exist)."""
    if model_tag in PUBLISHED:
        return 'published'
    if model_tag in STAGED:
        return 'staged' if staged_folder(model_tag) is not None else 'staged elsewhere'
    return 'recipe'


def pretrained_cfgs(models: Iterable[str]) -> Dict[str, Any]:
    """timm's ``default_cfgs`` (``generate_default_cfgs``) of the registered architectures ``models``: each tag's cfg
    with the weights :func:`weights_source` finds. The family's default tag stays first, with or without weights (the
    ``'*'`` of timm's convention; timm would otherwise promote the first tag with weights, changing what the bare
    name builds)."""
    from timm.models import generate_default_cfgs
    models = list(models)
    cfgs = generate_default_cfgs({
        f'{model}.{t.tag}{"*" if t.tag == _CFGS[model][0] else ""}': _CFGS[model][1](
            num_classes=t.num_classes, description=t.description, **weights_source(model, t.tag))
        for model in models for t in _TAGS[model].values()
    })
    for model in models:
        default, order = _CFGS[model][0], cfgs[model].tags
        order.remove(default)
        order.appendleft(default)
    return cfgs


def register_tags(models: Iterable[str], tags: Dict[str, PretrainedTag], default_tag: str,
                  make_cfg: Callable[..., Dict[str, Any]]) -> Dict[str, Any]:
    """Declare ``tags`` (tag -> PretrainedTag) the tags of each architecture in ``models``, ``default_tag`` the one
    the bare name builds, and ``make_cfg(num_classes=..., description=..., [hf_hub_id= | file=])`` the family's cfg.
    Returns the family's ``default_cfgs`` (:func:`pretrained_cfgs`)."""
    models = list(models)
    if default_tag not in tags:
        raise ValueError(f'default_tag {default_tag!r} is not one of the tags ({", ".join(tags)})')
    for model in models:
        _TAGS[model] = tags
        _CFGS[model] = (default_tag, make_cfg)
    return pretrained_cfgs(models)


def tagged_models() -> List[str]:
    """The architectures that have registered tags."""
    return list(_TAGS)


def tags_of(model: str) -> Dict[str, PretrainedTag]:
    """The tags of the architecture ``model`` (tag -> PretrainedTag); empty for an architecture without tags."""
    return dict(_TAGS.get(model, {}))


def find_tag(model_tag: str) -> Optional[PretrainedTag]:
    """The PretrainedTag of 'mlit_xxs.c10', or None for an untagged or unknown name."""
    model, _, tag = model_tag.partition('.')
    return _TAGS.get(model, {}).get(tag)
