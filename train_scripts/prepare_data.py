"""Write CIFAR-10 (the JPEG .npz copy or torchvision's files), SVHN or Flowers102 as the ImageFolder tree timm's
train.py reads. Same as the installed `mlit-prepare-data`; see ``--help`` and timm_mlit/data/prepare.py.

    python train_scripts/prepare_data.py cifar10 --npz-dir /data/cifar10_jpeg --out ~/data/cifar10_folder
    python train_scripts/prepare_data.py cifar10 --root ~/data/cifar10 --out ~/data/cifar10_folder
    python train_scripts/prepare_data.py svhn --root ~/data/svhn --out ~/data/svhn_folder
    python train_scripts/prepare_data.py flowers102 --root ~/data --out ~/data/flowers102_folder
"""
from timm_mlit.data.prepare import main

if __name__ == '__main__':
    main()
