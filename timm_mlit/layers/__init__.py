"""Building blocks of mLiT and Mobile V-MoE, each usable on its own; files are named by paper.

mLiT ("How Lightweight Can A Vision Transformer Be", arXiv:2407.17783):
    mlit_attention.py  grouped-query attention (mLiT Sec. 2.1.1)
    mlit_gate.py       noisy top-k gate, Ψ, P and the balancing loss L (mLiT Eqs. 2-12)
    mlit_experts.py    shared-V/W2 SwiGLU experts, fused (mLiT Eq. 13)
    grouped_expert_mm.py  the chosen experts' x W_i + b_i as one grouped GEMM (mLiT Eq. 13), a custom op
    expert_drop.py     per-expert dropout masks (mLiT Sec. 2.1.2)
    mlit_moe.py        MoEFeedForward = gate + experts (mLiT Eq. 1); moe_loss, expert_load
    mlit_block.py      MoEBlock, the encoder layer (mLiT Figure 1)
Mobile V-MoE ("Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts", arXiv:2309.04354):
    vmoe_router.py     the per-image router and its loss (Mobile V-MoE Eq. 2, Sec. 2.2); router_loss, router_stats
    vmoe_experts.py    per-image MLP experts (Mobile V-MoE Eq. 1)
    vmoe_block.py      MoEViTBlock, the MoE-ViT layer (Mobile V-MoE Fig. 2d)
Shared:
    aux_loss.py        AuxRecord and aux_losses(): the one path of every auxiliary loss
    _tracing.py        whether a forward is being captured into a graph
"""
from .aux_loss import (
    AuxRecord, AuxTerm, DetachedAuxLossError, aux_loss_terms, aux_losses, aux_metrics, aux_modules, clear_aux_records,
)
from .mlit_attention import GroupedQueryAttention
from .mlit_block import MoEBlock
from .mlit_experts import EXPERT_DROP_MODES, EXPERT_MATMULS, SharedSwiGLUExperts
from .mlit_gate import (
    GateOutput, NoisyTopKGate, coefficient_of_variation, first_max_top_k, linear_fp32, one_hot_combine, prob_in_top_k,
    psi, softmax_k, top_k_softmax,
)
from .mlit_moe import MoEFeedForward, expert_load, moe_loss
from .vmoe_experts import EXPERT_DISPATCH, PerImageExperts
from .vmoe_router import ROUTER_POOLS, PerImageRouter, router_loss, router_stats
from .vmoe_block import MoEViTBlock
