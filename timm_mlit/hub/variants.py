"""The pretrained variants the zoo means to publish on the Hugging Face Hub, one repo per ``model.tag`` as timm does.

Each tag names what the weights are (Tables 3-8), the data, and the exact commands that produce and publish them.
``PUBLISHED`` lists the ``model.tag`` names whose weights are on the Hub; it is empty: producing them takes a GPU and
the full datasets (Table 3 alone is 8000 epochs for XXS). A tag not in it gets an error that says so and gives
these commands.
"""
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional

__all__ = ['HUB_ORG', 'MODELS', 'Variant', 'VARIANTS', 'PUBLISHED', 'DEFAULT_TAG', 'hub_repo_id', 'find_variant',
           'PAPER_TOP1', 'DATASETS']

HUB_ORG = 'timm-mlit'
MODELS = ('mlit_s', 'mlit_xs', 'mlit_xxs')
DEFAULT_TAG = 'mae_c100_ft_c100_300e'  # the paper's headline classifier (Table 7)
PUBLISHED: FrozenSet[str] = frozenset()

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

_MAE = 'python train_scripts/pretrain_mae.py --model {model} --data-dir DATA/cifar100 --output output/mae --amp'
_TRAIN = ('python timm-scripts/train.py --config train_scripts/configs/{config}.yaml --model {model} '
          '--data-dir DATA/{dataset} --output output/train')
_ENCODER = ' --pretrained-path output/mae/<run>/encoder.safetensors'


@dataclass(frozen=True)
class Variant:
    tag: str
    dataset: str  # key of DATASETS: what the head classifies, or what the encoder was pre-trained on
    num_classes: int  # 0 for a headless encoder
    description: str
    produce: str  # command template ({model}) that writes the checkpoint
    checkpoint: str  # the file of that run to push

    def commands(self, model: str) -> Dict[str, str]:
        repo = hub_repo_id(model, self.tag)
        return {
            'produce': self.produce.format(model=model),
            'publish': (f'python train_scripts/push_to_hub.py --model {model}.{self.tag} --checkpoint '
                        f'{self.checkpoint} --repo-id {repo} --card-out hub_cards/'),
        }


def _finetune(tag, dataset, config, description, pretrained=True):
    produce = _TRAIN.format(model='{model}', config=config, dataset=dataset) + (_ENCODER if pretrained else '')
    return Variant(tag, dataset, DATASETS[dataset][2], description, produce, 'output/train/<run>/model_best.pth.tar')


VARIANTS: Dict[str, Variant] = {v.tag: v for v in [
    _finetune('mae_c100_ft_c100_300e', 'cifar100', 'table4_finetune_cifar100',
              'mmLiT: MAE-pre-trained on CIFAR-100, fine-tuned on CIFAR-100 for 300 epochs (Tables 4 and 7).'),
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
