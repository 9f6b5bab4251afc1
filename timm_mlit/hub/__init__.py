"""Weights on the Hugging Face Hub: the variants (recipe only, staged, published), staging and publishing with
model cards from the run's records, clear loading errors, a local Hub server."""
from .errors import CheckpointMismatchError, PretrainedWeightsError
from .variants import HUB_ORG, PUBLISHED, STAGED, VARIANTS, hub_repo_id
