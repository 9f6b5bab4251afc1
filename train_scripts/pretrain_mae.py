"""mmLiT masked-autoencoder pre-training (Table 3's recipe by default), for a clone. Installed, the same command is
``mlit-pretrain`` (or ``python -m timm_mlit.mae.pretrain``); see ``--help`` and the README.

    mlit-pretrain --model mlit_xxs --data-dir ~/data/cifar10_folder --output output/
    python train_scripts/pretrain_mae.py --model mlit_xxs --data-dir ~/data/cifar10_folder --output output/
    python train_scripts/pretrain_mae.py --resume output/<run>/last.pth
    torchrun --nproc_per_node=4 train_scripts/pretrain_mae.py --model mlit_s --data-dir ~/data/cifar100 \\
        --dataset torch/cifar100
"""
from timm_mlit.mae.pretrain import main

if __name__ == '__main__':
    main()
