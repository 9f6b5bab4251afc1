"""What timm's data pipeline lacks for mLiT: the CIFAR-10 / SVHN AutoAugment policies and dataset preparation
(CIFAR-10 from its JPEG copy or torchvision's files, SVHN, Flowers102 as ImageFolder trees:
:mod:`timm_mlit.data.prepare`, not imported with the package so that ``python -m timm_mlit.data.prepare`` runs clean)."""
from .auto_augment import TORCHVISION_POLICIES, auto_augment_transform
