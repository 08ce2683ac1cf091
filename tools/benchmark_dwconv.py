"""Inference of a depthwise 3x3 conv + its activation, per model shape:
cuDNN's depthwise kernel, the conv written as a sum of shifted copies (which
Inductor fuses into one kernel; the fp32 inference path of commits
``349dc8b``-``abc8776``), both compiled with their activation, and the Triton
kernel ``mmgroupmamba.ops.depthwise_conv2d`` (GPU).

    python tools/benchmark_dwconv.py [--models groupmamba_tiny groupmamba_base] [--batch 128]
           [--dtypes float32 float16] [--tiles 'TH,TW,TC,warps;...']

For each distinct (map size, channels) of the models' depthwise convs (the
SSM's conv + SiLU, the FFN's conv + GELU), on a channels-last input of the
given dtype under ``torch.inference_mode``: median ms of
``triton.testing.do_bench`` for each form, and the Triton kernel's
bandwidth (the map read once and written once) as a fraction of the measured
device copy bandwidth. ``--tiles`` times the Triton kernel with each tile
instead of its default.
"""
import argparse
import sys

import torch
import torch.nn.functional as F
import triton

from mmgroupmamba.models.groupmamba import MODEL_NAMES, arch_settings
from mmgroupmamba.ops import depthwise_conv


def shapes(model: str, size: int):
    """(map side, channels, activation) of each stage's SSM conv and FFN conv."""
    arch = arch_settings[model.split('_')[1]]
    out = []
    for i, (dim, ratio) in enumerate(zip(arch['embed_dims'], arch['mlp_ratios'])):
        hw = size // 4 >> i
        out += [(hw, dim, 'silu'), (hw, int(dim * ratio), 'gelu')]
    return out


def shifted_sum(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The 3x3 "same" depthwise conv of channels-last x (B, C, H, W) as the
    sum of its 9 shifted, per-channel scaled copies."""
    xl = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    h, w = x.shape[2:]
    out = bias
    for i in range(3):
        for j in range(3):
            out = out + xl[:, i:i + h, j:j + w, :] * weight[:, 0, i, j]
    return out.permute(0, 3, 1, 2)


def copy_bandwidth() -> float:
    """Measured device copy bandwidth (bytes read + written per second)."""
    x = torch.empty(1 << 28, dtype=torch.float32, device='cuda')
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode='median')
    return 2 * x.numel() * 4 / (ms * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['groupmamba_tiny', 'groupmamba_base'],
                        choices=MODEL_NAMES)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'float16'])
    parser.add_argument('--tiles', default='', help="Triton tiles 'TH,TW,TC,warps;...'")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_dwconv.py needs a CUDA GPU')
    tiles = [tuple(map(int, t.split(','))) for t in args.tiles.split(';') if t]
    bw = copy_bandwidth()
    print(f'# {torch.cuda.get_device_name()} | torch {torch.__version__} | '
          f'triton {triton.__version__} | batch {args.batch} | copy {bw / 1e9:.0f} GB/s',
          flush=True)
    names = [f'Triton {t}' for t in tiles] or ['Triton']
    print(f'| model | map | channels | act | dtype | cuDNN + act ms | shifted sum ms | '
          f'{" ms | ".join(names)} ms (of copy bw) |')
    print('|---|---|---|---|---|---|---|' + '---|' * len(names))
    seen = set()
    for model in args.models:
        for hw, c, act in shapes(model, args.size):
            for dtype in args.dtypes:
                if (hw, c, act, dtype) in seen:
                    continue
                seen.add((hw, c, act, dtype))
                dt = getattr(torch, dtype)
                x = torch.randn(args.batch, c, hw, hw, device='cuda', dtype=dt).to(
                    memory_format=torch.channels_last)
                w = torch.randn(c, 1, 3, 3, device='cuda', dtype=dt)
                b = torch.randn(c, device='cuda', dtype=dt)
                f_act = F.silu if act == 'silu' else F.gelu
                cudnn = torch.compile(lambda x: f_act(F.conv2d(x, w, b, padding=1, groups=c)))
                shifted = torch.compile(lambda x: f_act(shifted_sum(x, w, b)))
                cells = []
                with torch.inference_mode():
                    ref = cudnn(x)
                    torch.testing.assert_close(shifted(x), ref, rtol=2e-2, atol=2e-2)
                    t0 = triton.testing.do_bench(lambda: cudnn(x))
                    t1 = triton.testing.do_bench(lambda: shifted(x))
                    for tile in tiles or [None]:
                        depthwise_conv.TILE_OVERRIDE.clear()
                        if tile:
                            depthwise_conv.TILE_OVERRIDE.update(
                                zip(('TH', 'TW', 'TC', 'num_warps'), tile))
                        torch.testing.assert_close(
                            depthwise_conv.depthwise_conv2d(x, w, b, act), ref, rtol=2e-2,
                            atol=2e-2)
                        t2 = triton.testing.do_bench(
                            lambda: depthwise_conv.depthwise_conv2d(x, w, b, act))
                        frac = 2 * x.numel() * x.element_size() / (t2 * 1e-3) / bw
                        cells.append(f'{t2:.3f} ({frac:.0%})')
                    depthwise_conv.TILE_OVERRIDE.clear()
                torch._dynamo.reset()
                print(f'| {model} | {hw}² | {c} | {act} | {dtype} | {t0:.3f} | {t1:.3f} | '
                      f'{" | ".join(cells)} |', flush=True)


if __name__ == '__main__':
    main()
