"""The pretrained variants the zoo means to publish on the Hugging Face Hub, one repo per ``model.tag`` as timm does.

Each tag names what the weights are (Tables 3-8), the data, its recipe (config file and epochs), and the exact
commands that produce, stage and publish them. A tag is in one of three states:

  * ``PUBLISHED``: the weights are on the Hub (``pretrained=True`` and ``hf-hub:`` load them). Empty today.
  * ``STAGED``: a trained run has been staged in this repository as a Hub repo folder, ``hub_cards/<model>.<tag>/``
    (model.safetensors, config.json, README.md card), loadable from a clone with
    ``timm.create_model('local-dir:hub_cards/<model>.<tag>', pretrained=True)`` and published with one command
    (``mlit-push --staged hub_cards/<model>.<tag>``, which also writes the card to ``hub_cards/<model>.<tag>.md``).
    A published tag stays in STAGED (its folder stays as the record). Empty today: the runs need a GPU.
  * every other tag exists as a recipe only: ``pretrained=True`` raises PretrainedWeightsError with the commands.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Optional

from timm_mlit.configs import RECIPE_DIR

__all__ = ['HUB_ORG', 'MODELS', 'Variant', 'VARIANTS', 'PUBLISHED', 'STAGED', 'DEFAULT_TAG', 'hub_repo_id',
           'find_variant', 'PAPER_TOP1', 'PAPER_SOURCE', 'DATASETS', 'STAGE_DIR', 'config_path', 'PUSH_CMD',
           'PUSH_SCRIPT']

HUB_ORG = 'timm-mlit'
MODELS = ('mlit_s', 'mlit_xs', 'mlit_xxs')
DEFAULT_TAG = 'mae_c100_ft_c100_300e'  # the paper's headline classifier (Table 7)
PUBLISHED: FrozenSet[str] = frozenset()
STAGED: FrozenSet[str] = frozenset()  # the model.tag folders under hub_cards/ (a test checks they agree)
STAGE_DIR = 'hub_cards'  # where staged repo folders live, relative to a clone's root
PUSH_CMD = 'mlit-push'  # the installed command ...
PUSH_SCRIPT = 'python train_scripts/push_to_hub.py'  # ... and the same from a clone
_CONFIG_DIR = RECIPE_DIR  # timm_mlit/configs: in a clone and in the installed package

# name -> (display name, Hub dataset id, number of classes)
DATASETS = {
    'cifar100': ('CIFAR-100', 'uoft-cs/cifar100', 100),
    'cifar10': ('CIFAR-10', 'uoft-cs/cifar10', 10),
    'svhn': ('SVHN', 'ufldl-stanford/svhn', 10),
    'flowers102': ('Flowers102', 'nelorth/oxford-flowers', 102),
}

# Top-1 % the paper reports for each (model, tag): Table 7 (300 epochs) and Table 8 (100 epochs)
PAPER_TOP1 = {
    'mae_c100_ft_c100_300e': {'mlit_s': 79.15, 'mlit_xs': 76.70, 'mlit_xxs': 74.95},
    'mae_c100_ft_c100': {'mlit_s': 78.18, 'mlit_xs': 75.91, 'mlit_xxs': 73.42},
    'mae_c100_ft_c10': {'mlit_s': 94.62, 'mlit_xs': 94.01, 'mlit_xxs': 92.21},
    'mae_c100_ft_svhn': {'mlit_s': 97.39, 'mlit_xs': 97.26, 'mlit_xxs': 97.32},
    'mae_c100_ft_flowers102': {'mlit_s': 59.59, 'mlit_xs': 57.46, 'mlit_xxs': 48.59},
    'c100': {'mlit_s': 60.58, 'mlit_xs': 57.93, 'mlit_xxs': 56.98},
    'c10': {'mlit_s': 84.03, 'mlit_xs': 82.74, 'mlit_xxs': 80.78},
    'svhn': {'mlit_s': 96.01, 'mlit_xs': 95.43, 'mlit_xxs': 94.97},
    'flowers102': {'mlit_s': 34.41, 'mlit_xs': 35.41, 'mlit_xxs': 35.34},
}
# where each PAPER_TOP1 figure is printed, and the epochs it was trained for
PAPER_SOURCE = {tag: 'Table 7, 300 epochs' if tag.endswith('_300e') else 'Table 8, 100 epochs'
                for tag in PAPER_TOP1}

_MAE = 'mlit-pretrain --model {model} --dataset torch/cifar100 --data-dir DATA/cifar100 --output output/mae --amp'
_TRAIN = ('python timm-scripts/train.py --config "$(mlit-config {config})" --model {model} '
          '--data-dir DATA/{dataset} --output output/train')
_ENCODER = ' --pretrained-path output/mae/<run>/encoder.safetensors'


@dataclass(frozen=True)
class Variant:
    tag: str
    dataset: str  # key of DATASETS: what the head classifies, or what the encoder was pre-trained on
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


def config_path(variant: Variant) -> Optional[Path]:
    """The tag's train.py recipe file (shipped in the package), or None where the tag has none."""
    path = _CONFIG_DIR / f'{variant.config}.yaml'
    return path if variant.config and path.is_file() else None


def _finetune(tag, dataset, config, description, pretrained=True, epochs=100):
    produce = _TRAIN.format(model='{model}', config=config, dataset=dataset) + (_ENCODER if pretrained else '')
    return Variant(tag, dataset, DATASETS[dataset][2], description, produce, 'output/train/<run>/last.pth.tar',
                   config=config, epochs=epochs, pretrained=pretrained)


VARIANTS: Dict[str, Variant] = {v.tag: v for v in [
    _finetune('mae_c100_ft_c100_300e', 'cifar100', 'table4_finetune_cifar100',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-100 for 300 epochs (Tables 4 and 7).',
              epochs=300),
    Variant('mae_c100', 'cifar100', 0,
            'mmLiT encoder: masked-autoencoder pre-training on CIFAR-100 (Table 3), no classifier head.',
            _MAE, 'output/mae/<run>/encoder.safetensors'),
    _finetune('mae_c100_ft_c100', 'cifar100', 'table5_transfer_cifar100',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-100 for 100 epochs (Tables 5 and 8).'),
    _finetune('mae_c100_ft_c10', 'cifar10', 'table5_transfer_cifar10',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-10 for 100 epochs (Tables 5 and 8).'),
    _finetune('mae_c100_ft_svhn', 'svhn', 'table5_transfer_svhn',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on SVHN for 100 epochs (Tables 5 and 8).'),
    _finetune('mae_c100_ft_flowers102', 'flowers102', 'table5_transfer_flowers102',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on Flowers102 for 100 epochs (Tables 5 and 8).'),
    _finetune('c100', 'cifar100', 'table6_scratch_cifar100',
              'mLiT trained from scratch on CIFAR-100 for 100 epochs (Tables 6 and 8).', pretrained=False),
    _finetune('c10', 'cifar10', 'table6_scratch_cifar10',
              'mLiT trained from scratch on CIFAR-10 for 100 epochs (Tables 6 and 8).', pretrained=False),
    _finetune('svhn', 'svhn', 'table6_scratch_svhn',
              'mLiT trained from scratch on SVHN for 100 epochs (Tables 6 and 8).', pretrained=False),
    _finetune('flowers102', 'flowers102', 'table6_scratch_flowers102',
              'mLiT trained from scratch on Flowers102 for 100 epochs (Tables 6 and 8).', pretrained=False),
]}


def hub_repo_id(model: str, tag: str) -> str:
    return f'{HUB_ORG}/{model}.{tag}'


def find_variant(model_tag: str) -> Optional[Variant]:
    """The Variant of 'mlit_xxs.c10', or None for an untagged or unknown name."""
    model, _, tag = model_tag.partition('.')
    return VARIANTS.get(tag) if model in MODELS else None
