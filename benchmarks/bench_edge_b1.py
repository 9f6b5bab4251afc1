"""mLiT against its dense twin at batch 1 in onnxruntime: the paired, repeated comparison behind the batch-1 rows of
docs/benchmarks.md ("On the edge"). Prints the machine and versions, then per (precision, threads) the median of the
repeats of twin ms / mLiT ms (above 1: mLiT is faster), and each repeat's ratios.

Each model is exported as ``benchmarks/bench_edge.py`` exports it (``timm_mlit.export``: TorchScript exporter,
dynamic batch; int8 by ``quantize_onnx``, routing in float32) and the sessions are called in turn
(``timm_mlit.profiling.interleaved_ms``), so that load from elsewhere falls on all of them alike. A repeat is one
such interleaved run; the ratio is taken within a repeat, never across runs. At 1 thread onnxruntime runs in the
calling thread, so the same repeats are also timed in that thread's CPU time (``time.thread_time``): on a machine
shared with other work, wall time counts the time the process waits for a core, CPU time does not, and its ratios
hold still where wall-time ratios swing (both are printed).

``--onnx LABEL=PATH`` adds an ONNX file exported elsewhere (e.g. by an older checkout of timm_mlit) to every group:
the way to compare two versions of the export in one process. A file named ``X.onnx`` is the fp32 form; its int8
form is ``X.int8.onnx`` beside it, if present.

    python benchmarks/bench_edge_b1.py                         # mlit_xxs, 1 and 2 threads, 5 repeats
    python benchmarks/bench_edge_b1.py --onnx before=/tmp/old/mlit_xxs.onnx --profile
"""
import argparse
import atexit
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.export import export_onnx, onnx_op_counts, onnx_session, quantize_onnx
from timm_mlit.profiling import interleaved_ms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_edge import machine  # noqa: E402
from bench_models import dense_twin  # noqa: E402


def export_pair(model, folder: Path, label: str) -> dict:
    fp32 = export_onnx(model, folder / f'{label}.onnx', dynamo=False)
    return {'fp32': fp32, 'int8': quantize_onnx(fp32, folder / f'{label}.int8.onnx', model=model)}


def profile(path: Path, x: np.ndarray, folder: Path, runs: int = 200) -> collections.Counter:
    """Microseconds per run by op type (onnxruntime's profiler, 1 thread, after its graph optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / f'{path.stem}_profile')
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    for _ in range(runs):
        session.run(None, {'input0': x})
    events = json.loads(Path(session.end_profiling()).read_text())
    total = collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            total[e['args']['op_name']] += e['dur'] / runs
    return total


def interleaved_cpu_ms(fns, calls: int, warmup: int) -> dict:
    """As ``interleaved_ms``, in the calling thread's CPU time (meaningful where the work runs in that thread)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            times[name].append((time.thread_time() - start) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='mlit_xxs')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--calls', type=int, default=200, help='timed calls per candidate and repeat')
    parser.add_argument('--onnx', action='append', default=[], metavar='LABEL=PATH', help='more fp32 ONNX files')
    parser.add_argument('--profile', action='store_true', help='also print 1-thread time by op type')
    args = parser.parse_args()

    print(f'Machine: {machine()}\n')
    folder = Path(tempfile.mkdtemp(prefix='bench_edge_b1_'))
    atexit.register(shutil.rmtree, folder, True)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10).eval()
    twin = dense_twin(model).eval()
    twin.pretrained_cfg = model.pretrained_cfg
    files = {args.model: export_pair(model, folder, 'mlit'), 'twin': export_pair(twin, folder, 'twin')}
    for item in args.onnx:
        label, sep, path = item.partition('=')
        if not sep or not Path(path).is_file():
            raise SystemExit(f'--onnx {item!r}: expected LABEL=PATH of an existing .onnx file.')
        path = Path(path)
        files[label] = {'fp32': path}
        int8 = path.with_name(path.stem + '.int8.onnx')
        if int8.is_file():
            files[label]['int8'] = int8
    for label, forms in files.items():
        print(f'{label}: ' + ', '.join(f'{p} {sum(onnx_op_counts(f).values())} nodes' for p, f in forms.items()))

    x = np.random.RandomState(0).randn(1, *model.pretrained_cfg['input_size']).astype(np.float32)
    ratios = collections.defaultdict(list)
    for precision in ('fp32', 'int8'):
        for n in args.threads:
            sessions = {label: onnx_session(forms[precision], n) for label, forms in files.items()
                        if precision in forms}
            fns = {label: (lambda s=s: s.run(None, {'input0': x})) for label, s in sessions.items()}
            for r in range(args.repeats):
                clocks = {'wall': interleaved_ms(fns, calls=args.calls, warmup=10)}
                if n == 1:
                    clocks['cpu'] = interleaved_cpu_ms(fns, calls=args.calls, warmup=10)
                for clock, ms in clocks.items():
                    for label, v in ms.items():
                        if label != 'twin':
                            ratios[(precision, n, clock, label)].append(ms['twin'] / v)
                    print(f'{precision} {n}T {clock} repeat {r}: '
                          + ', '.join(f'{k} {v:.2f} ms' for k, v in ms.items()))

    print('\n| precision | threads | clock | candidate | twin ms / candidate ms, median of repeats | repeats |')
    print('|---|---|---|---|---|---|')
    for (precision, n, clock, label), rs in ratios.items():
        print(f'| {precision} | {n} | {clock} | {label} | {np.median(rs):.2f}x | '
              + ', '.join(f'{v:.2f}' for v in rs) + ' |')

    if args.profile:
        for label, forms in files.items():
            for precision, path in forms.items():
                prof = profile(Path(path), x, folder)
                print(f'\n{label} {precision}: {sum(prof.values()):.0f} us of kernels per run (profiled), by op:')
                print(', '.join(f'{op} {us:.0f}' for op, us in prof.most_common()))


if __name__ == '__main__':
    main()
