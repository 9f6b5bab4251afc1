"""--aa cifar10 / --aa svhn: the AutoAugment paper's learned policies, as torchvision implements them, in timm."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.auto_augment import AutoAugment as TimmAutoAugment, RandAugment
from torchvision import transforms as T

import timm_mlit  # noqa: F401  installs the policies
from timm_mlit.data import auto_augment_transform


def _find(transform, kind):
    return [t for t in transform.transforms if isinstance(t, kind)]


@pytest.mark.parametrize('name,policy', [('cifar10', T.AutoAugmentPolicy.CIFAR10), ('svhn', T.AutoAugmentPolicy.SVHN)])
def test_create_transform_builds_torchvisions_policy(name, policy):
    tf = create_transform(36, is_training=True, auto_augment=name, scale=(0.8, 1.0), mean=(0.5,) * 3, std=(0.5,) * 3)
    found = _find(tf, T.AutoAugment)
    assert len(found) == 1 and found[0].policy == policy
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    assert tf(img).shape == (3, 36, 36)


def test_policy_output_is_torchvisions():
    img = Image.fromarray(np.random.RandomState(1).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    ours = auto_augment_transform('cifar10')
    reference = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)
    for seed in range(5):
        torch.manual_seed(seed)
        a = np.asarray(ours(img))
        torch.manual_seed(seed)
        b = np.asarray(reference(img))
        assert np.array_equal(a, b)


def test_timms_own_policies_keep_working():
    assert _find(create_transform(36, is_training=True, auto_augment='rand-m9-mstd0.5'), RandAugment)
    assert _find(create_transform(36, is_training=True, auto_augment='v0'), TimmAutoAugment)
    assert _find(create_transform(36, is_training=True, auto_augment='original-mstd0.5'), TimmAutoAugment)


def test_options_on_a_fixed_policy_are_refused():
    with pytest.raises(ValueError, match="takes no options"):
        create_transform(36, is_training=True, auto_augment='cifar10-mstd0.5')


def test_model_data_config_is_the_papers():
    import timm
    cfg = resolve_data_config({}, model=timm.create_model('mlit_xxs'))
    assert cfg['input_size'] == (3, 36, 36) and cfg['crop_pct'] == 1.0
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    eval_tf = create_transform(**cfg)
    img = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    out = eval_tf(img)
    assert out.shape == (3, 36, 36) and torch.allclose(out, torch.full_like(out, -1.0))  # 0 -> (0 - .5) / .5
