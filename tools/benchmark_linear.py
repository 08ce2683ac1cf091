"""The float32 Linear layers of GroupMamba T/S/B: the Triton 3xTF32 GEMM
(``mmgroupmamba.ops.linear``) against PyTorch's fp32 GEMM (cuBLAS, TF32 off),
per layer shape, on a GPU.

    python tools/benchmark_linear.py [--models tiny small base] [--batch 128] [--check-model]

Per layer shape (batch 128 at 224x224: stage i has 128 * (56 / 2^i)^2 rows):
the kernel's microseconds (weight split beforehand, as ``torch.compile``
fuses it) and cuBLAS's (``triton.testing.do_bench``), which one the op's
first-call timing picks, and each one's largest error against a float64
product relative to the largest output. The last row sums the layers over
the blocks (one shape per stage times its depth). ``--check-model`` also
runs the classifier in fp32 with ``fp32_gemm='tf32x3'`` and ``'ieee'`` on
the same batch and prints the relative L2 difference of the logits.
"""
import argparse
import sys

import torch
import torch.nn.functional as F
import triton

from mmgroupmamba.models.groupmamba import arch_settings
from mmgroupmamba.ops import linear as lin


def layer_shapes(arch: dict, batch: int):
    """(stage, name, depth, x shape, weight shape) of each Linear of a block
    that :func:`mmgroupmamba.ops.linear.linear` may run on the Triton GEMM
    (the channel attention's are batch-sized and stay on cuBLAS)."""
    out = []
    for i, (d, depth, ratio) in enumerate(zip(arch['embed_dims'], arch['depths'],
                                              arch['mlp_ratios'])):
        m, h = batch * (56 >> i) ** 2, int(d * ratio)
        out += [(i, 'ffn.fc1', depth, (m, d), (h, d)), (i, 'ffn.fc2', depth, (m, h), (d, h)),
                (i, 'mixer.proj', depth, (m, d), (d, d))]
    return out


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['tiny', 'small', 'base'])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--check-model', action='store_true')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_linear.py needs a CUDA GPU')
    torch.backends.cuda.matmul.allow_tf32 = False   # PyTorch's default, the anchor's protocol
    print(f'# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton '
          f'{triton.__version__} | batch {args.batch}', flush=True)
    for name in args.models:
        print(f'\n## groupmamba_{name}\n')
        print('| stage | layer | x | weight | Triton µs | cuBLAS fp32 µs | speed-up | picked '
              '| Triton rel. err | cuBLAS rel. err |')
        print('|---|---|---|---|---|---|---|---|---|---|')
        total_picked = total_torch = 0.0
        for stage, layer, depth, xs, ws in layer_shapes(arch_settings[name], args.batch):
            gen = torch.Generator(device='cuda').manual_seed(0)
            x = torch.randn(*xs, device='cuda', generator=gen)
            w = torch.randn(*ws, device='cuda', generator=gen) / ws[-1] ** 0.5
            b = torch.randn(ws[0], device='cuda', generator=gen)
            hi, lo = lin.tf32_split(w)
            ours = triton.testing.do_bench(lambda: lin.linear_triton(x, hi, lo, b))
            torch_ms = triton.testing.do_bench(lambda: F.linear(x, w, b))
            picked = 'Triton' if lin._prefer_triton(x, hi, lo, b) else 'cuBLAS'
            # errors on the first 8192 rows (the float64 product of all is slow)
            xr = x[:8192]
            ref = F.linear(xr.double(), w.double(), b.double())
            e_ours = rel_err(lin.linear_triton(xr, hi, lo, b), ref)
            e_torch = rel_err(F.linear(xr, w, b), ref)
            total_picked += depth * (ours if picked == 'Triton' else torch_ms)
            total_torch += depth * torch_ms
            print(f'| {stage} | {layer} | {tuple(xs)} | {tuple(ws)} | {ours * 1e3:.0f} | '
                  f'{torch_ms * 1e3:.0f} | {torch_ms / ours:.2f}× | {picked} | {e_ours:.1e} | '
                  f'{e_torch:.1e} |', flush=True)
        print(f'| all | these layers per forward | | | {total_picked:.2f} ms (as picked) | '
              f'{total_torch:.2f} ms | {total_torch / total_picked:.2f}× | | | |', flush=True)
        if args.check_model:
            import mmgroupmamba
            torch.manual_seed(0)
            fast = mmgroupmamba.create_model(f'groupmamba_{name}').cuda().eval()
            plain = mmgroupmamba.create_model(f'groupmamba_{name}', fp32_gemm='ieee').cuda().eval()
            plain.load_state_dict(fast.state_dict())
            x = torch.randn(32, 3, 224, 224, device='cuda')
            with torch.no_grad():
                a, b_ = fast(x), plain(x)
            print(f'\nlogits, tf32x3 vs ieee: relative L2 {((a - b_).norm() / b_.norm()).item():.1e}',
                  flush=True)


if __name__ == '__main__':
    main()
