"""On the edge: mLiT S / XS / XXS exported, quantised to int8 and timed on this CPU against their dense twins and the
small CNNs a timm user would pick at this size, with the accuracy of every int8 model against its fp32 self on real
CIFAR-10 test images, all in one run. Prints ready markdown tables (machine, torch and onnxruntime versions first).

mLiT's reason to exist is edge intelligence (arXiv 2407.17783, Sec. 1); neither it nor the tiny-ViT zoos report
what an edge user needs: does it export, does it quantise, how long does one image take on a CPU, at what accuracy.

* Latency: milliseconds per batch (median), batch 1 and batch 32, one thread and all threads, fp32 and int8, in
  PyTorch eager (``torch.inference_mode``) and in onnxruntime (CPU provider). Within each (model group, batch,
  threads) the candidates are called in turn (``timm_mlit.profiling.interleaved_ms``) so that load from elsewhere
  falls on all of them alike; each mLiT is timed in one group with its dense twin (the ``dense_twin`` of
  ``bench_models.py``: a timm ViT of the same width, depth, heads and tokens, GELU MLP of mLiT's active expert width).
* int8 is dynamic quantisation (``timm_mlit.export``): PyTorch's on every Linear, onnxruntime's on every
  MatMul / Gemm / Conv by a weight; mLiT's gates and routers stay float32. PyTorch's dynamic quantisation leaves a
  CNN's convolutions in float32 (it quantises Linear layers only), onnxruntime's quantises them.
* Accuracy: top-1 of fp32 and int8, eager and onnxruntime, on CIFAR-10 test images (``--data``: the project's npz
  of JPEGs or an ImageFolder), each model's own eval transform. Weights from ``--checkpoint MODEL=PATH`` are named
  in the table; a model without weights is *untrained* and gets only the share of images on which int8 and fp32
  predict the same class. CNNs get latency only (no weights can be downloaded here).

    python benchmarks/bench_edge.py --checkpoint mlit_xxs=output/train/<run>/last.pth.tar
    python benchmarks/bench_edge.py --models mlit_xxs --cnns lcnet_050 --eval-images 10000   # one size, all images
"""
import argparse
import atexit
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import timm
from timm.data import create_transform, resolve_data_config

import timm_mlit  # noqa: F401  registers the models
from timm_mlit._io import torch_load
from timm_mlit.export import export_onnx, onnx_run, onnx_session, quantize_dynamic, quantize_onnx
from timm_mlit.profiling import count_params, interleaved_ms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import dense_twin  # noqa: E402  the dense twin of the other benchmarks, not a copy

DEFAULT_DATA = Path('/work/shared/data/cifar10_test_jpeg.npz')
CNNS = ['mobilenetv3_small_050', 'lcnet_050', 'mobilenetv4_conv_small_050', 'mobilenetv3_small_100']
RUNTIMES = [('eager', 'fp32'), ('eager', 'int8'), ('onnxruntime', 'fp32'), ('onnxruntime', 'int8')]


class Candidate:
    """One model in its four deployed forms: eager fp32 / int8, onnxruntime fp32 / int8 (a session per thread
    count)."""

    def __init__(self, label: str, model: torch.nn.Module, folder: Path, thread_counts: List[int],
                 weights: Optional[str], eval_transform=None):
        self.label = label
        self.weights = weights
        self.params = count_params(model)
        self.transform = eval_transform
        self.eager = {'fp32': model.eval(), 'int8': quantize_dynamic(model)}
        start = time.perf_counter()
        fp32_path = export_onnx(model, folder / f'{label}.onnx', dynamo=False)
        int8_path = quantize_onnx(fp32_path, folder / f'{label}.int8.onnx', model=model)
        self.export_s = time.perf_counter() - start
        self.sizes_kb = {'fp32': fp32_path.stat().st_size / 1024, 'int8': int8_path.stat().st_size / 1024}
        self.sessions = {(p, n): onnx_session(path, n) for p, path in (('fp32', fp32_path), ('int8', int8_path))
                         for n in thread_counts}

    def fn(self, runtime: str, precision: str, x: torch.Tensor, threads: int) -> Callable[[], None]:
        if runtime == 'eager':
            model = self.eager[precision]

            def run():
                with torch.inference_mode():
                    model(x)
            return run
        session, feed = self.sessions[(precision, threads)], {'input0': x.numpy()}
        return lambda: session.run(None, feed)

    @torch.inference_mode()
    def predict(self, runtime: str, precision: str, x: torch.Tensor, threads: int) -> np.ndarray:
        if runtime == 'eager':
            return self.eager[precision](x).argmax(-1).numpy()
        return onnx_run(self.sessions[(precision, threads)], x).argmax(-1)


def time_group(cands: List[Candidate], batch: int, threads: int, budget_s: float) -> Dict[Tuple[str, str, str], float]:
    """Median ms per call of every (candidate, runtime, precision), called in turn, at ``threads`` threads."""
    torch.set_num_threads(threads)
    c0 = cands[0]
    x = torch.randn(batch, *c0.eager['fp32'].pretrained_cfg['input_size'])
    fns = {(c.label, r, p): c.fn(r, p, x, threads) for c in cands for r, p in RUNTIMES}
    start = time.perf_counter()
    for fn in fns.values():  # one untimed call each sizes the number of timed rounds
        fn()
    one_round = time.perf_counter() - start
    calls = int(max(5, min(50, budget_s / max(one_round, 1e-6))))
    return interleaved_ms(fns, calls=calls, warmup=1)


def load_images(data: Path, n: int, seed: int = 0) -> Tuple[List, np.ndarray, str]:
    """``n`` test images (PIL) and labels drawn at random (fixed seed) from an npz of JPEGs (jpeg / offsets /
    labels) or an ImageFolder, and a description of them."""
    from PIL import Image

    if data.suffix == '.npz':
        with np.load(data, allow_pickle=False) as f:
            jpeg, offsets, labels = f['jpeg'], f['offsets'], f['labels']
        pick = np.random.RandomState(seed).permutation(len(labels))[:n]
        images = [Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert('RGB') for i in pick]
        return images, labels[pick], f'{len(pick)} of {len(labels)} images of {data.name} (JPEG copy of CIFAR-10)'
    if data.is_dir():
        from timm.data import ImageDataset
        ds = ImageDataset(str(data))
        pick = np.random.RandomState(seed).permutation(len(ds))[:n]
        items = [ds[int(i)] for i in pick]
        return [im.convert('RGB') for im, _ in items], np.array([t for _, t in items]), \
            f'{len(pick)} of {len(ds)} images of the ImageFolder {data}'
    raise SystemExit(f'--data {data}: expected an .npz of JPEGs (jpeg/offsets/labels, see /work/shared/data) or an '
                     f'ImageFolder directory; neither exists there.')


def evaluate(c: Candidate, images: List, labels: np.ndarray, threads: int, batch: int = 100) -> Dict:
    """Predictions of the four forms on the images (each with the model's own eval transform)."""
    torch.set_num_threads(threads)
    preds = {rp: [] for rp in RUNTIMES}
    for i in range(0, len(images), batch):
        x = torch.stack([c.transform(im) for im in images[i:i + batch]])
        for r, p in RUNTIMES:
            preds[(r, p)].append(c.predict(r, p, x, threads))
    preds = {k: np.concatenate(v) for k, v in preds.items()}
    top1 = {k: float((v == labels).mean() * 100) for k, v in preds.items()}
    agree = {r: float((preds[(r, 'int8')] == preds[(r, 'fp32')]).mean() * 100) for r in ('eager', 'onnxruntime')}
    return dict(top1=top1, agree=agree, n=len(labels))


def parse_checkpoints(items: List[str]) -> Dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition('=')
        if not sep or not path:
            raise SystemExit(f'--checkpoint {item!r}: expected MODEL=PATH, e.g. mlit_xxs=output/train/run/last.pth.tar')
        if not Path(path).is_file():
            raise SystemExit(f'--checkpoint {item!r}: no file at {path}.')
        out[name] = Path(path)
    return out


def describe_checkpoint(path: Path) -> str:
    ckpt = {}
    if path.suffix != '.safetensors':
        ckpt = torch_load(path)  # the project's one safe reader: tensors, plain data and train.py's Namespace
    epoch = ckpt.get('epoch') if isinstance(ckpt, dict) else None
    summary = path.parent / 'summary.csv'
    detail = f', {int(epoch) + 1} epoch(s) by train.py' if isinstance(epoch, int) else ''
    if summary.is_file():
        rows = summary.read_text().strip().splitlines()
        detail += f'; its summary.csv: {len(rows) - 1} epoch row(s)'
    return f'`{path}`{detail}'


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
        cpu = next((l.split(':', 1)[1].strip() for l in out.splitlines() if l.startswith('Model name')), cpu)
    except OSError:
        pass
    import onnxruntime
    load = ' / '.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    return (f'{cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, torch {torch.__version__}, '
            f'onnxruntime {onnxruntime.__version__}, timm {timm.__version__}; load average (1/5/15 min) {load}')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['mlit_s', 'mlit_xs', 'mlit_xxs'])
    parser.add_argument('--cnns', nargs='*', default=CNNS, help='timm CNNs timed at the same input (latency only)')
    parser.add_argument('--checkpoint', action='append', default=[], metavar='MODEL=PATH',
                        help='trained weights for a model (train.py .pth.tar or safetensors); any number')
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='npz of JPEGs or ImageFolder of test images')
    parser.add_argument('--eval-images', type=int, default=2000, help='test images for models with weights')
    parser.add_argument('--agree-images', type=int, default=500, help='test images for untrained models')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--threads', type=int, nargs='+', default=None, help='default: 1 and all CPUs')
    parser.add_argument('--eval-threads', type=int, default=None, help='threads for the accuracy pass (default: all)')
    parser.add_argument('--budget', type=float, default=4.0, help='seconds of timed calls per group (at least 5)')
    parser.add_argument('--onnx-dir', type=Path, default=None, help='keep the ONNX files here (default: temporary)')
    args = parser.parse_args()
    checkpoints = parse_checkpoints(args.checkpoint)
    unknown = set(checkpoints) - set(args.models)
    if unknown:
        raise SystemExit(f'--checkpoint for {sorted(unknown)}, which are not in --models {args.models}.')
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    if args.eval_threads is not None and args.eval_threads not in threads:
        raise SystemExit(f'--eval-threads {args.eval_threads} must be one of the timed thread counts {threads}.')
    t_start = time.perf_counter()
    print(f'Machine: {machine()}')
    print(f'int8 = dynamic quantisation (timm_mlit.export); ONNX by the TorchScript exporter, CPU provider\n')

    if args.onnx_dir is None:
        folder = Path(tempfile.mkdtemp(prefix='bench_edge_'))
        atexit.register(shutil.rmtree, folder, True)  # removed however the run ends
    else:
        folder = args.onnx_dir
    folder.mkdir(parents=True, exist_ok=True)
    groups: List[Tuple[str, List[Candidate]]] = []
    for name in args.models:
        torch.manual_seed(0)
        path = checkpoints.get(name)
        model = timm.create_model(name, num_classes=args.num_classes, checkpoint_path=str(path) if path else '')
        transform = create_transform(**resolve_data_config({}, model=model))
        twin = dense_twin(model)
        twin.pretrained_cfg = model.pretrained_cfg
        groups.append((name, [
            Candidate(name, model, folder, threads, describe_checkpoint(path) if path else None, transform),
            Candidate(f'{name} dense twin', twin, folder, threads, None, transform),
        ]))
    cnns = []
    for name in args.cnns:
        cnn = timm.create_model(name, num_classes=args.num_classes)
        cnn.pretrained_cfg = dict(cnn.pretrained_cfg, input_size=(3, 36, 36))
        cnns.append(Candidate(name, cnn, folder, threads, None))
    if cnns:
        groups.append(('CNNs', cnns))
    print(f'built, exported and quantised {sum(len(g) for _, g in groups)} models in '
          f'{time.perf_counter() - t_start:.0f} s')

    ms: Dict[Tuple[str, str, str, int, int], float] = {}
    for _, cands in groups:
        for bs in args.batch_sizes:
            for n in threads:
                for (label, r, p), v in time_group(cands, bs, n, args.budget).items():
                    ms[(label, r, p, bs, n)] = v
    print(f'timed in {time.perf_counter() - t_start:.0f} s so far\n')

    cols = [(bs, n) for bs in args.batch_sizes for n in threads]
    print('### Latency (ms per batch, median; lower is better)\n')
    print('| model | params | runtime | precision | ' + ' | '.join(
        f'batch {bs}, {n} thread{"s" if n > 1 else ""}' for bs, n in cols) + ' |')
    print('|---' * (4 + len(cols)) + '|')
    for _, cands in groups:
        for c in cands:
            for r, p in RUNTIMES:
                cells = ' | '.join(f'{ms[(c.label, r, p, bs, n)]:.2f}' for bs, n in cols)
                print(f'| {c.label} | {c.params:,} | {r} | {p} | {cells} |')

    print('\n### mLiT against its dense twin (twin ms / mLiT ms: above 1 means mLiT is faster)\n')
    print('| model | mLiT | twin | ' + ' | '.join(f'batch {bs}, {n}T' for bs, n in cols) + ' |')
    print('|---' * (3 + len(cols)) + '|')
    pairs = [((r, p), (r, p)) for r, p in RUNTIMES] + [((r, 'int8'), (r, 'fp32')) for r in ('eager', 'onnxruntime')]
    for name, cands in groups:
        if name == 'CNNs':
            continue
        twin = cands[1].label
        for (r, p), (tr, tp) in pairs:
            cells = ' | '.join(f'{ms[(twin, tr, tp, bs, n)] / ms[(name, r, p, bs, n)]:.2f}x' for bs, n in cols)
            print(f'| {name} | {r} {p} | {tr} {tp} | {cells} |')

    print('\n### int8 against fp32 on CIFAR-10 test images\n')
    n_eval = max([args.eval_images if c.weights else args.agree_images
                  for name, cands in groups if name != 'CNNs' for c in cands] or [0])
    if n_eval:
        images, labels, about = load_images(args.data, n_eval)
        eval_threads = args.eval_threads or threads[-1]
        print(f'Images: {about}, each model\'s eval transform; {eval_threads} thread(s), batch 100.\n')
        print('| model | weights | images | top-1 fp32 eager | top-1 int8 eager | top-1 fp32 ORT | top-1 int8 ORT '
              '| int8 = fp32 prediction, eager | same, ORT |')
        print('|---' * 9 + '|')
        for name, cands in groups:
            if name == 'CNNs':
                continue
            for c in cands:
                n = args.eval_images if c.weights else args.agree_images
                res = evaluate(c, images[:n], labels[:n], eval_threads)
                t = res['top1']
                if c.weights:
                    accs = ' | '.join(f'{t[rp]:.2f}' for rp in RUNTIMES)
                    weights = c.weights
                else:
                    accs = ' | '.join(['(untrained)'] * 4)
                    weights = 'none: untrained (random init), agreement only'
                print(f'| {c.label} | {weights} | {res["n"]} | {accs} | {res["agree"]["eager"]:.2f}% '
                      f'| {res["agree"]["onnxruntime"]:.2f}% |')
    print(f'\nONNX sizes (KiB, fp32 -> int8): ' + ', '.join(
        f'{c.label} {c.sizes_kb["fp32"]:.0f} -> {c.sizes_kb["int8"]:.0f}' for _, cands in groups for c in cands))
    print(f'Total {time.perf_counter() - t_start:.0f} s; load average at the end '
          f'{" / ".join(f"{v:.1f}" for v in os.getloadavg())}.')


if __name__ == '__main__':
    main()
