"""Synthetic data in the real on-disk formats (CIFAR python pickles, ImageFolder). Nothing is downloaded.

The images are learnable: class c is a bright 8x8 square at one of 16 fixed places (a distinct colour per class)
on a noisy background, so a model that learns anything gets the loss down within a few dozen steps.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def synthetic_images(n: int, num_classes: int, seed: int = 0, size: int = 32):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, num_classes, n)
    images = rng.randint(0, 96, (n, size, size, 3)).astype(np.uint8)
    palette = np.random.RandomState(123).randint(128, 256, (num_classes, 3))
    for i, c in enumerate(labels):
        r, q = divmod(int(c) % 16, 4)
        images[i, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] = palette[c]
    return images, labels


def write_cifar(root: Path, num_classes: int = 10, n_train: int = 256, n_test: int = 64) -> Path:
    """A CIFAR-10 (or -100) python-format tree as torchvision reads it."""
    if num_classes == 10:
        folder, train_files, test_file, meta, label_key = (
            'cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], 'test_batch', 'batches.meta', 'labels')
        meta_content = {'label_names': [f'class{i}' for i in range(10)]}
    else:
        folder, train_files, test_file, meta, label_key = ('cifar-100-python', ['train'], 'test', 'meta', 'fine_labels')
        meta_content = {'fine_label_names': [f'class{i}' for i in range(num_classes)]}
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_images(n_train + n_test, num_classes)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: R plane, G plane, B plane
    chunks = np.array_split(np.arange(n_train), len(train_files))
    for name, idx in list(zip(train_files, chunks)) + [(test_file, np.arange(n_train, n_train + n_test))]:
        with open(base / name, 'wb') as f:
            pickle.dump({'data': flat[idx], label_key: labels[idx].tolist()}, f)
    with open(base / meta, 'wb') as f:
        pickle.dump(meta_content, f)
    return Path(root)


def write_image_folder(root: Path, num_classes: int = 4, n_train: int = 64, n_val: int = 32) -> Path:
    images, labels = synthetic_images(n_train + n_val, num_classes, seed=1)
    for i, (img, c) in enumerate(zip(images, labels)):
        split = 'train' if i < n_train else 'validation'
        folder = Path(root) / split / f'class{c}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f'{i:05d}.png')
    return Path(root)


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    """Synthetic CIFAR-10 pickles. torchvision verifies the real files' MD5 sums, which synthetic files cannot
    match, so only that check is switched off."""
    import torchvision.datasets.cifar
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)
    return write_cifar(tmp_path / 'cifar10')


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / 'folder')


def smooth_images(n: int, seed: int = 0, size: int = 32):
    """Images an autoencoder can learn fast: each a blend between two random colours along a random direction, so
    every hidden patch follows from the visible ones (unlike i.i.d. noise, which nothing predicts better than the
    mean)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.zeros((n, size, size, 3))
    for i in range(n):
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.sqrt(2) + 0.5
        images[i] = a + t[..., None] * (b - a)
    return (images.clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture
def smooth_folder(tmp_path):
    """An ImageFolder of smooth images (one class folder) for MAE pre-training."""
    folder = tmp_path / 'smooth' / 'train' / 'all'
    folder.mkdir(parents=True)
    for i, img in enumerate(smooth_images(128)):
        Image.fromarray(img).save(folder / f'{i:05d}.png')
    return tmp_path / 'smooth'


@pytest.fixture
def outside(tmp_path):
    """A file outside the folder under test (a stand-in for ~/.cache/huggingface/token), for symlink escapes."""
    folder = tmp_path / 'elsewhere'
    folder.mkdir()
    secret = folder / 'token'
    secret.write_text('hf_secret')
    return secret
