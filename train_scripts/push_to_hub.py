"""Stage or publish trained weights with their timm config and a model card: the ``mlit-push`` command, for a
clone without the package installed. See ``--help``.

    python train_scripts/push_to_hub.py --model mlit_xxs.c10 --run-dir output/train/<run> --stage-dir hub_cards/
    python train_scripts/push_to_hub.py --staged hub_cards/mlit_xxs.c10
"""
from timm_mlit.hub.push import main

if __name__ == '__main__':
    main()
