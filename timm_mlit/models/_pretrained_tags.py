"""The pretrained tags of the zoo's families, one Hugging Face Hub repo per ``model.tag`` as timm does, and the
state of each: what the models need to build their pretrained cfgs and to explain a failed ``pretrained=True``.

Each family writes its own tags in its file (``mlit.py``: :data:`~timm_mlit.models.mlit.VARIANTS`) and registers
them here with :func:`register_tags`; a :class:`Variant` says what the weights are and the exact commands that
produce, stage and publish them. A tag is in one of three states:

  * ``PUBLISHED``: the weights are on the Hub (``pretrained=True`` and ``hf-hub:`` load them). Empty today.
  * ``STAGED``: a trained run has been staged in the repository as a Hub repo folder, ``hub_cards/<model>.<tag>/``
    (model.safetensors, config.json, README.md card), loadable from a clone with
    ``timm.create_model('local-dir:hub_cards/<model>.<tag>', pretrained=True)`` and published with one command
    (``mlit-push --staged hub_cards/<model>.<tag>``, which also writes the card to ``hub_cards/<model>.<tag>.md``).
    A published tag stays in STAGED (its folder stays as the record). Empty today: the runs need a GPU.
  * every other tag exists as a recipe only: ``pretrained=True`` raises PretrainedWeightsError with the commands.

Publishing (model cards, the paper's figures, the Hub datasets, the recipe files) is ``timm_mlit.hub``'s job.
"""
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Optional

__all__ = ['HUB_ORG', 'Variant', 'PUBLISHED', 'STAGED', 'STAGE_DIR', 'PUSH_CMD', 'PUSH_SCRIPT', 'hub_repo_id',
           'register_tags', 'find_variant']

HUB_ORG = 'timm-mlit'
PUBLISHED: FrozenSet[str] = frozenset()
STAGED: FrozenSet[str] = frozenset()  # the model.tag folders under hub_cards/ (a test checks they agree)
STAGE_DIR = 'hub_cards'  # where staged repo folders live, relative to a clone's root
PUSH_CMD = 'mlit-push'  # the installed command ...
PUSH_SCRIPT = 'python train_scripts/push_to_hub.py'  # ... and the same from a clone

_TAGS: Dict[str, Dict[str, 'Variant']] = {}  # architecture -> tag -> Variant, filled by register_tags


def hub_repo_id(model: str, tag: str) -> str:
    return f'{HUB_ORG}/{model}.{tag}'


@dataclass(frozen=True)
class Variant:
    tag: str
    dataset: str  # what the head classifies, or what the encoder was pre-trained on (timm_mlit.hub.DATASETS key)
    num_classes: int  # 0 for a headless encoder
    description: str
    produce: str  # command template ({model}) that writes the checkpoint
    checkpoint: str  # the file of that run to push: the final epoch's weights, never the best-on-test
    config: str = ''  # the recipe a run must follow (timm_mlit/configs/<config>.yaml, mlit-config <config>)
    epochs: Optional[int] = None  # epochs the recipe trains (None: depends on the model, not checked)
    pretrained: bool = False  # fine-tuned from an MAE encoder (--pretrained-path)

    def commands(self, model: str) -> Dict[str, str]:
        name, run = f'{model}.{self.tag}', self.checkpoint.rsplit('/', 1)[0]
        stage = f'--model {name} --run-dir {run} --stage-dir {STAGE_DIR}/'
        return {
            'produce': self.produce.format(model=model),
            'stage': f'{PUSH_CMD} {stage} (from a clone: {PUSH_SCRIPT} {stage})',
            'publish': (f'{PUSH_CMD} --staged {STAGE_DIR}/{name} (from a clone: {PUSH_SCRIPT} --staged '
                        f'{STAGE_DIR}/{name}), which uploads to {hub_repo_id(model, self.tag)}'),
        }


def register_tags(models: Iterable[str], variants: Dict[str, Variant]) -> None:
    """Declare ``variants`` (tag -> Variant) the tags of each architecture in ``models``."""
    for model in models:
        _TAGS[model] = variants


def find_variant(model_tag: str) -> Optional[Variant]:
    """The Variant of 'mlit_xxs.c10', or None for an untagged or unknown name."""
    model, _, tag = model_tag.partition('.')
    return _TAGS.get(model, {}).get(tag)
