"""Building blocks of mLiT and Mobile V-MoE, each usable on its own."""
from .attention import GroupedQueryAttention
from .block import MoEBlock
from .experts import EXPERT_DROP_MODES, SharedSwiGLUExperts
from .gate import (
    GateOutput, NoisyTopKGate, coefficient_of_variation, first_max_top_k, linear_fp32, one_hot_combine, prob_in_top_k,
    psi, softmax_k, top_k_softmax,
)
from .moe import MoEFeedForward, MoEStash, expert_load, moe_loss
from .image_experts import EXPERT_DISPATCH, PerImageExperts
from .image_router import ROUTER_POOLS, PerImageRouter, RouterStash, router_loss, router_stats
from .moe_vit_block import MoEViTBlock
