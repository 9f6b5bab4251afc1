"""A built-in dataset that needs no download: ten classes of procedurally drawn 32x32 shapes and patterns, written
as the ImageFolder tree timm reads (``OUT/train/<class>/…``, ``OUT/validation/<class>/…``).

Every image has a random background colour with noise, a contrasting random foreground colour, and a random
position and size, so the class is the shape alone. It is the main job's dataset (``python -m timm_mlit``).
"""
from pathlib import Path
from typing import Callable, Dict

import numpy as np
from PIL import Image, ImageDraw

from timm_mlit._io import write_text

__all__ = ['SHAPE_CLASSES', 'draw_shape', 'write_shapes']

Draw = Callable[[ImageDraw.ImageDraw, np.random.RandomState, int, int, int, tuple], None]


def _circle(d, rng, cx, cy, r, fg):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)


def _ring(d, rng, cx, cy, r, fg):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, r // 3))


def _square(d, rng, cx, cy, r, fg):
    d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)


def _triangle(d, rng, cx, cy, r, fg):
    d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)


def _cross(d, rng, cx, cy, r, fg):
    w = max(2, r // 2)
    d.rectangle([cx - r, cy - w // 2, cx + r, cy + w // 2], fill=fg)
    d.rectangle([cx - w // 2, cy - r, cx + w // 2, cy + r], fill=fg)


def _stripes(direction):
    def draw(d, rng, cx, cy, r, fg):
        period = int(rng.randint(4, 8))
        offset = int(rng.randint(0, period))
        for k in range(-64, 64, period):
            k += offset
            if direction == 'h':
                d.rectangle([0, k, 31, k + period // 2 - 1], fill=fg)
            elif direction == 'v':
                d.rectangle([k, 0, k + period // 2 - 1, 31], fill=fg)
            else:
                d.polygon([(k, 0), (k + period // 2, 0), (k + period // 2 - 32, 32), (k - 32, 32)], fill=fg)
    return draw


def _checkerboard(d, rng, cx, cy, r, fg):
    cell = int(rng.randint(4, 8))
    for y in range(0, 32, cell):
        for x in range(0, 32, cell):
            if (x // cell + y // cell) % 2 == 0:
                d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fg)


def _dots(d, rng, cx, cy, r, fg):
    step = int(rng.randint(6, 10))
    for y in range(step // 2, 32, step):
        for x in range(step // 2, 32, step):
            d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=fg)


SHAPE_CLASSES: Dict[str, Draw] = {
    'circle': _circle, 'ring': _ring, 'square': _square, 'triangle': _triangle, 'cross': _cross,
    'stripes_horizontal': _stripes('h'), 'stripes_vertical': _stripes('v'), 'stripes_diagonal': _stripes('d'),
    'checkerboard': _checkerboard, 'dots': _dots,
}


def draw_shape(name: str, rng: np.random.RandomState, size: int = 32) -> Image.Image:
    bg = rng.randint(0, 256, 3)
    fg = (bg + rng.randint(80, 176, 3)) % 256  # far from the background in every channel
    noise = rng.randint(-20, 21, (size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    r = int(rng.randint(5, 11))
    cx, cy = (int(v) for v in rng.randint(r + 1, size - r - 1, 2))
    SHAPE_CLASSES[name](ImageDraw.Draw(img), rng, cx, cy, r, tuple(int(c) for c in fg))
    return img


def write_shapes(out, train_per_class: int = 100, val_per_class: int = 30, seed: int = 0) -> Path:
    """Write the dataset under ``out`` (if it is not there already) and return ``out``."""
    out = Path(out)
    done = out / '.complete'
    if done.is_file() and done.read_text() == f'{train_per_class} {val_per_class} {seed}':
        return out
    rng = np.random.RandomState(seed)
    for split, n in (('train', train_per_class), ('validation', val_per_class)):
        for name in SHAPE_CLASSES:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(name, rng).save(folder / f'{i:05d}.png')
    write_text(done, f'{train_per_class} {val_per_class} {seed}', overwrite=True)
    return out
