"""timm model families of the zoo. Importing a family registers its models with timm."""
from .maevit import MaeViT
from .mlit import MLiT
from .mobile_vmoe import MobileVMoE

__all__ = ['MLiT', 'MaeViT', 'MobileVMoE']
