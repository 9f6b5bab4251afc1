"""timm model families of the zoo. Importing a family registers its models with timm."""
from .mlit import MLiT
