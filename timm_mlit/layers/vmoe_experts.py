"""The experts of Mobile V-MoE's MoE-ViT layers (Mobile V-MoE Fig. 2d, Mobile V-MoE Eq. 1).

Paper: "Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts", arXiv:2309.04354. E
standard ViT MLPs (fc1 -> GELU -> fc2, 4x width), of which each image uses the k its router chose:
Mobile V-MoE Eq. 1 with the weights of Mobile V-MoE Eq. 2 (:mod:`timm_mlit.layers.vmoe_router`).

Two ways to compute, same result:

* ``grouped`` (eval): images are sorted by chosen expert and each expert runs once on its group, so only the
  chosen experts' weights are touched and the multiply-adds are those of one dense MLP per image and choice. The
  group sizes go to the host (a sync), and shapes depend on the routing.
* ``gather`` (training, and whenever a graph is captured: TorchScript, FX, torch.export, torch.compile): each
  image's k expert weights are gathered into a (B, k, ...) stack and applied with batched matmuls. Static shapes,
  no host sync, the same multiply-adds as ``grouped``; it reads B·k weight copies instead of at most E.

``expert_dispatch='auto'`` (default) picks ``grouped`` in eager eval and ``gather`` otherwise.
"""
from typing import List, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ._tracing import is_graph_capture

__all__ = ['PerImageExperts', 'EXPERT_DISPATCH']

EXPERT_DISPATCH = ('auto', 'grouped', 'gather')


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, 'is_compiling', None)
    return bool(is_compiling is not None and is_compiling())


class PerImageExperts(nn.Module):
    """E MLPs in_features -> hidden_features -> in_features stored stacked (fc1 (E, H, D), fc2 (E, D, H), like
    nn.Linear weights)."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            num_experts: int,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.,
            bias: bool = True,
            expert_dispatch: str = 'auto',
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Token width D.
            hidden_features: Each expert's MLP width H.
            num_experts: E.
            act_layer: MLP activation (timm's ``Mlp`` argument).
            drop: Dropout after the activation and after fc2 (timm's ``Mlp`` argument).
            bias: Biases in fc1 and fc2.
            expert_dispatch: 'auto', 'grouped' or 'gather' (module docstring); the model's ``create_model``
                argument (:class:`~timm_mlit.models.MobileVMoE`), checked here only.
        """
        super().__init__()
        if expert_dispatch not in EXPERT_DISPATCH:
            raise ValueError(
                f"expert_dispatch must be one of {EXPERT_DISPATCH} ('auto': grouped by expert in eager eval, "
                f"gathered otherwise), got {expert_dispatch!r}.")
        dd = {'device': device, 'dtype': dtype}
        self.num_experts = num_experts
        self.expert_dispatch = expert_dispatch
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_features, in_features, **dd))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_features, **dd)) if bias else None
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, in_features, hidden_features, **dd))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, in_features, **dd)) if bias else None
        self.drop2 = nn.Dropout(drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert as timm's ViT initialises a linear layer: trunc-normal(0.02) weights, zero biases."""
        for w in (self.fc1_weight, self.fc2_weight):
            trunc_normal_(w, std=.02)
        for b in (self.fc1_bias, self.fc2_bias):
            if b is not None:
                nn.init.zeros_(b)

    def _use_grouped(self, x: torch.Tensor) -> bool:
        if self.expert_dispatch == 'gather' or is_graph_capture() or _compiling() or x.device.type == 'meta':
            return False  # static shapes: the grouped path reads group sizes on the host, meta has none
        return self.expert_dispatch == 'grouped' or not self.training

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (B, N, D); weights, indices (B, k) from the router -> Σ_j weights[:, j] · expert_{indices[:, j]}(x)."""
        if not torch.jit.is_scripting():
            if self._use_grouped(x):
                return self._grouped(x, weights, indices)
        return self._gather(x, weights, indices)

    def _gather(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        k = indices.shape[1]
        flat = indices.reshape(-1)  # (B·k)
        xk = x.unsqueeze(1).expand(B, k, N, D).reshape(B * k, N, D)
        h = torch.bmm(xk, self.fc1_weight[flat].transpose(1, 2))  # (B·k, N, H)
        if self.fc1_bias is not None:
            h = h + self.fc1_bias[flat].unsqueeze(1)
        h = self.drop1(self.act(h))
        y = torch.bmm(h, self.fc2_weight[flat].transpose(1, 2))  # (B·k, N, D)
        if self.fc2_bias is not None:
            y = y + self.fc2_bias[flat].unsqueeze(1)
        y = self.drop2(y) * weights.reshape(-1, 1, 1).to(y.dtype)
        return y.reshape(B, k, N, D).sum(dim=1)

    @torch.jit.unused
    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        k = indices.shape[1]
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)  # (image, choice) slots sorted by expert
        counts: List[int] = torch.bincount(flat, minlength=self.num_experts).tolist()  # host sync: group sizes
        image_of_slot = order.div(k, rounding_mode='floor')
        slot_weights = weights.reshape(-1)[order]
        out = torch.zeros_like(x)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            images = image_of_slot[start:start + count]
            h = F.linear(x[images], self.fc1_weight[e], None if self.fc1_bias is None else self.fc1_bias[e])
            h = self.drop1(self.act(h))
            y = F.linear(h, self.fc2_weight[e], None if self.fc2_bias is None else self.fc2_bias[e])
            y = self.drop2(y) * slot_weights[start:start + count].reshape(-1, 1, 1).to(y.dtype)
            out.index_add_(0, images, y.to(out.dtype))
            start += count
        return out

    def extra_repr(self) -> str:
        E, H, D = self.fc1_weight.shape
        return f'num_experts={E}, in_features={D}, hidden_features={H}, expert_dispatch={self.expert_dispatch!r}'
