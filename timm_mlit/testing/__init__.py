"""Fixtures for tests, benchmarks and the demo, not for models: a loopback Hugging Face Hub server
(``timm_mlit.testing.local_hub``) and the per-expert dispatch reference of the MoE layer
(``timm_mlit.testing.dispatch_reference``). Nothing under ``timm_mlit.layers`` / ``timm_mlit.models`` imports them."""
