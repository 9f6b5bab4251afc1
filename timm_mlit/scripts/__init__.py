"""Command-line tools built on the zoo that no model imports: ``derive_superclasses`` (Mobile V-MoE's super-classes
from a dense model's confusion graph; ``mlit-derive-superclasses`` or ``python -m
timm_mlit.scripts.derive_superclasses``)."""
