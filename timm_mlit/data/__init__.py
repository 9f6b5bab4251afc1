"""What timm's data pipeline lacks for mLiT: the CIFAR-10 / SVHN AutoAugment policies and dataset preparation
(CIFAR-10 from its JPEG copy or torchvision's files, SVHN, Flowers102 as ImageFolder trees)."""
from .auto_augment import TORCHVISION_POLICIES, auto_augment_transform
from .prepare import PREPARERS, prepare_cifar10, prepare_flowers102, prepare_svhn, write_image_folder_tree
