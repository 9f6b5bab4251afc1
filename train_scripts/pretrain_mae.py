"""mmLiT MAE pre-training, for a clone. Installed, the same command is ``mlit-pretrain`` (or
``python -m timm_mlit.mae.pretrain``). See ``--help`` and the README.

    mlit-pretrain --model mlit_xxs --data-dir ~/data/cifar100 --output output/
    python train_scripts/pretrain_mae.py --model mlit_xxs --data-dir ~/data/cifar100 --output output/
    torchrun --nproc_per_node=4 train_scripts/pretrain_mae.py --model mlit_s --data-dir ~/data/cifar100
"""
from timm_mlit.mae.pretrain import main

if __name__ == '__main__':
    main()
