"""Mobile V-MoE's per-image router (Mobile V-MoE Eq. 2) and its training loss.

Paper: "Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts" (Daxberger et al. 2023),
arXiv:2309.04354: the router of Mobile V-MoE Sec. 2.2 and Mobile V-MoE Fig. 2c, its gate of Mobile V-MoE Eq. 2
(the weights that Mobile V-MoE Eq. 1 sums with) and its super-class loss (Mobile V-MoE Sec. 2.2).

One router per model reads each image's pooled representation after the dense layers and picks k of E experts,
which every MoE-ViT layer after it then uses for that image:

    g(x) = TOP_k(softmax(W x))                                    (Mobile V-MoE Eq. 2)

W has no bias (Mobile V-MoE Eq. 2), runs in float32 with autocast off (as mLiT's gate), and is initialised
trunc-normal(0.02) like timm's ViT linears. The chosen experts' outputs are weighted by their softmax probabilities
as in Mobile V-MoE Eq. 1 (not renormalised), which is also how an end-to-end router gets its gradient.

The router's loss (its ``'router_loss'``, computed here by :meth:`PerImageRouter.aux_loss` from the logits the
forward recorded in its :class:`~timm_mlit.layers.aux_loss.AuxRecord` and the targets; read through
:func:`~timm_mlit.layers.aux_loss.aux_losses`, which ``timm_mlit.training`` adds to the task loss):

* super-class guided (the paper): ``λ · CE(W x, super-class of the target)`` with λ = 0.3. Soft targets (mixup,
  cutmix) become soft super-class targets by summing the class probabilities of each super-class;
* end-to-end (no map): the router learns through the gate weights alone; an importance loss
  ``w · CV(Σ_batch softmax(W x))²`` ("Scaling Vision with Sparse Mixture of Experts", Riquelme et al. 2021,
  arXiv:2106.05974, after Shazeer et al.; w = 0.01, our choice) keeps it from collapsing onto one expert.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from ._tracing import is_graph_capture
from .aux_loss import AuxRecord, aux_losses, aux_modules
from .mlit_gate import first_max_top_k, linear_fp32

__all__ = ['PerImageRouter', 'router_loss', 'router_stats', 'ROUTER_POOLS']

ROUTER_POOLS = ('avg', 'token')


@register_notrace_module  # an FX leaf: its float32 autocast-off region survives tracing
class PerImageRouter(nn.Module):
    """g(x) = TOP_k(softmax(W pool(x))) per image (Mobile V-MoE Eq. 2); returns (weights (B, k) float32,
    indices (B, k))."""
    aux_loss_name = 'router_loss'

    def __init__(
            self,
            dim: int,
            num_experts: int,
            top_k: int = 1,
            router_pool: str = 'avg',
            num_prefix_tokens: int = 1,
            superclass_of: Optional[torch.Tensor] = None,
            router_loss_weight: float = 0.3,
            router_balance_weight: float = 0.01,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width.
            num_experts: E.
            top_k: Experts per image, k.
            router_pool: 'avg' pools the patch tokens (the image's pooled representation), 'token' reads the
                prefix token.
            num_prefix_tokens: Prefix tokens to skip when pooling.
            superclass_of: (num_classes,) super-class of each class; None routes end-to-end.
            router_loss_weight: λ of the super-class cross-entropy (0.3 in the paper).
            router_balance_weight: Weight of the importance loss of end-to-end routing.

        ``top_k`` and the ``router_*`` names are the model's ``create_model`` arguments
        (:class:`~timm_mlit.models.MobileVMoE`), checked here only.
        """
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f'top_k must be between 1 and num_experts={num_experts} (experts per image), got {top_k}.')
        if router_pool not in ROUTER_POOLS:
            raise ValueError(
                f"router_pool must be one of {ROUTER_POOLS} ('avg': the patch tokens' mean; 'token': the prefix "
                f"token), got {router_pool!r}.")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router_pool = router_pool
        self.num_prefix_tokens = num_prefix_tokens
        self.router_loss_weight = router_loss_weight
        self.router_balance_weight = router_balance_weight
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)
        if superclass_of is not None:
            if int(superclass_of.max()) >= num_experts:
                raise ValueError(
                    f'The super-class map has {int(superclass_of.max()) + 1} super-classes but the router has '
                    f'{num_experts} experts: one expert per super-class, so set num_experts to the map\'s count.')
            superclass_of = superclass_of.to(device=device, dtype=torch.long)
        # not persistent: the map is configuration, checkpoints stay loadable with or without one
        self.register_buffer('superclass_of', superclass_of, persistent=False)
        self.aux_record = AuxRecord()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.proj.weight, std=.02)

    @property
    def guided(self) -> bool:
        return self.superclass_of is not None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.router_pool == 'avg':
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x[:, 0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """W · pool(x) in float32 (autocast off): (B, E). ``proj`` may be a quantised Linear."""
        x = self.pooled(x)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if torch.jit.is_scripting():
            return F.linear(x, self.proj.weight.to(x.dtype))
        if x.device.type == 'meta':  # no autocast on meta (shape-only runs)
            return linear_fp32(self.proj, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return linear_fp32(self.proj, x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        # eval/export: k rounds of argmax (no TopK op; ties to the lowest expert index in every runtime)
        weights, indices = probs.topk(self.top_k, dim=-1) if self.training else first_max_top_k(probs, self.top_k)
        if not torch.jit.is_scripting():
            if not is_graph_capture():
                self._record(logits, x)
        return weights, indices

    @torch.jit.unused
    def _record(self, logits: torch.Tensor, x: torch.Tensor) -> None:
        self.aux_record.note_grad_mode(x, self.training)
        self.aux_record.logits = logits

    @torch.jit.unused
    def aux_loss(self, target: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The router's loss for the last forward's images and their class targets (hard (B,) or soft (B, C)):
        λ · CE toward the super-classes (Mobile V-MoE Sec. 2.2; None without targets), or the end-to-end
        importance loss."""
        logits = self.aux_record.logits
        if logits is None:
            return None
        if self.superclass_of is None:
            if self.router_balance_weight <= 0:
                return None
            importance = logits.softmax(dim=-1).sum(dim=0)
            cv_sq = importance.var(unbiased=False) / importance.mean().pow(2).clamp_min(1e-10)
            return self.router_balance_weight * cv_sq
        if target is None:
            return None
        return self.router_loss_weight * F.cross_entropy(logits, self.superclass_target(target, logits.shape[-1]))

    @torch.jit.unused
    def aux_metrics(self, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The guided router's super-class accuracy ('router_acc') with hard targets; no per-step histogram."""
        acc = self.accuracy(target) if target is not None else None
        return {'router_acc': acc} if acc is not None else {}

    @torch.no_grad()
    def accuracy(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """Share of the last forward's images routed to their super-class (guided router, hard targets)."""
        logits = self.aux_record.logits
        if logits is None or self.superclass_of is None or target.dtype.is_floating_point:
            return None
        return (logits.argmax(dim=-1) == self.superclass_of[target]).float().mean()

    def superclass_target(self, target: torch.Tensor, num_experts: int) -> torch.Tensor:
        """Class targets -> super-class targets: indices for hard targets, summed probabilities for soft ones."""
        assert self.superclass_of is not None
        if target.dtype.is_floating_point and target.ndim == 2:
            to_super = F.one_hot(self.superclass_of, num_experts).to(target.dtype)  # (C, E)
            return target @ to_super
        return self.superclass_of[target]


def router_loss(model: nn.Module, target: torch.Tensor) -> Optional[torch.Tensor]:
    """``aux_losses(model, target)['router_loss']``: Σ over the model's per-image routers of their loss for the last
    forward (None if there is none)."""
    return aux_losses(model, target).get('router_loss')


@torch.no_grad()
def router_stats(model: nn.Module, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The last forward's share of images per expert ('expert_share', (E,)) and, for a guided router with
    hard targets, the router's super-class accuracy ('router_acc')."""
    out = {}
    for r in aux_modules(model):
        if not isinstance(r, PerImageRouter) or r.aux_record.logits is None:
            continue
        choice = r.aux_record.logits.argmax(dim=-1)
        out['expert_share'] = torch.bincount(choice, minlength=r.num_experts).float() / choice.numel()
        out.update(r.aux_metrics(target))
    return out
