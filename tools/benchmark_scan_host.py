"""Host (CPU) cost of one selective-scan call, layer by layer (GPU).

The GPU time of the scan kernels is what ``tools/benchmark_scan.py`` times.
This script times what the host spends to issue them: at small batch
(detection's 2 images a GPU) and in eager training an op's Python and
dispatch work can exceed its kernels' time, and then it, not the kernel, sets
the step time.

Each layer of the call stack is timed on a map so small that its kernels take
a few microseconds: ``iters`` calls are issued back to back and the stream is
synchronised once, so the wall time per call is the host's (the GPU never
falls behind). The layers, innermost first:

- ``torch.add``: an ATen op's dispatch and launch, for scale;
- ``fwd kernel fn`` / ``bwd kernel fn``: ``triton_scan.selective_scan_2d_fwd_triton``
  and ``..._bwd_triton`` (tile config, strides, buffers, Triton's launcher);
- ``fwd op``: the custom op ``torch.ops.mmgroupmamba.selective_scan_2d_fwd``
  under ``no_grad`` (adds the dispatcher and the custom-op wrapper);
- ``selective_scan_2d``: the public entry point under ``no_grad`` (adds the
  argument checks and the channels-last views), as the model calls it;
- ``... + autograd record``: the same with inputs that require grad (the
  autograd node and what it saves);
- ``... forward + backward``: one forward and ``torch.autograd.backward``
  through it, as a training step runs the op (eager calls skip the custom
  op's dispatch, see ``mmgroupmamba.ops.library.EagerScan``);
- ``... forward + backward, custom op``: the same through the custom op, as
  under ``torch.compile`` or a dispatch mode (the fast path switched off).

Rounds of all layers are interleaved (``--rounds``) and the median per call is
printed, so drift of the machine hits every layer alike. ``--profile`` also
prints cProfile's top functions of the forward + backward layer.

Usage: python tools/benchmark_scan_host.py [--iters 200] [--rounds 7] [--profile 25]
"""
import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, __file__.rsplit('/tools/', 1)[0] if '/tools/' in __file__ else '.')
from mmgroupmamba.ops import library, selective_scan_2d, triton_scan  # noqa: E402


def make_inputs(batch: int, per: int, height: int, width: int, groups: int = 4,
                device: str = 'cuda') -> Dict[str, torch.Tensor]:
    """GroupMamba's call (fp32): u a channels-last grouped map (batch, H, W,
    G, per); delta, B and C column views of one (batch, H, W, G, 2 + per)
    projection output ``x_dbl``."""
    dim = groups * per
    g = torch.Generator(device='cpu').manual_seed(0)
    rnd = (lambda *s: torch.randn(*s, generator=g).to(device))
    x_dbl = rnd(batch, height, width, groups, 2 + per)
    return dict(u=rnd(batch, height, width, groups, per), x_dbl=x_dbl,
                A=-torch.rand(dim, 1, generator=g).to(device) - 0.5, D=rnd(dim),
                bias=rnd(dim) * 0.1)


def layers(x: Dict[str, torch.Tensor]) -> Dict[str, Callable[[], object]]:
    """The timed callables, innermost layer first."""
    dirs = ('lr', 'tb', 'rl', 'bt')
    codes = [0, 1, 2, 3]
    # the channels-first views selective_scan_2d hands the op
    first = (lambda t: t.permute(0, 3, 4, 1, 2))
    dbl = x['x_dbl']
    args = (first(x['u']), first(dbl[..., 2:]), x['A'], first(dbl[..., 0:1]),
            first(dbl[..., 1:2]))
    y, _, ckpt = triton_scan.selective_scan_2d_fwd_triton(*args, codes, x['D'], None, x['bias'],
                                                          True)
    dy = torch.randn_like(y)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

    def public(src):
        return selective_scan_2d(src['u'], src['x_dbl'][..., 2:], src['A'],
                                 src['x_dbl'][..., 0:1], src['x_dbl'][..., 1:2], dirs,
                                 D=src['D'], delta_bias=src['bias'], delta_softplus=True,
                                 channels_last=True)

    dy_cl = torch.randn_like(x['u'])

    def train():
        torch.autograd.backward(public(leaves), dy_cl)

    def train_custom_op():
        fast = library.eager_fast_path
        library.eager_fast_path = (lambda use_triton: False)
        try:
            train()
        finally:
            library.eager_fast_path = fast

    def nograd(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    return {
        'torch.add': lambda: torch.add(x['u'], x['u']),
        'fwd kernel fn': lambda: triton_scan.selective_scan_2d_fwd_triton(
            *args, codes, x['D'], None, x['bias'], True),
        'bwd kernel fn': lambda: triton_scan.selective_scan_2d_bwd_triton(
            dy, None, *args, codes, ckpt, x['D'], None, x['bias'], True),
        'fwd op': nograd(lambda: torch.ops.mmgroupmamba.selective_scan_2d_fwd(
            *args, x['D'], None, x['bias'], codes, True, True, None)),
        'selective_scan_2d': nograd(lambda: public(x)),
        'selective_scan_2d + autograd record': lambda: public(leaves),
        'selective_scan_2d forward + backward': train,
        'selective_scan_2d forward + backward, custom op': train_custom_op,
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_call_us(fn: Callable[[], object], iters: int) -> float:
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync()
    return (time.perf_counter() - t0) / iters * 1e6


def device_us(fn: Callable[[], object], iters: int) -> float:
    """The kernels' GPU time per call (torch.profiler): it must stay well
    under the host time, else the host figure is not the host's. NaN off
    CUDA."""
    if not torch.cuda.is_available():
        return float('nan')
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=200, help='calls per timed loop')
    p.add_argument('--rounds', type=int, default=7, help='interleaved rounds (median)')
    p.add_argument('--shape', default='1,16,8,8',
                   help="batch, channels per group, H, W of the map (default '1,16,8,8')")
    p.add_argument('--profile', type=int, default=0,
                   help='print cProfile\'s top N functions of forward + backward')
    p.add_argument('--device', default='cuda',
                   help="'cuda' (default), or 'cpu' with TRITON_INTERPRET=1 to check that "
                        "every layer runs (its times are the interpreter's, not a figure)")
    args = p.parse_args(argv)
    batch, per, height, width = (int(v) for v in args.shape.split(','))
    x = make_inputs(batch, per, height, width, device=args.device)
    fns = layers(x)
    for fn in fns.values():          # compile and warm every path
        for _ in range(3):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            times[k].append(per_call_us(fn, args.iters))
    name = torch.cuda.get_device_name() if args.device == 'cuda' else args.device
    print(f'device: {name}, torch {torch.__version__}, '
          f'triton {__import__("triton").__version__}, python {sys.version.split()[0]}; '
          f'map (batch, G * per, H, W) = ({batch}, 4 * {per}, {height}, {width}); '
          f'{args.iters} calls x {args.rounds} rounds')
    print('| layer | host µs per call (median) | min | max | kernels\' GPU µs per call |')
    print('|---|---|---|---|---|')
    for k, fn in fns.items():
        v = times[k]
        print(f'| {k} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | '
              f'{device_us(fn, args.iters):.1f} |')
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.iters):
            fns['selective_scan_2d forward + backward']()
        _sync()
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats('tottime').print_stats(args.profile)
        print(s.getvalue())


if __name__ == '__main__':
    main()
