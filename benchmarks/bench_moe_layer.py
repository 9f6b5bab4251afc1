"""(a) The fused MoE layer against the per-expert dispatch reference, forward + backward, measured in one run.

Both sides share one NoisyTopKGate (train mode, noise on, MoE loss in the backward) and the same expert weights;
only the expert computation differs. Dropout is off for the fused-vs-dispatch ratio (the two then compute the
same function); the last columns time the fused layer with the paper's 0.1 dropout in both modes. With
``--compile`` the fused layer (gate and experts, no dropout) is also timed under ``torch.compile`` (compiled in the
warm-up calls) and its ratio to the same run's dispatch reference printed.

    python benchmarks/bench_moe_layer.py            # CPU, or CUDA with bf16 autocast when a GPU is present
    python benchmarks/bench_moe_layer.py --tokens 9280 --device cpu --compile
"""
import argparse

import torch

from timm_mlit.layers import NoisyTopKGate, SharedSwiGLUExperts
from timm_mlit.testing.dispatch_reference import DispatchSwiGLUExperts
from timm_mlit.profiling import autocast_for, interleaved_ms

# (label, m, t, d_h): the point where the first implementation was measured, then each size's first and last layer
CONFIGS = [
    ('m108 t5 d81', 108, 5, 81),
    ('S first', 144, 3, 144), ('S last', 144, 5, 72),
    ('XS first', 128, 3, 96), ('XS last', 128, 5, 32),
    ('XXS first', 108, 3, 81), ('XXS last', 108, 5, 27),
]


def layer_step(gate, experts, x, compiled: bool = False):
    def forward(v):
        g = gate(v)
        return experts(v, g).float().mean() + g.aux_loss

    forward_fn = torch.compile(forward) if compiled else forward

    def step():
        gate.zero_grad(set_to_none=True)
        experts.zero_grad(set_to_none=True)
        with autocast_for(x.device):
            loss = forward_fn(x)
        loss.backward()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tokens', type=int, default=64 * 145, help='tokens per step (default: batch 64 x 145)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--calls', type=int, default=20, help='timed calls per candidate, taken in turn')
    parser.add_argument('--compile', action='store_true', help='also time the fused layer under torch.compile')
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'MoE layer forward+backward, {args.tokens} tokens, k=2, {name}, torch {torch.__version__}'
          + (', bf16 autocast' if device.type == 'cuda' else ', fp32'))
    print(f'{"layer":<14}{"fused ms":>10}{"dispatch ms":>13}{"ratio":>8}'
          + (f'{"compiled ms":>13}{"ratio":>8}' if args.compile else '')
          + f'{"drop expert":>13}{"drop comb.":>12}')
    ratios, compiled_ratios = [], []
    for label, m, t, d_h in CONFIGS:
        gate = NoisyTopKGate(m, t, top_k=2).to(device).train()
        with torch.no_grad():
            gate.w_gate.weight.normal_(std=0.1)  # a gate that has learnt something
        fused = SharedSwiGLUExperts(m, d_h, t, expert_drop_rate=0.).to(device).train()
        ref = DispatchSwiGLUExperts(m, d_h, t).to(device).train()
        ref.load_state_dict(fused.state_dict())
        drop_e = SharedSwiGLUExperts(m, d_h, t, expert_drop_rate=0.1, expert_drop_mode='expert').to(device).train()
        drop_c = SharedSwiGLUExperts(m, d_h, t, expert_drop_rate=0.1, expert_drop_mode='combined').to(device).train()
        x = torch.randn(args.tokens, m, device=device, requires_grad=True)
        fns = {
            'fused': layer_step(gate, fused, x),
            'dispatch': layer_step(gate, ref, x),
            'expert': layer_step(gate, drop_e, x),
            'combined': layer_step(gate, drop_c, x),
        }
        if args.compile:
            fns['compiled'] = layer_step(gate, fused, x, compiled=True)
        ms = interleaved_ms(fns, calls=args.calls)
        ratio = ms['dispatch'] / ms['fused']
        ratios.append(ratio)
        row = f'{label:<14}{ms["fused"]:>10.2f}{ms["dispatch"]:>13.2f}{ratio:>7.2f}x'
        if args.compile:
            compiled_ratios.append(ms['dispatch'] / ms['compiled'])
            row += f'{ms["compiled"]:>13.2f}{compiled_ratios[-1]:>7.2f}x'
        print(row + f'{ms["expert"]:>13.2f}{ms["combined"]:>12.2f}')
    geo = torch.tensor(ratios).log().mean().exp().item()
    print(f'dispatch / fused, eager: min {min(ratios):.2f}x, geometric mean {geo:.2f}x over the layers')
    if args.compile:
        geo = torch.tensor(compiled_ratios).log().mean().exp().item()
        print(f'dispatch / fused, compiled: min {min(compiled_ratios):.2f}x, geometric mean {geo:.2f}x')


if __name__ == '__main__':
    main()
