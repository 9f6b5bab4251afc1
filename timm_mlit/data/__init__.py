"""What timm's data pipeline lacks for mLiT: the CIFAR-10 / SVHN AutoAugment policies and dataset preparation."""
from .auto_augment import TORCHVISION_POLICIES, auto_augment_transform
from .prepare import PREPARERS, prepare_flowers102, prepare_svhn
