"""Super-classes from a dense model's confusion graph (Mobile V-MoE, arXiv 2309.04354, Sec. 2.2): 1) train a dense
baseline, 2) compute its confusion matrix on a held-out split, 3) build the confusion graph (Jin et al. 2017) and
cluster it into E groups, one per expert.

    mlit-derive-superclasses --model maevit_c100 --checkpoint output/train/<run>/model_best.pth.tar \\
        --dataset torch/cifar100 --data-dir ~/data/cifar100 --split validation --num-superclasses 10 \\
        --output superclasses/c100_e10.json

(from a clone: ``python train_scripts/derive_superclasses.py ...``). The confusions are measured on the held-out
split: an ImageFolder without that split folder is refused (timm would silently read the whole folder, training
images included); ``--split train`` is allowed but warned about, as a model confuses its training images far less.

It writes the map (JSON, as :func:`~timm_mlit.data.superclasses.load_superclass_map` reads it) and, beside it,
``<stem>.confusion.csv``: the confusion matrix as plain integers, row = true class, column = predicted class.
The clustering is spectral (normalised affinity, top-E eigenvectors, k-means) in numpy only.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import timm
import timm.data
import torch
from timm.models import clean_state_dict, get_pretrained_cfg_value
from tqdm import tqdm

from timm_mlit._io import check_target, command, load_weights, write_text
from timm_mlit.argtypes import (
    MAX_CLASSES, ProseHelpFormatter, int_in, nonneg_int, num_classes as num_classes_arg, positive_int)
from timm_mlit.data.superclasses import SuperclassMap
from timm_mlit.errors import MissingInputError, UserInputError
from timm_mlit.models import family_filter_fn  # importing the zoo's models registers them

_logger = logging.getLogger(__name__)
# timm's create_dataset: split names it maps to these folders (timm.data.dataset_factory)
_TRAIN_NAMES = ('train', 'training')
_EVAL_NAMES = ('val', 'valid', 'validation', 'eval', 'evaluation')

__all__ = [
    'confusion_matrix', 'confusion_graph', 'cluster_confusion_graph', 'derive_superclasses', 'within_group_share',
    'load_classifier', 'dataset_class_names', 'main',
]


@torch.no_grad()
def confusion_matrix(model: torch.nn.Module, loader, num_classes: int, device='cpu') -> torch.Tensor:
    """Counts of (true, predicted) over ``loader`` (Sec. 2.2, step 2): a ``num_classes`` x ``num_classes`` long
    tensor on the CPU, rows = true class, columns = argmax prediction. Moves ``model`` to ``device`` and sets it to
    eval mode. Labels outside ``0..num_classes-1`` raise a ValueError after the pass (no per-batch host sync)."""
    device = torch.device(device)
    model.to(device).eval()
    c = num_classes
    counts = torch.zeros(c * c + 1, dtype=torch.long, device=device)  # last bin: labels out of range
    for images, targets in tqdm(loader, desc='confusion matrix', unit='batch', leave=False):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True).long()
        logits = model(images)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        preds = logits.argmax(dim=-1)
        index = torch.where((targets >= 0) & (targets < c), targets * c + preds, c * c)
        counts += torch.bincount(index, minlength=c * c + 1)
    counts = counts.cpu()
    if counts[-1]:
        raise ValueError(
            f'{int(counts[-1])} samples have labels outside 0..{c - 1}: the dataset has more classes than '
            f'num_classes={c}.')
    return counts[:-1].view(c, c)


def confusion_graph(cm) -> np.ndarray:
    """The confusion graph's weighted adjacency (Sec. 2.2, step 3; Jin et al. 2017): counts row-normalised to
    confusion rates (classes without samples stay zero), symmetrised as (R + R^T) / 2, zero diagonal."""
    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f'A confusion matrix is square; got shape {cm.shape}.')
    cm = cm.astype(np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    adjacency = (rates + rates.T) / 2
    np.fill_diagonal(adjacency, 0.0)
    return adjacency


def _kmeans(x: np.ndarray, k: int, rng: np.random.RandomState, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding, ``n_init`` restarts, lowest inertia kept; no cluster left empty."""
    n = len(x)
    best_labels, best_inertia = None, np.inf
    for _ in range(n_init):
        centers = [x[rng.randint(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
            total = d2.sum()
            centers.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.randint(n)])
        centers = np.asarray(centers)
        labels = None
        for _ in range(max_iter):
            dist = ((x[:, None] - centers[None]) ** 2).sum(-1)
            new = dist.argmin(axis=1)
            new = _fill_empty(new, dist, k)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            centers = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
        inertia = ((x - centers[labels]) ** 2).sum()
        if inertia < best_inertia - 1e-12:
            best_labels, best_inertia = labels, inertia
    return best_labels


def _fill_empty(labels: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster the point farthest from its own centroid among clusters with more than one point."""
    labels = labels.copy()
    for j in range(k):
        if (labels == j).any():
            continue
        sizes = np.bincount(labels, minlength=k)
        movable = sizes[labels] > 1
        own = dist[np.arange(len(labels)), labels]
        i = int(np.argmax(np.where(movable, own, -np.inf)))
        labels[i] = j
    return labels


def cluster_confusion_graph(adjacency, num_groups: int, seed: int = 0) -> List[int]:
    """Spectral clustering of the confusion graph into exactly ``num_groups`` non-empty groups (Sec. 2.2, step 3):
    affinity D^-1/2 (A + eps) D^-1/2 (eps keeps the graph connected), its top ``num_groups`` eigenvectors,
    rows normalised, k-means. Groups are numbered 0.. in order of their first class, so the result is deterministic
    for a given ``seed``."""
    a = np.asarray(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f'The adjacency matrix must be square; got shape {a.shape}.')
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError('The adjacency matrix must hold finite, non-negative weights.')
    n = a.shape[0]
    if not 2 <= num_groups <= n:
        raise ValueError(f'num_groups must be between 2 and the number of classes ({n}); got {num_groups}.')
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    scale = a.max()
    a = a + (1e-6 * scale if scale > 0 else 1.0)  # a complete graph underneath: connected, degrees > 0
    inv_sqrt_deg = 1.0 / np.sqrt(a.sum(axis=1))
    affinity = inv_sqrt_deg[:, None] * a * inv_sqrt_deg[None, :]
    _, vectors = np.linalg.eigh(affinity)  # ascending eigenvalues
    embedding = vectors[:, -num_groups:]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    labels = _kmeans(embedding, num_groups, np.random.RandomState(seed))
    relabel = {}
    for g in labels:
        relabel.setdefault(int(g), len(relabel))
    return [relabel[int(g)] for g in labels]


def within_group_share(cm, superclass_of: Sequence[int]) -> Tuple[float, float]:
    """(share of the off-diagonal confusion mass inside the groups, the share a uniformly random grouping with the
    same group sizes gives in expectation). NaN when there is no confusion at all."""
    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    groups = np.asarray(superclass_of)
    n = len(groups)
    off = cm.astype(np.float64).copy()
    np.fill_diagonal(off, 0.0)
    total = off.sum()
    same = groups[:, None] == groups[None, :]
    observed = off[same].sum() / total if total > 0 else float('nan')
    sizes = np.bincount(groups)
    expected = float((sizes * (sizes - 1)).sum() / (n * (n - 1))) if n > 1 else float('nan')
    return float(observed), expected


def _group_names(superclass_of: Sequence[int], class_names: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    if class_names is None:
        return None
    names = []
    for g in range(max(superclass_of) + 1):
        members = [class_names[c] for c, s in enumerate(superclass_of) if s == g]
        extra = f'+{len(members) - 3}_more' if len(members) > 3 else ''
        names.append('+'.join(members[:3]) + extra)
    return tuple(names)


def derive_superclasses(model: torch.nn.Module, loader, num_classes: int, num_groups: int,
                        class_names: Optional[Sequence[str]] = None, device='cpu',
                        seed: int = 0) -> Tuple[SuperclassMap, torch.Tensor]:
    """Sec. 2.2 of 2309.04354 end to end on a trained dense ``model``: confusion matrix over ``loader`` (a held-out
    split), confusion graph, spectral clustering into ``num_groups`` super-classes. Returns the map (super-classes
    named by up to three member classes when ``class_names`` is given) and the confusion matrix."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f'{len(class_names)} class names for num_classes={num_classes}.')
    if not 2 <= num_groups <= num_classes:
        raise ValueError(f'num_groups must be between 2 and num_classes ({num_classes}); got {num_groups}.')
    cm = confusion_matrix(model, loader, num_classes, device=device)
    superclass_of = cluster_confusion_graph(confusion_graph(cm), num_groups, seed=seed)
    names = tuple(str(c) for c in class_names) if class_names is not None else None
    mapping = SuperclassMap(
        tuple(superclass_of), _group_names(superclass_of, names), names, source='confusion graph')
    return mapping, cm


def dataset_class_names(dataset) -> Optional[Tuple[str, ...]]:
    """Class names in label order from an ImageFolder reader's (or a torchvision dataset's) ``class_to_idx`` /
    ``classes``; None when the dataset does not say."""
    mapping = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if mapping:
        ordered = sorted(mapping.items(), key=lambda kv: kv[1])
        if [i for _, i in ordered] == list(range(len(ordered))):
            return tuple(str(name) for name, _ in ordered)
        return None
    classes = getattr(dataset, 'classes', None)
    return tuple(str(c) for c in classes) if classes else None


def _classifier_outputs(model_name: str, state: dict) -> Optional[int]:
    """Output count of the classifier in ``state`` (timm's pretrained_cfg 'classifier' key), None if absent."""
    try:
        classifier = get_pretrained_cfg_value(model_name, 'classifier')
    except Exception:  # unknown tag or no cfg: fall back to the common names
        classifier = None
    names = classifier if isinstance(classifier, (tuple, list)) else [classifier or 'head', 'fc', 'classifier']
    for name in names:
        weight = state.get(f'{name}.weight')
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0])
    return None


def load_classifier(model_name: str, checkpoint, num_classes: Optional[int] = None, use_ema: bool = False):
    """The timm model ``model_name`` with a trained classifier's weights from ``checkpoint`` (train.py's .pth.tar
    with 'state_dict' / 'state_dict_ema', or a bare state dict / .safetensors), loaded strictly. ``num_classes``
    defaults to the checkpoint's classifier; a different value is an error."""
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise MissingInputError(f'No checkpoint at {checkpoint}: pass the trained dense model\'s checkpoint.')
    try:
        state = _state_dict(load_weights(checkpoint), use_ema)
    except Exception as e:  # truncated, not a checkpoint, or objects weights_only loading refuses
        detail = str(e).splitlines()[0] if str(e) else ''
        raise UserInputError(
            f'--checkpoint {checkpoint} is not a readable checkpoint ({type(e).__name__}: {detail}); expected '
            f'train.py\'s model_best.pth.tar / last.pth.tar or a .safetensors state dict of the trained dense '
            f'model.') from e
    outputs = _classifier_outputs(model_name, state)
    if outputs is None:
        raise UserInputError(
            f'{checkpoint} holds no classifier weights (e.g. an MAE encoder export); super-classes come from a '
            f'trained classifier\'s confusions, so pass a fine-tuned checkpoint.')
    if num_classes is not None and num_classes != outputs:
        raise UserInputError(f'{checkpoint} is a {outputs}-class classifier but --num-classes is {num_classes}.')
    model = timm.create_model(model_name, pretrained=False, num_classes=outputs)
    # the model family's own filter (timm's convention: checkpoint_filter_fn beside the model class) checks the
    # architecture and adapts positions; a timm-format checkpoint otherwise passes through unchanged
    filter_fn = family_filter_fn(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserInputError(f'--checkpoint {checkpoint} does not fit --model {model_name} '
                             f'({str(e).splitlines()[0]}): pass the checkpoint of that model, or the --model it was '
                             f'trained as.') from e
    return model.eval()


def _state_dict(checkpoint, use_ema: bool) -> dict:
    """The weights in a loaded checkpoint, picked as timm's ``load_state_dict`` picks them (the EMA's with
    ``use_ema`` when present, else ``state_dict`` / ``model``, else the file itself), ``module.`` prefixes dropped."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'it holds a {type(checkpoint).__name__}, not a state dict')
    keys = (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model')
    key = next((k for k in keys if checkpoint.get(k) is not None), None)
    return clean_state_dict(checkpoint[key] if key else checkpoint)


def _summary(mapping: SuperclassMap, cm: torch.Tensor) -> str:
    total = int(cm.sum())
    lines = [f'{total} images, top-1 accuracy {100.0 * int(cm.trace()) / max(total, 1):.2f}%; '
             f'{mapping.num_classes} classes in {mapping.num_superclasses} super-classes:']
    for g in range(mapping.num_superclasses):
        members = [c for c, s in enumerate(mapping.superclass_of) if s == g]
        shown = [mapping.class_names[c] for c in members] if mapping.class_names else [str(c) for c in members]
        lines.append(f'  {g:3d} ({len(members)}): {", ".join(shown)}')
    observed, expected = within_group_share(cm, mapping.superclass_of)
    if np.isnan(observed):
        lines.append('no off-diagonal confusion: the grouping is arbitrary.')
    else:
        lines.append(f'off-diagonal confusion inside the super-classes: {100 * observed:.1f}% '
                     f'(a random grouping of the same sizes: {100 * expected:.1f}%)')
    return '\n'.join(lines)


def _check_held_out_split(args, data_dir: Path) -> None:
    """Refuse an ImageFolder without the split folder (timm would read all of ``data_dir``, training images
    included); warn loudly when the split is the training split."""
    split = args.split.split('[')[0]
    if not args.dataset:
        names = _EVAL_NAMES if split in _EVAL_NAMES else _TRAIN_NAMES if split in _TRAIN_NAMES else ()
        if not (data_dir / split).is_dir() and not any((data_dir / n).is_dir() for n in names):
            raise MissingInputError(
                f'--data-dir {data_dir} has no {split}/ folder (--split {args.split}); timm would then read the whole '
                f'folder, training images included, and the confusions would be measured on what the model was '
                f'trained on. Pass --split NAME of the held-out folder (e.g. validation), or --split . if '
                f'{data_dir} itself holds only held-out class folders.')
    if split in _TRAIN_NAMES:
        message = (f'WARNING: --split {args.split}: the confusion matrix is measured on the TRAINING images, which '
                   f'the model has fit; the confusions, and the super-classes from them, are weaker than on a '
                   f'held-out split. Sec. 2.2 of 2309.04354 uses held-out data: pass --split validation if you can.')
        _logger.warning(message)
        print(message, file=sys.stderr)


@command
def main(argv: Optional[List[str]] = None) -> SuperclassMap:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=ProseHelpFormatter,
                                prog='mlit-derive-superclasses')
    p.add_argument('--model', required=True, help='timm model name of the dense baseline (plugin models included)')
    p.add_argument('--checkpoint', required=True, help="train.py checkpoint (.pth.tar) or a .safetensors file")
    p.add_argument('--use-ema', action='store_true', help='use the EMA weights when the checkpoint has them')
    p.add_argument('--data-dir', required=True, help='dataset root')
    p.add_argument('--dataset', default='', help="timm dataset name (default '': ImageFolder)")
    p.add_argument('--split', default='validation', help='the held-out split (default: validation)')
    p.add_argument('--num-classes', type=num_classes_arg, default=None, help="default: the checkpoint's classifier")
    p.add_argument('--num-superclasses', type=int_in(2, MAX_CLASSES, expected='an integer >= 2'), default=10, help='E, one per expert (default: 10)')
    p.add_argument('--batch-size', type=positive_int, default=256)
    p.add_argument('--workers', type=nonneg_int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=nonneg_int, default=0, help='k-means seed')
    p.add_argument('--output', required=True, help='the map, PATH.json (the confusion matrix goes to '
                                                   'PATH.confusion.csv beside it)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --output map and confusion matrix')
    args = p.parse_args(argv)

    output = Path(args.output).expanduser()
    if output.suffix.lower() != '.json':
        p.error(f'--output must be a .json path (load_superclass_map reads maps by suffix); got {output}.')
    if args.num_superclasses < 2:
        p.error(f'--num-superclasses must be at least 2; got {args.num_superclasses}.')
    if not timm.is_model(args.model):
        p.error(f'--model {args.model}: not a registered timm model; expected the dense baseline, e.g. maevit_c100 '
                f'(timm.list_models() lists them). Fix the name.')
    csv = output.with_name(output.stem + '.confusion.csv')
    for path in (output, csv):  # before the evaluation: the user's files are never replaced unasked
        try:
            check_target(path, args.overwrite, '--output')
        except UserInputError as e:
            p.error(str(e))
    data_dir = Path(args.data_dir).expanduser()
    if not args.dataset and not data_dir.is_dir():
        raise MissingInputError(f'--data-dir {data_dir}: no such folder; expected the dataset root (an ImageFolder '
                                f'with a {args.split}/ folder of class folders, or torchvision\'s files with --dataset).')
    _check_held_out_split(args, data_dir)
    device = torch.device(args.device)

    model = load_classifier(args.model, args.checkpoint, num_classes=args.num_classes, use_ema=args.use_ema)
    num_classes = model.num_classes if hasattr(model, 'num_classes') else args.num_classes
    if not args.num_superclasses <= num_classes:
        raise UserInputError(f'--num-superclasses {args.num_superclasses} exceeds the {num_classes} classes.')

    dataset = timm.data.create_dataset(args.dataset, root=str(data_dir), split=args.split, is_training=False)
    class_names = dataset_class_names(dataset)
    if class_names is not None and len(class_names) != num_classes:
        raise UserInputError(
            f'The {args.split!r} split has {len(class_names)} classes but the model is a {num_classes}-class '
            f'classifier; the map would not match the model\'s labels.')
    config = timm.data.resolve_data_config({}, model=model)
    loader = timm.data.create_loader(
        dataset, input_size=config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
        crop_pct=config['crop_pct'], crop_mode=config.get('crop_mode'), num_workers=args.workers,
        persistent_workers=False, pin_memory=device.type == 'cuda', device=device)

    mapping, cm = derive_superclasses(
        model, loader, num_classes, args.num_superclasses, class_names=class_names, device=device, seed=args.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    mapping.save(output, overwrite=args.overwrite)
    write_text(csv, '\n'.join(','.join(str(int(v)) for v in row) for row in cm.tolist()) + '\n',
               overwrite=args.overwrite, what='--output')
    print(_summary(mapping, cm))
    print(f'wrote {output} and {csv}')
    return mapping


if __name__ == '__main__':
    from timm_mlit.errors import run_command
    run_command('mlit-derive-superclasses', main)
