"""timm-mlit: mLiT / mmLiT mixture-of-experts lightweight vision transformers for timm, with the papers' other
systems (the dense Mae-ViT-C100 baseline, Apple's Mobile V-MoE).

``import timm_mlit`` (or train.py's ``--device-modules timm_mlit``) registers the models with timm, teaches timm's
transform factory the AutoAugment policies 'cifar10' and 'svhn', and adds the MoE balancing loss and Mobile V-MoE's
router loss to the loss of timm's training tasks for models that have them (other models train exactly as before).
"""
from . import data, training
from .layers import expert_load, moe_loss
from .models import MLiT

__version__ = '0.1.0'

data.auto_augment.install()
training.install()
