"""Weights on the Hugging Face Hub: the variants, push with model cards, clear loading errors, a local Hub server."""
from .errors import CheckpointMismatchError, PretrainedWeightsError
from .variants import HUB_ORG, PUBLISHED, VARIANTS, hub_repo_id
