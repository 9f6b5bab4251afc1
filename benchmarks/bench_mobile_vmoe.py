"""Mobile V-MoE's per-image inference cost against its dense twin, measured in one run on one machine.

Per-image routing's point (arXiv 2309.04354, Sec. 2.2) is that an image touches only its k experts' weights, so
inference should cost what the dense twin costs. Printed per model and batch size, as images/s and as the ratio to
the dense twin (``num_moe_layers=0``, same size) timed in the same interleaved loop:

* grouped: the eval path (images grouped by expert, each expert run once on its group);
* gather:  the static-shape path used for tracing / export / compile (each image's expert weights gathered);
* all-E:   the naive static alternative, every expert on every image and the chosen one kept (shown to say what
  grouping saves; not in the library).

Batch 1 is the mobile case (one image, latency); the larger batch is throughput.

    python benchmarks/bench_mobile_vmoe.py
    python benchmarks/bench_mobile_vmoe.py --models mobile_vmoe_12x384_patch32_224 --batch-sizes 1 256
"""
import argparse
import copy
import types

import torch
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.profiling import count_macs, count_params, inference_fn, interleaved_ms


def _all_experts(self, x, weights, indices):
    """Every expert on every image (E x the MLP work), then the chosen ones weighted and summed."""
    h = self.act(torch.einsum('bnd,ehd->benh', x, self.fc1_weight) + self.fc1_bias[None, :, None])
    y = torch.einsum('benh,edh->bend', h, self.fc2_weight) + self.fc2_bias[None, :, None]
    gate = torch.zeros(x.shape[0], self.num_experts, dtype=y.dtype, device=x.device)
    gate.scatter_(1, indices, weights.to(y.dtype))
    return torch.einsum('bend,be->bnd', y, gate)


def _with_dispatch(model, dispatch):
    for blk in model.moe_blocks:
        if dispatch == 'all':
            blk.mlp.forward = types.MethodType(_all_experts, blk.mlp)
        else:
            blk.mlp.expert_dispatch = dispatch
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=[
        'mobile_vmoe_6x64_patch32_224', 'mobile_vmoe_12x192_patch32_224', 'mobile_vmoe_9x96_patch3_36'])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=None, help='default: 1 64 (CPU), 1 512 (CUDA)')
    parser.add_argument('--top-k', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--calls', type=int, default=30, help='timed calls per candidate, taken in turn')
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = args.batch_sizes or ([1, 512] if device.type == 'cuda' else [1, 64])
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}, timm {timm.__version__}, k={args.top_k}, eval forward '
          + ('(bf16 autocast)' if device.type == 'cuda' else '(fp32)'))
    print(f'{"model":<32}{"batch":>6}{"params":>9}{"active":>9}{"MMACs":>8}{"dense img/s":>13}'
          f'{"grouped":>16}{"gather":>16}{"all-E":>16}')
    for model_name in args.models:
        torch.manual_seed(0)
        base = timm.create_model(model_name, top_k=args.top_k)
        moe = {d: _with_dispatch(copy.deepcopy(base), d).to(device).eval() for d in ('grouped', 'gather', 'all')}
        dense = timm.create_model(model_name, num_moe_layers=0, mlp_ratio=4. * args.top_k).to(device).eval()
        size = moe['grouped'].pretrained_cfg['input_size']
        one = torch.randn(1, *size)
        params = count_params(moe['grouped'])
        mlp = count_params(dense.blocks[-1].mlp) // args.top_k
        active = params - len(moe['grouped'].moe_blocks) * (moe['grouped'].num_experts - args.top_k) * mlp
        macs = count_macs(moe['grouped'], one) / 1e6
        for bs in sizes:
            x = torch.randn(bs, *size, device=device)
            with torch.inference_mode():  # the paths agree before they are timed
                ref = moe['gather'](x)
                for d in ('grouped', 'all'):
                    assert torch.allclose(moe[d](x), ref, atol=1e-3, rtol=1e-3), d
            fns = {'dense': inference_fn(dense, x), **{d: inference_fn(m, x) for d, m in moe.items()}}
            ms = interleaved_ms(fns, calls=args.calls)
            ips = {k: bs / v * 1e3 for k, v in ms.items()}
            cells = ''.join(f'{ips[d]:>9.0f} {ips[d] / ips["dense"]:>5.2f}x' for d in ('grouped', 'gather', 'all'))
            print(f'{model_name:<32}{bs:>6}{params / 1e6:>8.2f}M{active / 1e6:>8.2f}M{macs:>8.1f}'
                  f'{ips["dense"]:>13.0f}{cells}')
    print('params: all weights; active: those one image touches (dense twin + router at k=1); MMACs per image')


if __name__ == '__main__':
    main()
