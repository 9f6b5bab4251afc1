"""Mobile V-MoE's per-image router (arXiv 2309.04354, Sec. 2.2, Fig. 2c) and its training losses.

One router per model reads each image's pooled representation after the dense layers and picks k of E experts,
which every MoE-ViT layer after it then uses for that image:

    g(x) = TOP_k(softmax(W x))                                    (Eq. 2)

W has no bias (Eq. 2), runs in float32 with autocast off (as mLiT's gate), and is initialised trunc-normal(0.02)
like timm's ViT linears. The chosen experts' outputs are weighted by their softmax probabilities as in Eq. 1
(not renormalised), which is also how an end-to-end router gets its gradient.

Router losses (:func:`router_loss`, added to the task loss by ``timm_mlit.training`` where the targets are):

* super-class guided (the paper): ``λ · CE(W x, super-class of the target)`` with λ = 0.3. Soft targets (mixup,
  cutmix) become soft super-class targets by summing the class probabilities of each super-class;
* end-to-end (no map): the router learns through the gate weights alone; an importance loss
  ``w · CV(Σ_batch softmax(W x))²`` (V-MoE / Shazeer et al.; w = 0.01, our choice) keeps it from collapsing onto
  one expert.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from ._tracing import is_graph_capture
from .gate import first_max_top_k, linear_fp32

__all__ = ['PerImageRouter', 'RouterStash', 'router_loss', 'router_stats', 'ROUTER_POOLS']

ROUTER_POOLS = ('avg', 'token')


class RouterStash:
    """The last forward's router logits (B, E), float32, kept for the loss; never copied with the weights."""

    def __init__(self):
        self.logits: Optional[torch.Tensor] = None

    def __deepcopy__(self, memo):
        return RouterStash()

    def __reduce__(self):
        return RouterStash, ()

    def clear(self) -> None:
        self.logits = None


@register_notrace_module  # an FX leaf: its float32 autocast-off region survives tracing
class PerImageRouter(nn.Module):
    """g(x) = TOP_k(softmax(W pool(x))) per image (Eq. 2); returns (weights (B, k) float32, indices (B, k))."""

    def __init__(
            self,
            dim: int,
            num_experts: int,
            top_k: int = 1,
            pool: str = 'avg',
            num_prefix_tokens: int = 1,
            superclass_of: Optional[torch.Tensor] = None,
            loss_weight: float = 0.3,
            balance_weight: float = 0.01,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width.
            num_experts: E.
            top_k: Experts per image, k.
            pool: 'avg' pools the patch tokens (the image's pooled representation), 'token' reads the prefix token.
            num_prefix_tokens: Prefix tokens to skip when pooling.
            superclass_of: (num_classes,) super-class of each class; None routes end-to-end.
            loss_weight: λ of the super-class cross-entropy (0.3 in the paper).
            balance_weight: Weight of the importance loss of end-to-end routing.
        """
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f'top_k must be between 1 and num_experts={num_experts}, got {top_k}.')
        if pool not in ROUTER_POOLS:
            raise ValueError(f'router pool must be one of {ROUTER_POOLS}, got {pool!r}.')
        self.num_experts = num_experts
        self.top_k = top_k
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.loss_weight = loss_weight
        self.balance_weight = balance_weight
        self.proj = nn.Linear(dim, num_experts, bias=False, device=device, dtype=dtype)
        if superclass_of is not None:
            if int(superclass_of.max()) >= num_experts:
                raise ValueError(
                    f'The super-class map has {int(superclass_of.max()) + 1} super-classes but the router has '
                    f'{num_experts} experts: one expert per super-class, so set num_experts to the map\'s count.')
            superclass_of = superclass_of.to(device=device, dtype=torch.long)
        # not persistent: the map is configuration, checkpoints stay loadable with or without one
        self.register_buffer('superclass_of', superclass_of, persistent=False)
        self.stash = RouterStash()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.proj.weight, std=.02)

    @property
    def guided(self) -> bool:
        return self.superclass_of is not None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == 'avg':
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
                self._record(logits)
        return weights, indices

    @torch.jit.unused
    def _record(self, logits: torch.Tensor) -> None:
        self.stash.logits = logits

    def loss(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The router's loss for the last forward's images and their class targets (hard (B,) or soft (B, C))."""
        logits = self.stash.logits
        if logits is None:
            return None
        if self.superclass_of is None:
            if self.balance_weight <= 0:
                return None
            importance = logits.softmax(dim=-1).sum(dim=0)
            cv_sq = importance.var(unbiased=False) / importance.mean().pow(2).clamp_min(1e-10)
            return self.balance_weight * cv_sq
        return self.loss_weight * F.cross_entropy(logits, self.superclass_target(target, logits.shape[-1]))

    @torch.no_grad()
    def accuracy(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """Share of the last forward's images routed to their super-class (guided router, hard targets)."""
        logits = self.stash.logits
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


def _routers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, PerImageRouter)]


def router_loss(model: nn.Module, target: torch.Tensor) -> Optional[torch.Tensor]:
    """Σ over the model's per-image routers of their loss for the last forward (None if there is none)."""
    losses = [loss for loss in (r.loss(target) for r in _routers(model)) if loss is not None]
    return torch.stack(losses).sum() if losses else None


@torch.no_grad()
def router_stats(model: nn.Module, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The last forward's share of images per expert ('expert_share', (E,)) and, for a guided router with
    hard targets, the router's super-class accuracy ('router_acc')."""
    out = {}
    for r in _routers(model):
        if r.stash.logits is None:
            continue
        choice = r.stash.logits.argmax(dim=-1)
        out['expert_share'] = torch.bincount(choice, minlength=r.num_experts).float() / choice.numel()
        acc = r.accuracy(target) if target is not None else None
        if acc is not None:
            out['router_acc'] = acc
    return out
