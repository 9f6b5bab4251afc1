"""Small helpers shared by the test files."""
from typing import Callable, List, Optional

import pytest
import torch
import torch.nn.functional as F

# the grouped expert matmul (timm_mlit::grouped_expert_mm) needs torch.nn.functional.grouped_mm, which older torch
# releases lack; there the layers take the dense matmul (expert_matmul='auto') and refuse expert_matmul='grouped'
needs_grouped_mm = pytest.mark.skipif(
    not hasattr(F, 'grouped_mm'), reason=f'torch {torch.__version__} has no torch.nn.functional.grouped_mm')


def train_epochs(task, optimizer, loader, epochs: int, after_step: Optional[Callable[[], None]] = None) -> List[float]:
    """timm's training-task loop at its simplest: task loss, backward, step; returns every step's loss."""
    task.get_trainable_module().train()
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            result = task(x, y)
            optimizer.zero_grad()
            result['loss'].backward()
            optimizer.step()
            losses.append(result['loss'].item())
            if after_step is not None:
                after_step()
    return losses


class Exploit:
    """Unpickling this runs code: it writes 'ran' to the file named by $EXPLOIT_MARK (a test checks it never does)."""

    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EXPLOIT_MARK'], 'w').write('ran')",))
