"""timm-mlit: mLiT / mmLiT mixture-of-experts lightweight vision transformers for timm, with the papers' other
systems (the dense Mae-ViT-C100 baseline, Apple's Mobile V-MoE).

``import timm_mlit`` (or train.py's ``--device-modules timm_mlit``) registers the models with timm, teaches timm's
transform factory the AutoAugment policies 'cifar10' and 'svhn', and adds the MoE balancing loss and Mobile V-MoE's
router loss to the loss of timm's training tasks for models that have them (other models train exactly as before).

Those two additions wrap timm internals (``timm.task.TrainingTask.__call__`` and
``timm.data.auto_augment.auto_augment_transform`` as ``timm.data.transforms_factory`` imports it), so the import
checks that the installed timm is in the range where they are known to be where we patch them (:data:`TIMM_RANGE`)
and raises ``ImportError`` naming the installed version and the fix otherwise.
"""
import re

__version__ = '0.1.0'

# timm releases whose patched internals we checked: timm.task.TrainingTask and timm.data.auto_augment /
# transforms_factory.auto_augment_transform are the same in 1.0.24 ... 1.0.31; the floor is 1.0.31 because
# timm_mlit.export passes timm.utils.onnx.onnx_export's external_data, new in 1.0.31 (.ci/run tests this floor).
# Keep in step with pyproject.toml.
TIMM_RANGE = ((1, 0, 31), (1, 1))


def _check_timm(version: str) -> None:
    """Raise ``ImportError`` unless timm ``version`` is in ``TIMM_RANGE`` (>= low, < high; dev/rc suffixes count
    as their release)."""
    low, high = TIMM_RANGE
    match = re.match(r'(\d+)\.(\d+)(?:\.(\d+))?', version)
    release = tuple(int(x or 0) for x in match.groups()) if match else None
    if release is None or not low <= release < high:
        want = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        raise ImportError(
            f'timm_mlit {__version__} needs timm{want} (it wraps timm.task.TrainingTask.__call__ and timm\'s '
            f'AutoAugment factory, internals checked for that range); timm {version} is installed. '
            f'Fix: pip install "timm{want}", or a timm_mlit release made for timm {version}.')


import timm  # noqa: E402

_check_timm(timm.__version__)

from . import data, training  # noqa: E402  (after the version check: these patch timm at import)
from .layers import aux_losses, expert_load, moe_loss  # noqa: E402
from .models import MLiT  # noqa: E402
from . import hub  # noqa: E402,F401  timm_mlit.hub is reachable after import timm_mlit

data.auto_augment.install()
training.install()
