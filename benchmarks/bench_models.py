"""(b) Each mLiT's training and inference images/s against a dense timm VisionTransformer twin, eager and under
``torch.compile``, (c) MACs per image and memory, all measured in one run on one machine.

The dense twin has mLiT's width, depth, heads, 36x36 input, 3x3 patches and a class token, with multi-head
attention and timm's GELU MLP whose hidden size is mLiT's *active* expert width, k x the mean d_h over the layers
(what one token passes through in mLiT's experts). Memory is the bytes autograd saves for backward in one
training step (every device), and on CUDA also the peak allocated memory of the step.

Every candidate (mLiT and twin, train and inference, eager and compiled) is called in turn, one call each, and
each ratio divides two medians of the same run, so load from elsewhere on a shared machine falls on both sides.
Compiled ratios are against the *eager* twin (what a user of timm's ViT gets by default) and against the compiled
twin. Compilation happens in the warm-up calls, outside the timings.

    python benchmarks/bench_models.py                      # mlit_xxs; CPU (fp32), or CUDA with bf16 autocast
    python benchmarks/bench_models.py --models mlit_s mlit_xs mlit_xxs --calls 20
    python benchmarks/bench_models.py --no-compile --combined   # eager only, plus the 'combined' dropout mode
"""
import argparse

import torch
import timm

import timm_mlit  # noqa: F401  registers the models
from timm_mlit.profiling import (
    count_macs, count_params, inference_fn, interleaved_ms, saved_activation_bytes, train_step_fn,
)


def dense_twin(model) -> torch.nn.Module:
    blk = model.blocks[0]
    top_k = blk.mlp.gate.top_k
    active = top_k * sum(model.hidden_dims) / len(model.hidden_dims)
    return timm.models.VisionTransformer(
        img_size=model.patch_embed.img_size,
        patch_size=model.patch_embed.patch_size,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=active / model.embed_dim,
        qkv_bias=True,
        num_classes=model.num_classes,
    )


def peak_cuda_mb(fn, device) -> float:
    if device.type != 'cuda':
        return float('nan')
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['mlit_xxs'])
    parser.add_argument('--batch-size', type=int, default=None, help='default: 64 on CPU, 512 on CUDA')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--calls', type=int, default=10, help='timed calls per candidate, taken in turn')
    parser.add_argument('--no-compile', action='store_true', help='eager candidates only')
    parser.add_argument('--combined', action='store_true', help="also time expert_drop_mode='combined' training")
    args = parser.parse_args()
    device = torch.device(args.device)
    bs = args.batch_size or (512 if device.type == 'cuda' else 64)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'batch {bs}, {name}, torch {torch.__version__}, timm {timm.__version__}'
          + (', bf16 autocast' if device.type == 'cuda' else ', fp32'))
    print('train = forward + backward (+ MoE loss for mLiT); infer = eval forward; act = saved activations per step')
    header = (f'{"model":<22}{"params":>10}{"MMACs/img":>11}{"train img/s":>13}{"infer img/s":>13}'
              f'{"act MB":>9}{"cuda peak MB":>14}')

    for model_name in args.models:
        torch.manual_seed(0)
        mlit = timm.create_model(model_name).to(device)
        dense = dense_twin(mlit).to(device)
        x = torch.randn(bs, 3, 36, 36, device=device)
        one = x[:1].cpu()
        fns = {
            'mlit_train': train_step_fn(mlit, x, mlit.moe_loss),
            'dense_train': train_step_fn(dense, x),
            'mlit_infer': inference_fn(mlit, x),
            'dense_infer': inference_fn(dense, x),
        }
        if args.combined:
            mlit_comb = timm.create_model(model_name, expert_drop_mode='combined').to(device)
            fns['comb_train'] = train_step_fn(mlit_comb, x, mlit_comb.moe_loss)
        if not args.no_compile:
            # one compiled wrapper per mode, so that no call recompiles for the other mode
            fns['mlit_train_c'] = train_step_fn(torch.compile(mlit), x, mlit.moe_loss)
            fns['dense_train_c'] = train_step_fn(torch.compile(dense), x)
            fns['mlit_infer_c'] = inference_fn(torch.compile(mlit), x)
            fns['dense_infer_c'] = inference_fn(torch.compile(dense), x)
        ms = interleaved_ms(fns, calls=args.calls)

        print(header)
        rows = [(model_name, mlit, ms['mlit_train'], ms['mlit_infer'], fns['mlit_train'])]
        if args.combined:
            rows.append((f'{model_name} drop=combined', mlit_comb, ms['comb_train'], ms['mlit_infer'],
                         fns['comb_train']))
        rows.append(('dense ViT twin', dense, ms['dense_train'], ms['dense_infer'], fns['dense_train']))
        for label, model, train_ms, infer_ms, train_fn in rows:
            macs = count_macs(model.cpu(), one) / 1e6
            model.to(device).train()
            act = saved_activation_bytes(model, lambda: model(x).float().mean()) / 2 ** 20
            print(f'{label:<22}{count_params(model):>10,}{macs:>11.1f}{bs / train_ms * 1e3:>13.0f}'
                  f'{bs / infer_ms * 1e3:>13.0f}{act:>9.1f}{peak_cuda_mb(train_fn, device):>14.1f}')
        if not args.no_compile:
            print(f'{"compiled " + model_name:<22}{"":>10}{"":>11}{bs / ms["mlit_train_c"] * 1e3:>13.0f}'
                  f'{bs / ms["mlit_infer_c"] * 1e3:>13.0f}')
            print(f'{"compiled dense twin":<22}{"":>10}{"":>11}{bs / ms["dense_train_c"] * 1e3:>13.0f}'
                  f'{bs / ms["dense_infer_c"] * 1e3:>13.0f}')
        line = (f'  ratio {model_name} / dense twin, eager: train {ms["dense_train"] / ms["mlit_train"]:.2f}x, '
                f'inference {ms["dense_infer"] / ms["mlit_infer"]:.2f}x')
        if args.combined:
            line += f' (combined dropout: train {ms["dense_train"] / ms["comb_train"]:.2f}x)'
        print(line)
        if not args.no_compile:
            print(f'  ratio compiled {model_name} / eager dense twin: '
                  f'train {ms["dense_train"] / ms["mlit_train_c"]:.2f}x, '
                  f'inference {ms["dense_infer"] / ms["mlit_infer_c"]:.2f}x')
            print(f'  ratio compiled {model_name} / compiled dense twin: '
                  f'train {ms["dense_train_c"] / ms["mlit_train_c"]:.2f}x, '
                  f'inference {ms["dense_infer_c"] / ms["mlit_infer_c"]:.2f}x')


if __name__ == '__main__':
    main()
