"""Build each mLiT, print its parameters against the paper, MACs and a forward/backward timing.

    python -m timm_mlit.summary [--models mlit_xxs ...] [--batch-size 64] [--device cpu] [--no-timing]
"""
import argparse
from typing import Optional, Sequence

import timm
import torch

from timm_mlit.argtypes import positive_int
from timm_mlit.profiling import count_macs, count_params, inference_fn, time_ms, train_step_fn

# Table 1 (encoder, no head) and Table 8 (with a 100-class head), in millions
PAPER_PARAMS_M = {'mlit_s': (2.36, 2.38), 'mlit_xs': (1.21, 1.22), 'mlit_xxs': (0.66, 0.67)}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m timm_mlit.summary', description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(PAPER_PARAMS_M))
    parser.add_argument('--batch-size', type=positive_int, default=64)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--no-timing', action='store_true', help='parameters and MACs only')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f'timm {timm.__version__}, torch {torch.__version__}, device {device}'
          + ('' if args.no_timing else f', batch {args.batch_size}'))
    print(f'{"model":<10}{"params (no head)":>18}{"Table 1":>9}{"params (100 cls)":>18}{"Table 8":>9}'
          f'{"MMACs/img":>11}' + ('' if args.no_timing else f'{"fwd+bwd ms":>12}{"infer img/s":>13}'))
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name)
        headless = count_params(model, exclude_prefix='head.')
        full = count_params(model)
        macs = count_macs(model, torch.randn(1, *model.pretrained_cfg['input_size'])) / 1e6
        t1, t8 = PAPER_PARAMS_M.get(name, (float('nan'), float('nan')))
        row = (f'{name:<10}{headless:>11,} {100 * (headless / 1e6 - t1) / t1:+5.1f}%{t1:>8.2f}M'
               f'{full:>11,} {100 * (full / 1e6 - t8) / t8:+5.1f}%{t8:>8.2f}M{macs:>11.1f}')
        if not args.no_timing:
            model.to(device)
            x = torch.randn(args.batch_size, *model.pretrained_cfg['input_size'], device=device)
            step_ms = time_ms(train_step_fn(model, x, model.moe_loss), min_run_time=0.5)
            infer_ms = time_ms(inference_fn(model, x), min_run_time=0.5)
            row += f'{step_ms:>12.1f}{args.batch_size / infer_ms * 1e3:>13.0f}'
        print(row)


if __name__ == '__main__':
    main()
