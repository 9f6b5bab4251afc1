"""The AutoAugment paper's learned CIFAR-10 and SVHN policies (Cubuk et al. 2019) under timm's ``--aa`` names.

timm's AutoAugment knows only ImageNet policies. mLiT's recipes (Tables 4-6) use the CIFAR-10 and SVHN ones, so
after ``import timm_mlit``, ``--aa cifar10`` / ``--aa svhn`` in train.py and
``timm.data.create_transform(..., auto_augment='cifar10')`` build torchvision's ``AutoAugment`` with that policy,
as torchvision implements it, with torchvision's defaults (nearest interpolation, black fill), which is what a
paper written against torchvision would have run. Every other policy string goes to timm unchanged.
"""
from typing import Any, Dict, Optional

import timm.data
import timm.data.auto_augment
import timm.data.transforms_factory
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

__all__ = ['TORCHVISION_POLICIES', 'auto_augment_transform', 'install']

TORCHVISION_POLICIES = {'cifar10': AutoAugmentPolicy.CIFAR10, 'svhn': AutoAugmentPolicy.SVHN}

_timm_auto_augment_transform = timm.data.auto_augment.auto_augment_transform


def auto_augment_transform(config_str: str, hparams: Optional[Dict[str, Any]] = None):
    """timm's ``auto_augment_transform`` plus the 'cifar10' and 'svhn' policies."""
    name = config_str.split('-')[0]
    if name not in TORCHVISION_POLICIES:
        return _timm_auto_augment_transform(config_str, hparams)
    if config_str != name:
        raise ValueError(
            f"AutoAugment policy '{name}' takes no options (got '{config_str}'): it is torchvision's fixed learned "
            f"policy. Use --aa {name}.")
    return AutoAugment(TORCHVISION_POLICIES[name])


def install() -> None:
    """Make timm's transform factory (and anyone calling timm.data.auto_augment_transform) know the policies."""
    for module in (timm.data.auto_augment, timm.data.transforms_factory, timm.data):
        module.auto_augment_transform = auto_augment_transform
