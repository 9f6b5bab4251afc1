"""(a) The fused MoE layer against the per-expert dispatch reference, forward + backward, measured in one run.

Both sides share one NoisyTopKGate (train mode, noise on, MoE loss in the backward) and the same expert weights;
only the expert computation differs. Dropout is off for the fused-vs-dispatch ratio (the two then compute the
same function); the last columns time the fused layer with the paper's 0.1 dropout in both modes.

    python benchmarks/bench_moe_layer.py            # CPU, or CUDA with bf16 autocast when a GPU is present
    python benchmarks/bench_moe_layer.py --tokens 9280 --device cpu
"""
import argparse

import torch

from timm_mlit.layers import NoisyTopKGate, SharedSwiGLUExperts
from timm_mlit.layers.dispatch_reference import DispatchSwiGLUExperts
from timm_mlit.profiling import autocast_for, interleaved_ms

# (label, m, t, d_h): SPEC.md's measured point, then the first and last layer of each size
CONFIGS = [
    ('spec m108 t5 d81', 108, 5, 81),
    ('S first', 144, 3, 144), ('S last', 144, 5, 72),
    ('XS first', 128, 3, 96), ('XS last', 128, 5, 32),
    ('XXS first', 108, 3, 81), ('XXS last', 108, 5, 27),
]


def layer_step(gate, experts, x):
    def step():
        gate.zero_grad(set_to_none=True)
        experts.zero_grad(set_to_none=True)
        with autocast_for(x.device):
            g = gate(x)
            y = experts(x, g)
            loss = y.float().mean() + g.aux_loss
        loss.backward()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tokens', type=int, default=64 * 145, help='tokens per step (default: batch 64 x 145)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--calls', type=int, default=20, help='timed calls per candidate, taken in turn')
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'MoE layer forward+backward, {args.tokens} tokens, k=2, {name}, torch {torch.__version__}'
          + (', bf16 autocast' if device.type == 'cuda' else ', fp32'))
    print(f'{"layer":<18}{"fused ms":>10}{"dispatch ms":>13}{"ratio":>8}{"drop expert":>13}{"drop comb.":>12}')
    ratios = []
    for label, m, t, d_h in CONFIGS:
        gate = NoisyTopKGate(m, t, top_k=2).to(device).train()
        with torch.no_grad():
            gate.w_gate.weight.normal_(std=0.1)  # a gate that has learnt something
        fused = SharedSwiGLUExperts(m, d_h, t, drop=0.).to(device).train()
        ref = DispatchSwiGLUExperts(m, d_h, t).to(device).train()
        ref.load_state_dict(fused.state_dict())
        drop_e = SharedSwiGLUExperts(m, d_h, t, drop=0.1, drop_mode='expert').to(device).train()
        drop_c = SharedSwiGLUExperts(m, d_h, t, drop=0.1, drop_mode='combined').to(device).train()
        x = torch.randn(args.tokens, m, device=device, requires_grad=True)
        ms = interleaved_ms({
            'fused': layer_step(gate, fused, x),
            'dispatch': layer_step(gate, ref, x),
            'expert': layer_step(gate, drop_e, x),
            'combined': layer_step(gate, drop_c, x),
        }, calls=args.calls)
        ratio = ms['dispatch'] / ms['fused']
        ratios.append(ratio)
        print(f'{label:<18}{ms["fused"]:>10.2f}{ms["dispatch"]:>13.2f}{ratio:>7.2f}x'
              f'{ms["expert"]:>13.2f}{ms["combined"]:>12.2f}')
    geo = torch.tensor(ratios).log().mean().exp().item()
    print(f'dispatch / fused, geometric mean over the layers: {geo:.2f}x')


if __name__ == '__main__':
    main()
