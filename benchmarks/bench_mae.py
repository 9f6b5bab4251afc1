"""mmLiT pre-training throughput per size (forward + backward + AdamW step of the masked autoencoder), against the
same model's supervised training step on whole images, measured in one run; and what Table 3's epochs cost at
that speed (CIFAR-100: 50,000 training images).

    python benchmarks/bench_mae.py                  # CPU fp32, or CUDA with bf16 autocast when a GPU is present
    python benchmarks/bench_mae.py --batch-size 1280 --models mlit_xxs
    python benchmarks/bench_mae.py --compile        # both steps' models under torch.compile (compiled in warm-up)
"""
import argparse

import timm
import torch

import timm_mlit  # noqa: F401
from timm_mlit.mae import create_mae
from timm_mlit.mae.arguments import TABLE3
from timm_mlit.profiling import autocast_for, interleaved_ms

CIFAR100_TRAIN = 50_000


def step_fn(model, optimizer, x, forward_loss):
    def step():
        model.train()
        with autocast_for(x.device):
            loss = forward_loss(model, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(TABLE3))
    parser.add_argument('--batch-size', type=int, default=None, help='default: 64 on CPU, Table 3 on CUDA')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--calls', type=int, default=10)
    parser.add_argument('--compile', action='store_true', help='torch.compile both models (the pre-training '
                        'command\'s --torchcompile)')
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}' + (', bf16 autocast' if device.type == 'cuda' else ', fp32')
          + (', torch.compile' if args.compile else ', eager'))
    print(f'{"model":<10}{"batch":>7}{"MAE img/s":>11}{"supervised img/s":>18}{"ratio":>8}'
          f'{"Table 3 epochs":>16}{"hours at this speed":>21}')
    for model_name in args.models:
        torch.manual_seed(0)
        bs = args.batch_size or (64 if device.type == 'cpu' else TABLE3[model_name]['batch_size'])
        mae = create_mae(model_name).to(device)
        clf = timm.create_model(model_name).to(device)
        x = torch.randn(bs, 3, 36, 36, device=device)
        y = torch.randint(0, 100, (bs,), device=device)
        mae_opt = torch.optim.AdamW(mae.parameters(), lr=1e-4)
        clf_opt = torch.optim.AdamW(clf.parameters(), lr=1e-4)
        mae_run = torch.compile(mae) if args.compile else mae
        clf_run = torch.compile(clf) if args.compile else clf
        ms = interleaved_ms({
            'mae': step_fn(mae_run, mae_opt, x, lambda m, v: m(v).loss),
            'clf': step_fn(clf_run, clf_opt, x,
                           lambda m, v: torch.nn.functional.cross_entropy(m(v), y) + clf.moe_loss()),
        }, calls=args.calls)
        mae_ips, clf_ips = bs / ms['mae'] * 1e3, bs / ms['clf'] * 1e3
        epochs = TABLE3[model_name]['epochs']
        hours = epochs * CIFAR100_TRAIN / mae_ips / 3600
        print(f'{model_name:<10}{bs:>7}{mae_ips:>11.0f}{clf_ips:>18.0f}{mae_ips / clf_ips:>7.2f}x'
              f'{epochs:>16}{hours:>21,.0f}')


if __name__ == '__main__':
    main()
