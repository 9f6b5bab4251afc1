"""The training rate of a recipe's math on this machine, as a ratio to the machine's own sgemm rate, in one run.

Issue 23 trains mLiT-XXS on CIFAR-10 by ``table6_scratch_cifar10`` ("How Lightweight Can A Vision Transformer Be",
arXiv:2407.17783, Table 6; Table 4 with its deviations) in fp32 on a CPU. This script times what one optimizer step
of that recipe computes, and nothing of the data pipeline:

* the model of the recipe (``--model``, default ``mlit_xxs``) with the recipe's ``model_kwargs`` (per-expert dropout
  0.1), in train mode, NCHW float32 input at the model's input size (train.py without ``--channels-last``);
* the loss train.py back-propagates: cross-entropy (the recipe's smoothing, mixup and cutmix are 0) plus the MoE
  balancing loss of mLiT Eq. 12 (:class:`timm_mlit.training.AuxLossTask`, what ``--device-modules timm_mlit`` adds);
* the recipe's optimizer (timm's ``create_optimizer_v2`` with its ``opt``, ``weight_decay``, ``layer_decay``,
  betas, eps and the linearly scaled LR), ``zero_grad``, backward and ``step`` on ``--batch-size`` images.

Beside it, in the same process, it times a 1024³ float32 matmul on the same thread count (the machine's sgemm
rate) and calls the candidates in turn, sgemm between them, so that load from elsewhere falls on all of them. It
prints images/s, the achieved GFLOP/s and their ratio to the sgemm GFLOP/s. The work per image is fixed: 3 × 2 ×
the model's MACs of one eval forward (``timm_mlit.profiling.count_macs``, attention included), i.e. a backward
counted as twice the forward, whichever expert-matmul path runs. The FLOPs torch's counter sees in one real
training step are printed too.

Candidates: ``eager`` always; ``--compile`` adds ``torch.compile`` of the model (what train.py's ``--torchcompile``
does; its compile time, the first steps, is printed); ``--expert-matmul dense grouped`` adds the model with that
expert matmul; ``--dense-drop-mask`` adds the step with per-expert dropout's dense (N, k, m) mask (what eager CPU
training used before it kept the mask as dropped positions; the same function, the same draws) and times the
Geometric gap draws of one layer's mask both ways (``Tensor.geometric_`` against the vectorised inversion of
``timm_mlit.layers.expert_drop.geometric_gaps``); ``--autocast bfloat16 float16`` adds the step with its forward and
loss under CPU autocast and the backward outside it, as train.py's ``--amp`` (another precision than the run's fp32:
it says what half precision would buy on this CPU, the FLOP count is the same); ``--ablations`` adds two steps that
are not the recipe's math, to show where the time goes: the model without dropout (``expert_drop_rate`` 0) and the
model with attention's kernel replaced by its query (``F.scaled_dot_product_attention`` returning q: the projections
stay, the attention itself costs nothing); ``--threads 1 2`` runs the whole comparison at each thread count.

``--train-py PATH`` instead runs timm's real train.py for ``--updates`` optimizer steps on ``--data-dir`` (a copy of
the recipe with ``epochs`` shortened), reads its images/s from the log and prints it beside the sgemm rate measured
in the same run. It trains for real (minutes) and is not part of any test.

    python benchmarks/bench_train_rate.py                            # mlit_xxs, batch 256, fp32, eager
    python benchmarks/bench_train_rate.py --compile --expert-matmul dense grouped --rounds 5
    python benchmarks/bench_train_rate.py --dense-drop-mask --autocast bfloat16 float16 --ablations
    python benchmarks/bench_train_rate.py --train-py ../train.py --data-dir DATA --updates 20 --workers 2
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
import timm
import yaml

import timm_mlit  # noqa: F401  registers the models and the MoE loss
from timm.optim import create_optimizer_v2
from timm_mlit.configs import recipe_path
from timm_mlit.layers import SharedSwiGLUExperts
from timm_mlit.layers.expert_drop import geometric_gaps
from timm_mlit.profiling import count_macs, flop_counter
from timm_mlit.training import AuxLossTask

SGEMM_N = 1024


def load_recipe(name: str) -> dict:
    with open(recipe_path(name)) as f:
        return yaml.safe_load(f)


def sgemm_gflops(reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of a 1024³ matmul (2·n³ FLOPs; float32 unless ``dtype``) on torch's current thread count."""
    a, b = torch.randn(SGEMM_N, SGEMM_N, dtype=dtype), torch.randn(SGEMM_N, SGEMM_N, dtype=dtype)
    out = torch.empty(SGEMM_N, SGEMM_N, dtype=dtype)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * SGEMM_N ** 3 / statistics.median(times) / 1e9


def build_model(recipe: dict, model_name: str, expert_matmul: str = 'auto') -> torch.nn.Module:
    kwargs = dict(recipe.get('model_kwargs') or {})
    model = timm.create_model(model_name, num_classes=recipe.get('num_classes', 10), **kwargs)
    for m in model.modules():
        if isinstance(m, SharedSwiGLUExperts):
            m.expert_matmul = expert_matmul
    return model.train()


def build_step(recipe: dict, model: torch.nn.Module, batch_size: int, compiled: bool = False,
               autocast_dtype: Optional[torch.dtype] = None) -> Callable[[], None]:
    """One optimizer step of the recipe's math on a fixed random batch (the data pipeline left out); with
    ``autocast_dtype`` the forward and loss run under CPU autocast and the backward outside it, as train.py does."""
    lr = recipe['lr_base'] * batch_size / recipe.get('lr_base_size', 256)
    opt = create_optimizer_v2(
        model, recipe['opt'], lr=lr, weight_decay=recipe['weight_decay'], layer_decay=recipe.get('layer_decay'),
        betas=tuple(recipe.get('opt_betas', (0.9, 0.999))), eps=recipe.get('opt_eps', 1e-8))
    if recipe.get('smoothing') or recipe.get('mixup') or recipe.get('cutmix'):
        raise ValueError('bench_train_rate: the recipe uses label smoothing or mixup/cutmix, which this script does '
                         'not model (it takes cross-entropy on hard labels). Fix: extend build_step for it.')
    task = AuxLossTask(model, torch.nn.CrossEntropyLoss())
    if compiled:
        task.compile()  # timm's task compiles the model, as train.py's --torchcompile
    size = model.pretrained_cfg.get('input_size', (3, 224, 224))
    x = torch.randn(batch_size, *size)
    y = torch.randint(0, recipe.get('num_classes', 10), (batch_size,))

    def step():
        with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = task(x, y)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def with_dense_drop_mask(step: Callable[[], None]) -> Callable[[], None]:
    """The step with per-expert dropout's dense (N, k, m) mask (``expert_drop_mask``, ``_DroppedGateSum``) in place of
    the dropped positions eager CPU training keeps."""
    def dense_step():
        keep = SharedSwiGLUExperts._drop_at_positions
        SharedSwiGLUExperts._drop_at_positions = lambda self, y, top_gates: False
        try:
            step()
        finally:
            SharedSwiGLUExperts._drop_at_positions = keep
    return dense_step


def without_attention(step: Callable[[], None]) -> Callable[[], None]:
    """The step with ``F.scaled_dot_product_attention`` returning its query (an ablation, not the recipe's math)."""
    def ablated_step():
        keep = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = lambda q, k, v, **kwargs: q * 1.
        try:
            step()
        finally:
            F.scaled_dot_product_attention = keep
    return ablated_step


def gap_draw_ms(numel: int, p: float, reps: int = 15) -> Dict[str, float]:
    """Median ms of the Geometric(p) gap draws for a ``numel`` mask (as many as one round of
    ``drop_positions`` draws), by ``Tensor.geometric_`` and by :func:`geometric_gaps` (vectorised inversion)."""
    count = int(numel * p + 8 * ((numel * p * (1 - p)) ** 0.5 + 2))
    fns = {'Tensor.geometric_': lambda: torch.empty(count, dtype=torch.float64).geometric_(p),
           'geometric_gaps': lambda: geometric_gaps(count, p, torch.device('cpu'))}
    out = {}
    for label, fn in fns.items():
        fn()
        ts = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
        out[label] = statistics.median(ts) * 1e3
    return out


def step_flops(recipe: dict, model_name: str, batch_size: int) -> int:
    """FLOPs torch's counter sees in one training forward + backward (a fresh model: the step is not taken)."""
    model = build_model(recipe, model_name)
    task = AuxLossTask(model, torch.nn.CrossEntropyLoss())
    size = model.pretrained_cfg.get('input_size', (3, 224, 224))
    x, y = torch.randn(batch_size, *size), torch.randint(0, 10, (batch_size,))
    with flop_counter() as counter:
        task(x, y)['loss'].backward()
    return counter.get_total_flops()


def bench_steps(args, recipe: dict) -> None:
    probe = build_model(recipe, args.model)
    size = probe.pretrained_cfg.get('input_size', (3, 224, 224))
    macs = count_macs(probe, torch.randn(1, *size))
    flops_per_image = 6 * macs  # forward 2·MACs, backward twice the forward
    print(f'{args.model}, recipe {args.recipe} ({recipe["opt"]}, layer_decay {recipe.get("layer_decay")}, '
          f'model_kwargs {recipe.get("model_kwargs")}), batch {args.batch_size}, fp32, input {tuple(size)}, '
          f'torch {torch.__version__}, timm {timm.__version__}')
    print(f'work per image: {macs / 1e6:.1f}M MACs per forward, x6 = {flops_per_image / 1e9:.3f} GFLOP per '
          f'training image; torch\'s counter sees {step_flops(recipe, args.model, 8) / 8 / 1e9:.3f} GFLOP per image '
          f'in a training step (batch 8)')
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        steps: Dict[str, Callable[[], None]] = {}
        compile_s = {}
        for matmul in ['auto'] + [m for m in args.expert_matmul if m != 'auto']:
            label = 'eager' if matmul == 'auto' else f'eager {matmul}'
            steps[label] = build_step(recipe, build_model(recipe, args.model, matmul), args.batch_size)
        if args.dense_drop_mask:
            steps['eager dense mask'] = with_dense_drop_mask(
                build_step(recipe, build_model(recipe, args.model), args.batch_size))
        for name in args.autocast:
            steps[f'autocast {name}'] = build_step(
                recipe, build_model(recipe, args.model), args.batch_size, autocast_dtype=getattr(torch, name))
        if args.ablations:
            no_drop = dict(recipe, model_kwargs=dict(recipe.get('model_kwargs') or {}, expert_drop_rate=0.))
            steps['ablation: no dropout'] = build_step(no_drop, build_model(no_drop, args.model), args.batch_size)
            steps['ablation: no attention'] = without_attention(
                build_step(recipe, build_model(recipe, args.model), args.batch_size))
        if args.compile:
            steps['compiled'] = build_step(recipe, build_model(recipe, args.model), args.batch_size, compiled=True)
        for label, fn in steps.items():  # warm-up; compilation happens here
            start = time.perf_counter()
            for _ in range(args.warmup):
                fn()
            if label == 'compiled':
                compile_s[label] = time.perf_counter() - start
        sgemm: List[float] = []
        times: Dict[str, List[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for label, fn in steps.items():
                sgemm.append(sgemm_gflops())
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[label].append((time.perf_counter() - start) / args.steps)
        sgemm.append(sgemm_gflops())
        peak = statistics.median(sgemm)
        print(f'\n{threads} thread(s): sgemm {SGEMM_N}^3 fp32 {peak:.1f} GFLOP/s (median of {len(sgemm)}, '
              f'{min(sgemm):.1f}-{max(sgemm):.1f}); {args.rounds} rounds x {args.steps} steps per candidate')
        print(f'{"candidate":<24}{"s/step":>8}{"images/s":>10}{"GFLOP/s":>9}{"/ sgemm":>9}{"vs eager":>10}')
        base = statistics.median(times['eager'])
        for label, ts in times.items():
            t = statistics.median(ts)
            rate = args.batch_size / t
            gflops = rate * flops_per_image / 1e9
            extra = ''
            if label in compile_s:
                extra = f'   (compile + {args.warmup} warm-up steps: {compile_s[label]:.0f} s)'
            if label.startswith('ablation'):  # not the recipe's work: no FLOP rate to claim
                print(f'{label:<24}{t:>8.3f}{rate:>10.1f}{"-":>9}{"-":>9}{base / t:>9.2f}x{extra}')
                continue
            print(f'{label:<24}{t:>8.3f}{rate:>10.1f}{gflops:>9.1f}{gflops / peak:>9.3f}{base / t:>9.2f}x{extra}')
        for name in args.autocast:
            print(f'sgemm {SGEMM_N}^3 {name}: {sgemm_gflops(dtype=getattr(torch, name)):.1f} GFLOP/s (the matmuls '
                  f'alone; the step above runs its other ops in {name} too)')
        if args.dense_drop_mask:
            probe = build_model(recipe, args.model)
            layer = next(m for m in probe.modules() if isinstance(m, SharedSwiGLUExperts))
            tokens = args.batch_size * (probe.patch_embed.num_patches + probe.num_prefix_tokens)
            numel = tokens * probe.blocks[0].mlp.gate.top_k * layer.dim  # N·k·m
            ms = gap_draw_ms(numel, layer.drop.p)
            print(f'gap draws for one layer\'s mask ({numel} entries, p {layer.drop.p}): Tensor.geometric_ '
                  f'{ms["Tensor.geometric_"]:.1f} ms, geometric_gaps (vectorised inversion) '
                  f'{ms["geometric_gaps"]:.1f} ms, {ms["Tensor.geometric_"] / ms["geometric_gaps"]:.2f}x')


def bench_train_py(args, recipe: dict) -> None:
    """Run timm's train.py for ``--updates`` steps and print its images/s beside this machine's sgemm rate."""
    if not args.data_dir:
        raise SystemExit('bench_train_rate: --train-py needs --data-dir (the ImageFolder tree the recipe trains on).')
    print(f'sgemm {SGEMM_N}^3 fp32 before: {sgemm_gflops():.1f} GFLOP/s')
    probe = build_model(recipe, args.model)
    macs = count_macs(probe, torch.randn(1, *probe.pretrained_cfg['input_size']))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(recipe, epochs=1, warmup_epochs=0)
        cfg_path = os.path.join(tmp, 'recipe.yaml')
        with open(cfg_path, 'w') as f:
            yaml.safe_dump(cfg, f)
        cmd = [sys.executable, args.train_py, '--config', cfg_path, '--model', args.model, '--device', 'cpu',
               '--data-dir', args.data_dir, '--output', tmp, '--workers', str(args.workers),
               '--log-interval', '1', '--batch-size', str(args.batch_size), *args.train_py_args]
        print(' '.join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rates = []
        for line in proc.stdout:
            found = re.search(r'Train: \d+ \[\s*(\d+)/.*?Time: [\d.]+s,\s+([\d.]+)/s', line)
            if found:
                rates.append(float(found.group(2)))
                print(line.rstrip())
                if int(found.group(1)) >= args.updates:
                    proc.terminate()
                    break
        proc.wait()
    peak = sgemm_gflops()
    print(f'sgemm after: {peak:.1f} GFLOP/s')
    if len(rates) < 2:
        raise SystemExit('bench_train_rate: train.py logged fewer than 2 steps; see its output above.')
    rate = statistics.median(rates[1:])  # the first step includes start-up
    gflops = rate * 6 * macs / 1e9
    print(f'train.py: {rate:.1f} images/s (median of steps 1-{len(rates) - 1}), {gflops:.1f} GFLOP/s, '
          f'{gflops / peak:.3f} of sgemm')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='mlit_xxs')
    parser.add_argument('--recipe', default='table6_scratch_cifar10', help='recipe name or YAML path')
    parser.add_argument('--batch-size', type=int, default=256, help='images per optimizer step (default: 256)')
    parser.add_argument('--steps', type=int, default=2, help='steps per timed block')
    parser.add_argument('--rounds', type=int, default=3, help='timed blocks per candidate, taken in turn')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per candidate first')
    parser.add_argument('--threads', type=int, nargs='*', help='thread counts to compare (default: torch\'s)')
    parser.add_argument('--compile', action='store_true', help='also time torch.compile of the model')
    parser.add_argument('--expert-matmul', nargs='*', default=[], choices=['dense', 'grouped'],
                        help='also time the model with this expert matmul')
    parser.add_argument('--dense-drop-mask', action='store_true',
                        help='also time the step with per-expert dropout\'s dense mask, and the gap draws both ways')
    parser.add_argument('--autocast', nargs='*', default=[], choices=['bfloat16', 'float16'],
                        help='also time the step under CPU autocast in this dtype')
    parser.add_argument('--ablations', action='store_true',
                        help='also time the step without dropout and without the attention kernel (not the recipe)')
    parser.add_argument('--train-py', help='time timm\'s train.py at this path instead (trains for real)')
    parser.add_argument('--data-dir', help='with --train-py: the ImageFolder tree')
    parser.add_argument('--updates', type=int, default=10, help='with --train-py: optimizer steps to run')
    parser.add_argument('--workers', type=int, default=2, help='with --train-py: data loader workers')
    parser.add_argument('--train-py-args', nargs=argparse.REMAINDER, default=[],
                        help='with --train-py: further train.py arguments (last on the line)')
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    recipe['amp'] = False  # fp32: the CPU run's one deviation from Table 6
    if args.train_py:
        bench_train_py(args, recipe)
    else:
        bench_steps(args, recipe)


if __name__ == '__main__':
    main()
