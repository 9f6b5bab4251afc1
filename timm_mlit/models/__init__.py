"""timm model families of the zoo. Importing a family registers its models (and its pretrained tags) with timm;
importing this package also puts the zoo's config checks in front of timm's ``local-dir:`` / ``hf-hub:`` readers
(:func:`~timm_mlit.models._hub_folder.install_source_checks`)."""
from ._dummy_patch_vit import family_filter_fn
from ._hub_folder import check_hub_config, install_source_checks, verify_hub_folder
from ._load_errors import CheckpointMismatchError, PretrainedWeightsError, UnknownTagError
from .maevit import MaeViT
from .mlit import MLiT
from .mobile_vmoe import MobileVMoE

install_source_checks()

__all__ = ['MLiT', 'MaeViT', 'MobileVMoE', 'PretrainedWeightsError', 'CheckpointMismatchError', 'UnknownTagError',
           'family_filter_fn', 'verify_hub_folder', 'check_hub_config']
