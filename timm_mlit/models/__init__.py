"""timm model families of the zoo. Importing a family registers its models (and its pretrained tags) with timm."""
from ._dummy_patch_vit import family_filter_fn
from ._load_errors import CheckpointMismatchError, PretrainedWeightsError
from .maevit import MaeViT
from .mlit import MLiT
from .mobile_vmoe import MobileVMoE

__all__ = ['MLiT', 'MaeViT', 'MobileVMoE', 'PretrainedWeightsError', 'CheckpointMismatchError', 'family_filter_fn']
