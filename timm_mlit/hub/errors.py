"""The load errors' old home, kept so ``from timm_mlit.hub.errors import ...`` still works: they are the models'
(``timm_mlit.models._load_errors``), raised by the builder every family loads through."""
from timm_mlit.models._load_errors import (
    CheckpointMismatchError, PretrainedWeightsError, explain_load_error, unpublished_on_public_hub,
)

__all__ = ['PretrainedWeightsError', 'CheckpointMismatchError', 'explain_load_error', 'unpublished_on_public_hub']
