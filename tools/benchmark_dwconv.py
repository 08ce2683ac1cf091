"""Compiled inference of a depthwise 3x3 conv + its activation, per model shape:
``DepthwiseConv2d``'s shifted sum against cuDNN's depthwise kernel (GPU).

    python tools/benchmark_dwconv.py [--models groupmamba_tiny groupmamba_base] [--batch 128]
           [--dtypes float32 float16]

For each distinct (map size, channels) of the models' depthwise convs (the
SSM's conv + SiLU, the FFN's conv + GELU), both forms are compiled with
``torch.compile`` under ``torch.inference_mode`` on a channels-last input
of the given dtype and timed with ``triton.testing.do_bench`` (median ms).
"""
import argparse
import sys

import torch
import torch.nn.functional as F
import triton

from mmgroupmamba.models.common import depthwise_conv2d_shifted
from mmgroupmamba.models.groupmamba import MODEL_NAMES, arch_settings


def shapes(model: str, size: int):
    """(map side, channels, activation) of each stage's SSM conv and FFN conv."""
    arch = arch_settings[model.split('_')[1]]
    out = []
    for i, (dim, ratio) in enumerate(zip(arch['embed_dims'], arch['mlp_ratios'])):
        hw = size // 4 >> i
        out += [(hw, dim, 'silu'), (hw, int(dim * ratio), 'gelu')]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['groupmamba_tiny', 'groupmamba_base'],
                        choices=MODEL_NAMES)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'float16'])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_dwconv.py needs a CUDA GPU')
    print(f'# {torch.cuda.get_device_name()} | torch {torch.__version__} | '
          f'triton {triton.__version__} | batch {args.batch}', flush=True)
    print('| model | map | channels | act | dtype | cuDNN + act ms | shifted sum ms | ratio |')
    print('|---|---|---|---|---|---|---|---|')
    for model in args.models:
        for hw, c, act in shapes(model, args.size):
            for dtype in args.dtypes:
                dt = getattr(torch, dtype)
                x = torch.randn(args.batch, c, hw, hw, device='cuda', dtype=dt).to(
                    memory_format=torch.channels_last)
                w = torch.randn(c, 1, 3, 3, device='cuda', dtype=dt)
                b = torch.randn(c, device='cuda', dtype=dt)
                f_act = F.silu if act == 'silu' else F.gelu
                cudnn = torch.compile(lambda x: f_act(F.conv2d(x, w, b, padding=1, groups=c)))
                shifted = torch.compile(lambda x: f_act(depthwise_conv2d_shifted(x, w, b)))
                with torch.inference_mode():
                    torch.testing.assert_close(shifted(x), cudnn(x), rtol=2e-2, atol=2e-2)
                    t0 = triton.testing.do_bench(lambda: cudnn(x))
                    t1 = triton.testing.do_bench(lambda: shifted(x))
                torch._dynamo.reset()
                print(f'| {model} | {hw}² | {c} | {act} | {dtype} | {t0:.3f} | {t1:.3f} | '
                      f'{t0 / t1:.2f} |', flush=True)


if __name__ == '__main__':
    main()
