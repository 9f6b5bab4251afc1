"""Fixtures for tests, benchmarks and the demo, not for models: a loopback Hugging Face Hub server
(``timm_mlit.testing.local_hub``), the per-expert dispatch reference of the MoE layer
(``timm_mlit.testing.dispatch_reference``), and the pretrained tags registered with other states
(``timm_mlit.testing.tag_states``: a tag published, or staged in a temporary folder). Nothing under
``timm_mlit.layers`` / ``timm_mlit.models`` imports them."""
