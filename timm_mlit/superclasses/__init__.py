"""Super-classes for Mobile V-MoE's router: built-in and file maps, and their derivation from a confusion graph."""
from .maps import BUILTIN_MAPS, CIFAR100_COARSE, CIFAR100_FINE, SuperclassMap, load_superclass_map
