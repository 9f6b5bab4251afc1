"""What publishing a tag needs beyond the model's own metadata: the datasets' display names and Hub ids, the
paper's figures for the card, and each tag's recipe file.

The tags themselves (which exist, what each is, its recipe, its Hub repo, PUBLISHED / STAGED) are the models'
metadata: each family writes its tags in its file as :class:`~timm_mlit.models._pretrained_tags.PretrainedTag`
records (mLiT's in ``timm_mlit/models/mlit.py``) and ``timm_mlit.models._pretrained_tags`` holds their states. The
commands that follow a recipe are built where they are printed
(:func:`~timm_mlit.models._load_errors.recipe_commands`).
"""
from pathlib import Path
from typing import Optional

from timm_mlit.configs import RECIPE_DIR
from timm_mlit.models._pretrained_tags import PretrainedTag

__all__ = ['PAPER_TOP1', 'PAPER_SOURCE', 'DATASETS', 'VALIDATION_IS', 'config_path']

_CONFIG_DIR = RECIPE_DIR  # timm_mlit/configs: in a clone and in the installed package

# name (a PretrainedTag's dataset) -> (display name, Hub dataset id); the number of classes is each tag's num_classes
DATASETS = {
    'cifar100': ('CIFAR-100', 'uoft-cs/cifar100'),
    'cifar10': ('CIFAR-10', 'uoft-cs/cifar10'),
    'svhn': ('SVHN', 'ufldl-stanford/svhn'),
    'flowers102': ('Flowers102', 'nelorth/oxford-flowers'),
}
# name -> the dataset's own split that train.py's default ``validation`` split reads: the ``validation/`` folder
# mlit-prepare-data writes from it (its docstring) and what timm's ``torch/<name>`` reader takes for 'validation'.
# None of the four has a validation split of its own, so every recipe is scored on the test split.
VALIDATION_IS = {'cifar100': 'test', 'cifar10': 'test', 'svhn': 'test', 'flowers102': 'test'}

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


def config_path(tag: PretrainedTag) -> Optional[Path]:
    """The tag's train.py recipe file (shipped in the package), or None where the tag has none."""
    path = _CONFIG_DIR / f'{tag.config}.yaml'
    return path if tag.config and path.is_file() else None
