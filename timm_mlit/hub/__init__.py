"""Publishing weights on the Hugging Face Hub: staging and publishing with model cards from the run's own records
(``push``, ``records``, ``card``, ``run_info``). The tags, their states and the load errors are the models'
metadata (``timm_mlit.models``); their old names are re-exported here."""
from timm_mlit.models._load_errors import CheckpointMismatchError, PretrainedWeightsError
from .variants import HUB_ORG, PUBLISHED, STAGED, VARIANTS, hub_repo_id
