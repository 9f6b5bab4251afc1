"""Publishing weights on the Hugging Face Hub: staging and publishing with model cards from the run's own records
(``push``, ``records``, ``card``, ``run_info``; ``tag_info``: the datasets, the paper's figures and the recipe files).
The tags, their states and the load errors are the models' metadata: ``timm_mlit.models`` (``PretrainedWeightsError``,
``CheckpointMismatchError``), ``timm_mlit.models._pretrained_tags`` and each family's file."""
