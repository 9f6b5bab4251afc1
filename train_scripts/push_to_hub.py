"""Publish a checkpoint with its timm config and a model card to the Hugging Face Hub. See ``--help``.

    python train_scripts/push_to_hub.py --model mlit_xxs.c10 --checkpoint output/train/<run>/model_best.pth.tar \
        --repo-id ORG/mlit_xxs.c10 --card-out hub_cards/
"""
from timm_mlit.hub.push import main

if __name__ == '__main__':
    main()
