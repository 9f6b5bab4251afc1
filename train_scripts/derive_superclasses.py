"""Derive Mobile V-MoE super-classes from a trained dense model's confusion graph (arXiv 2309.04354, Sec. 2.2), for a
clone. Installed, the same command is ``mlit-derive-superclasses`` (or
``python -m timm_mlit.scripts.derive_superclasses``); see ``--help`` and timm_mlit/scripts/derive_superclasses.py.

    mlit-derive-superclasses --model maevit_c100 --checkpoint output/train/<run>/model_best.pth.tar \\
        --dataset torch/cifar100 --data-dir ~/data/cifar100 --num-superclasses 10 --output superclasses/c100_e10.json
    python train_scripts/derive_superclasses.py ...   (the same arguments)

Writes the map (JSON) and PATH.confusion.csv beside it.
"""
from timm_mlit.scripts.derive_superclasses import main

if __name__ == '__main__':
    main()
