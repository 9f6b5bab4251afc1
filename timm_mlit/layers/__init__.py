"""Building blocks of mLiT, each usable on its own."""
from .attention import GroupedQueryAttention
from .block import MoEBlock
from .experts import EXPERT_DROP_MODES, SharedSwiGLUExperts
from .gate import (
    GateOutput, NoisyTopKGate, coefficient_of_variation, prob_in_top_k, psi, softmax_k, top_k_softmax,
)
from .moe import MoEFeedForward, MoEStash, expert_load, moe_loss
