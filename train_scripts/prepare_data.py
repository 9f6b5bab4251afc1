"""Write SVHN or Flowers102 from torchvision's local copies as the ImageFolder tree timm's train.py reads.

    python train_scripts/prepare_data.py svhn --root ~/data/svhn --out ~/data/svhn_folder
    python train_scripts/prepare_data.py flowers102 --root ~/data --out ~/data/flowers102_folder

``--root`` is torchvision's dataset root (SVHN: train_32x32.mat, test_32x32.mat; Flowers102: flowers-102/);
``--download`` lets torchvision fetch the files first. Then train with ``--data-dir OUT`` and the svhn / flowers102
configs in train_scripts/configs/. CIFAR-10/100 need no preparation (``--dataset torch/cifar100``).
"""
import argparse

from timm_mlit.data import PREPARERS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(PREPARERS))
    parser.add_argument('--root', required=True, help="torchvision's root folder for the dataset")
    parser.add_argument('--out', required=True, help='where to write the ImageFolder tree')
    parser.add_argument('--download', action='store_true', help='let torchvision download the files first')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT if it exists')
    args = parser.parse_args()
    out = PREPARERS[args.dataset](args.root, args.out, download=args.download, overwrite=args.overwrite)
    print(f'wrote {out}: use --data-dir {out}')


if __name__ == '__main__':
    main()
