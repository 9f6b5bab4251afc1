"""timm-mlit: mLiT / mmLiT mixture-of-experts lightweight vision transformers for timm.

``import timm_mlit`` registers the models, after which ``timm.create_model('mlit_xxs')`` works.
"""
from .layers import expert_load, moe_loss
from .models import MLiT

__version__ = '0.1.0'
