"""Benchmark the Triton selective scan against the PyTorch reference (GPU).

For each GroupMamba-T stage (batch 128, 4 groups with their own direction and
B/C, N = 1, D + delta_bias + softplus, no z: the shape of the official layer),
the dense-prediction maps (Mask R-CNN 1333x800 and UperNet 512x512, stages
1-4; stages 2-4 are cases 14-19), and each Spatial-Mamba-T stage (one
row-major scan over D = 2C channels in the states mode, C=None), in fp32 and
bf16, prints: our forward/backward time (the 4 groups in one launch), the
reference PyTorch path, ``torch.compile`` of the reference (where it compiles
in reasonable time), the effective bandwidth and its fraction of the measured
device copy bandwidth. Spatial-Mamba rows also time the whole state-fusion
path (scan -> ``StateFusion`` -> ``C h~ + D u``, forward and backward through
autograd) in the "fusion path" column.

Bytes (``anchors-kernels.md`` section 4.6, each tensor read/written once):
    fwd = batch * L * (dim * (2 s + s_o) + 2 G N s)
    bwd = batch * L * (dim * (3 s + 2 s_g) + G N (2 s + 2 * 4))
states mode (fp32 states out, no C): fwd = batch * L * (dim * (2 s + 4 N) + G N s),
bwd = batch * L * (dim * (4 s + 4 N) + G N (s + 4)).

Our times are device times replayed from a CUDA graph (the "with launch" column adds the
Python/Triton launch overhead of an eager call). The "u + delta" column times
``torch.add(u, delta, out=y)`` on the case's own maps: the forward's main bytes
(two maps read, one written) moved in storage order, a measured floor for the
layout. ``--directions`` sets the four groups' directions (default GroupMamba's
lr, tb, rl, bt) and ``--core-only`` drops D, delta_bias and softplus: what the
mix of directions and the per-element extras cost. ``--model-layouts`` gives the
scan the layouts GroupMamba's layer passes it (u channels-last, delta grouped, B
and C columns of x_proj's grouped output); ``--channels-last`` and ``--grouped-maps`` are
the all-channels-last and all-grouped alternatives.

Usage: python tools/benchmark_scan.py [--out results.md] [--no-reference] [--cases 0,6]
"""
import argparse
import json
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch._functorch.config
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, __file__.rsplit('/tools/', 1)[0] if '/tools/' in __file__ else '.')
from mmgroupmamba.ops import triton_scan  # noqa: E402
from mmgroupmamba.ops.reference import (CHUNK, DIRECTIONS, direction_code,  # noqa: E402
                                        selective_scan_2d_ref)

DIRS = [0, 1, 2, 3]  # lr, tb, rl, bt: one per group
CASES = [
    # name, batch, dim per group, H, W, official 1-group fwd/bwd us (fp32, H100), groups, states
    ('GroupMamba-T stage 1', 128, 16, 56, 56, 70.2, 190.8, 4, False),
    ('GroupMamba-T stage 2', 128, 32, 28, 28, 42.1, 133.9, 4, False),
    ('GroupMamba-T stage 3', 128, 87, 14, 14, 31.3, 112.5, 4, False),
    ('GroupMamba-T stage 4', 128, 112, 7, 7, 30.7, 101.8, 4, False),
    ('Mask R-CNN 1333x800 stage 1', 2, 16, 200, 334, None, None, 4, False),
    ('UperNet 512x512 stage 1', 4, 16, 128, 128, None, None, 4, False),
    ('Spatial-Mamba-T stage 1 (states)', 128, 128, 56, 56, None, None, 1, True),
    ('Spatial-Mamba-T stage 2 (states)', 128, 256, 28, 28, None, None, 1, True),
    ('Spatial-Mamba-T stage 3 (states)', 128, 512, 14, 14, None, None, 1, True),
    ('Spatial-Mamba-T stage 4 (states)', 128, 1024, 7, 7, None, None, 1, True),
    # GroupMamba-B's groups (embed dims 96, 192, 424, 512): no official figure
    ('GroupMamba-B stage 1', 128, 24, 56, 56, None, None, 4, False),
    ('GroupMamba-B stage 2', 128, 48, 28, 28, None, None, 4, False),
    ('GroupMamba-B stage 3', 128, 106, 14, 14, None, None, 4, False),
    ('GroupMamba-B stage 4', 128, 128, 7, 7, None, None, 4, False),
    # GroupMamba-T's later stages on the dense maps (few rows: the split path)
    ('Mask R-CNN 1333x800 stage 2', 2, 32, 100, 167, None, None, 4, False),
    ('Mask R-CNN 1333x800 stage 3', 2, 87, 50, 84, None, None, 4, False),
    ('Mask R-CNN 1333x800 stage 4', 2, 112, 25, 42, None, None, 4, False),
    ('UperNet 512x512 stage 2', 4, 32, 64, 64, None, None, 4, False),
    ('UperNet 512x512 stage 3', 4, 87, 32, 32, None, None, 4, False),
    ('UperNet 512x512 stage 4', 4, 112, 16, 16, None, None, 4, False),
]


def copy_bandwidth() -> float:
    """Measured device copy bandwidth (bytes read + written per second)."""
    x = torch.empty(1 << 28, dtype=torch.float32, device='cuda')  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode='median')
    return 2 * x.numel() * 4 / (ms * 1e-3)


def make(batch: int, per: int, height: int, width: int, dtype: torch.dtype,
         groups: int = 4, channels_last: bool = False, grouped: bool = False,
         model: bool = False, device: str = 'cuda') -> Dict:
    """Scan inputs; ``channels_last``: the maps are permuted views of
    (batch, H, W, dim) and (batch, H, W, G, N) buffers; ``grouped``: u and
    delta are grouped maps (batch, G, per, H, W), views of a (G, batch, H, W,
    per) buffer (each group's map contiguous), B and C as with
    ``channels_last``; ``model``: as GroupMamba's layer passes them (see
    ``GroupedDirectionalSSM.forward``): u channels-last, delta grouped, B
    and C columns of one (G, batch, H, W, R + 2N) buffer (x_proj's output, R
    = ceil(per / 16) dt columns first). ``device``: where they are made
    (``tools/scan_sass.py`` compiles the kernels for CPU tensors)."""
    n_state = 1
    dim = groups * per
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0):
        if channels_last:  # allocate (b, H, W, ...) and view it as (b, ..., H, W)
            buf = torch.randn(shape[0], *shape[-2:], *shape[1:-2], device=device, generator=g)
            return (buf * scale).to(dtype).permute(0, *range(3, len(shape)), 1, 2)
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)

    def rnd_map(scale=1.0, grouped=grouped):
        if grouped:
            buf = torch.randn(groups, batch, height, width, per, device=device, generator=g)
            return (buf * scale).to(dtype).permute(1, 0, 4, 2, 3)
        return rnd(batch, dim, height, width, scale=scale)
    channels_last = channels_last or grouped or model
    if model:
        rank = -(-per // 16)
        x_dbl = torch.randn(groups, batch, height, width, rank + 2 * n_state, device=device,
                            generator=g).to(dtype).permute(1, 0, 4, 2, 3)
        B, C = x_dbl[:, :, rank:rank + n_state], x_dbl[:, :, rank + n_state:]
        u, delta = rnd_map(grouped=False).unflatten(1, (groups, per)), rnd_map(0.5, True)
    else:
        u, delta = rnd_map(), rnd_map(scale=0.5)
        B, C = (rnd(batch, groups, n_state, height, width) for _ in range(2))
    return dict(u=u, delta=delta,
                A=-(torch.rand(dim, n_state, device=device, generator=g) + 0.2), B=B, C=C,
                D=torch.randn(dim, device=device, generator=g),
                delta_bias=torch.randn(dim, device=device, generator=g) * 0.3)


def bytes_moved(batch, dim, length, s, groups=4, n_state=1, states=False):
    if states:
        fwd = batch * length * (dim * (2 * s + 4 * n_state) + groups * n_state * s)
        bwd = batch * length * (dim * (4 * s + 4 * n_state) + groups * n_state * (s + 4))
    else:
        fwd = batch * length * (dim * 3 * s + 2 * groups * n_state * s)
        bwd = batch * length * (dim * 5 * s + groups * n_state * (2 * s + 8))
    return fwd, bwd


def fusion_path_times(t: Dict) -> Dict[str, float]:
    """Spatial-Mamba's SSM core as the model runs it: states (Triton) ->
    StateFusion -> C h~ + D u; forward, and backward of all of it (us)."""
    from mmgroupmamba.models.spatialmamba import StateFusion
    from mmgroupmamba.ops import selective_scan_2d
    dim = t['u'].shape[1]
    fusion = StateFusion(dim).cuda()
    leaves = {k: t[k].detach().requires_grad_(True) for k in ('u', 'delta', 'B', 'C')}

    def path():
        hs = selective_scan_2d(leaves['u'], leaves['delta'], t['A'], leaves['B'], None, ('lr',),
                               delta_bias=t['delta_bias'], delta_softplus=True)
        return (fusion(hs) * leaves['C']).sum(2) + leaves['u'] * t['D'].view(-1, 1, 1)

    def fwd():
        with torch.no_grad():
            return path()
    y = path()
    dy = torch.randn_like(y)

    def bwd():
        torch.autograd.grad(y, list(leaves.values()) + list(fusion.parameters()), dy,
                            retain_graph=True)
    return {'fwd': bench(fwd), 'bwd': bench(bwd)}


def bench(fn: Callable[[], object]) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode='median') * 1e3  # us


def bench_device(fn: Callable[[], object]) -> float:
    """Device time of our kernels (us): replayed from a CUDA graph, so the
    Python/Triton launch overhead (tens of us per call) is not counted, as
    it is not for a CUDA extension's kernel timed alone."""
    return do_bench_cudagraph(fn, rep=200, return_mode='median') * 1e3


def ref_times(t: Dict, dirs: List[int], extras: Dict, compiled: bool
              ) -> Dict[str, Optional[float]]:
    """Reference forward and forward+backward-only times (us), or None;
    ``extras``: the D, delta_bias and delta_softplus arguments."""
    f = selective_scan_2d_ref
    # the timing loop reruns the backward on one graph
    torch._functorch.config.donated_buffer = False
    if compiled:
        f = torch.compile(selective_scan_2d_ref)
    leaves = {k: v.detach().requires_grad_(True) for k, v in t.items()
              if k in ('u', 'delta', 'A', 'B', 'C') or extras.get(k) is not None}
    soft = extras['delta_softplus']

    def fwd():
        with torch.no_grad():
            return f(t['u'], t['delta'], t['A'], t['B'], t['C'], dirs, **extras)
    y = f(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], dirs,
          D=leaves.get('D'), delta_bias=leaves.get('delta_bias'), delta_softplus=soft)
    dy = torch.randn_like(y)

    def bwd():
        torch.autograd.grad(y, list(leaves.values()), dy, retain_graph=True)
    return {'fwd': bench(fwd), 'bwd': bench(bwd)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=None, help='write the markdown table here')
    parser.add_argument('--json', default=None, help='write raw numbers here')
    parser.add_argument('--no-reference', action='store_true')
    parser.add_argument('--only', type=int, default=None, help='run one (case, dtype) index')
    parser.add_argument('--warm-only', action='store_true',
                        help='compile the kernels of --only and exit (fills the Triton cache)')
    parser.add_argument('--warm-parallel', action='store_true',
                        help='first compile every case in parallel subprocesses')
    parser.add_argument('--configs', default=None,
                        help="tile configs to sweep, 'BD,R,NJ,warps[,bwd warps[,CPS]];...' or "
                             "'KEY=VAL,...;...' with triton_scan.CONFIG_OVERRIDE's keys (e.g. "
                             "'CPS=4;CPS=8') (default: the heuristic)")
    parser.add_argument('--fp32-only', action='store_true')
    # The maps' layouts, one at most (the default: contiguous maps).
    layouts = parser.add_mutually_exclusive_group()
    for flag, text in (
            ('--channels-last', 'channels-last maps (permuted views); B and C (batch, H, W, G, N)'),
            ('--model-layouts', 'the GroupMamba layer\'s layouts: u channels-last, delta grouped, '
                                'B and C columns of x_proj\'s (G, batch, H, W, R + 2N) output '
                                '(states-mode cases keep --channels-last maps)'),
            ('--grouped-maps', 'u and delta as grouped maps, each group\'s map contiguous (a '
                               '(G, batch, H, W, per) buffer; states-mode cases keep '
                               '--channels-last maps)')):
        layouts.add_argument(flag, action='store_true', help=text)
    parser.add_argument('--directions', default='lr,tb,rl,bt',
                        help="the four groups' scan directions, comma-separated (default "
                             "GroupMamba's 'lr,tb,rl,bt'; e.g. 'lr,lr,lr,lr' to time one "
                             "direction); the states-mode cases keep their one 'lr' scan")
    parser.add_argument('--core-only', action='store_true',
                        help='scan without D, delta_bias and softplus (what the recurrence '
                             'alone costs); the states-mode cases then skip the fusion path, '
                             'which runs as the model does')
    parser.add_argument('--check', action='store_true',
                        help='also report the forward\'s relative error against the reference')
    parser.add_argument('--cases', default=None, help='comma-separated case indices (default: all)')
    parser.add_argument('--batch', type=_positive, default=None,
                        help='run every case at this batch instead of its own (per-GPU '
                             'batches, e.g. the split threshold\'s table in docs/benchmarks.md); '
                             'the official anchors, timed at the cases\' batch, are then left out')
    parser.add_argument('--compile-max-chunks', type=int, default=8,
                        help='skip torch.compile of the reference above this many chunks '
                             '(its chunk loop is unrolled; compile time grows with it)')
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    group_dirs = [direction_code(d) for d in args.directions.split(',')]
    if len(group_dirs) != 4:
        parser.error(f'--directions: expected four comma-separated directions (one per '
                     f'group), got {args.directions!r}')

    cases = CASES if args.cases is None else [CASES[int(i)] for i in args.cases.split(',')]
    configs = [None] if args.configs is None else [
        {k: int(v) for k, v in (kv.split('=') for kv in c.split(','))} if '=' in c
        else dict(zip(('BD', 'R', 'NJ', 'num_warps', 'num_warps_bwd', 'CPS'),
                      map(int, c.split(',')))) for c in args.configs.split(';')]
    jobs = [(c, dt, cfg) for c in cases
            for dt in ((torch.float32,) if args.fp32_only else (torch.float32, torch.bfloat16))
            for cfg in configs]
    if args.warm_parallel:
        extra = [a for a in sys.argv[1:] if a != '--warm-parallel']
        procs = [subprocess.Popen([sys.executable, __file__, *extra, '--only', str(i),
                                   '--warm-only']) for i in range(len(jobs))]
        for p in procs:
            p.wait()
    if args.only is not None:
        jobs = [jobs[args.only]]
    props = torch.cuda.get_device_properties(0)
    bw = 3.0e12 if args.warm_only else copy_bandwidth()
    head = (f'device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, '
            f'triton {triton.__version__}; measured copy bandwidth {bw / 1e9:.0f} GB/s; maps '
            + ('grouped' if args.grouped_maps else 'the model\'s' if args.model_layouts
               else 'channels-last' if args.channels_last else 'contiguous')
            + f'; directions {args.directions}'
            + (f'; batch {args.batch} for every case' if args.batch is not None else '')
            + ('; core only (no D, delta_bias, softplus)' if args.core_only else ''))
    print(head, flush=True)
    rows: List[Dict] = []
    for (name, batch, per, height, width, off_f, off_b, groups, states), dtype, override in jobs:
        if args.batch is not None and args.batch != batch:
            batch, off_f, off_b = args.batch, None, None
        triton_scan.CONFIG_OVERRIDE.clear()
        triton_scan.CONFIG_OVERRIDE.update(override or {})
        t = make(batch, per, height, width, dtype, groups, args.channels_last,
                 args.grouped_maps and not states, args.model_layouts and not states)
        dim, length = groups * per, height * width
        dirs = DIRS[:groups] if states else group_dirs
        extras = (dict(D=None, delta_bias=None, delta_softplus=False) if args.core_only
                  else dict(D=t['D'], delta_bias=t['delta_bias'], delta_softplus=True))
        if args.core_only:
            # without softplus, a negative delta would grow the state to inf
            t['delta'] = t['delta'].abs()
        C, D = (None, None) if states else (t['C'], extras['D'])
        cfg, cfg_b = (triton_scan.scan_config(batch, dim, groups, 1, height, width, dirs, True,
                                              backward=b, states=states) for b in (False, True))
        fwd = lambda: triton_scan.selective_scan_2d_fwd_triton(  # noqa: E731
            t['u'], t['delta'], t['A'], t['B'], C, dirs, D, None, extras['delta_bias'],
            extras['delta_softplus'])
        y, last, ckpt = fwd()
        dy = torch.randn_like(y)
        bwd = lambda: triton_scan.selective_scan_2d_bwd_triton(  # noqa: E731
            dy, None, t['u'], t['delta'], t['A'], t['B'], C, dirs, ckpt, D, None,
            extras['delta_bias'], extras['delta_softplus'])
        bwd()
        torch.cuda.synchronize()
        if args.warm_only:
            return
        row = dict(case=name, dtype=str(dtype).replace('torch.', ''), batch=batch, dim=dim,
                   L=length,
                   cfg=dict({k: cfg[k] for k in ('BD', 'R', 'NJ', 'NCH', 'NSEG', 'num_warps')},
                            BD_bwd=cfg_b['BD'], num_warps_bwd=cfg_b['num_warps'],
                            num_warps_single=cfg.get('num_warps_single')),
                   fwd_us=bench_device(fwd), bwd_us=bench_device(bwd),
                   fwd_us_with_launch=bench(fwd), bwd_us_with_launch=bench(bwd),
                   official_fwd_us=off_f, official_bwd_us=off_b, override=override,
                   directions=[DIRECTIONS[c] for c in dirs], core_only=args.core_only)
        if not states:
            # The forward's main bytes moved by an elementwise op: u and delta
            # read and y written once, in the maps' storage order (no scan
            # order): the floor this layout and these bytes allow.
            out = torch.empty_like(y)
            row['elementwise_us'] = bench_device(
                lambda: torch.add(t['u'], t['delta'], out=out))
        s = 4 if dtype == torch.float32 else 2
        bf, bb = bytes_moved(batch, dim, length, s, groups, states=states)
        if states and not args.core_only:  # the model's path, with its softplus and D
            row['fusion_path'] = fusion_path_times(t)
        if args.check and not states:
            with torch.no_grad():
                want = selective_scan_2d_ref(t['u'], t['delta'], t['A'], t['B'], t['C'], dirs,
                                             **extras).float()
            row['fwd_rel_err'] = ((y.float() - want).norm() / want.norm()).item()
        row['fwd_GBps'] = bf / (row['fwd_us'] * 1e-6) / 1e9
        row['bwd_GBps'] = bb / (row['bwd_us'] * 1e-6) / 1e9
        row['fwd_frac'] = row['fwd_GBps'] * 1e9 / bw
        row['bwd_frac'] = row['bwd_GBps'] * 1e9 / bw
        row['fwd_floor_us'] = bf / bw * 1e6
        row['bwd_floor_us'] = bb / bw * 1e6
        if not args.no_reference:
            for key, compiled in (('ref', False), ('compiled_ref', True)):
                if states:
                    row[key] = 'not run (y-mode reference only)'
                    continue
                n_chunks = -(-length // CHUNK)
                if compiled and (n_chunks > args.compile_max_chunks or dtype != torch.float32):
                    row[key] = f'skipped ({n_chunks} chunks, {row["dtype"]})'
                    continue
                try:
                    t0 = time.time()
                    row[key] = ref_times(t, dirs, extras, compiled)
                    row[key + '_wall_s'] = time.time() - t0
                except torch.OutOfMemoryError:
                    row[key] = 'OOM'
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)

    def fmt(v):
        if isinstance(v, dict):
            return f"{v['fwd']:.0f} / {v['bwd']:.0f}"
        return '–' if v is None else str(v)
    lines = [head, '',
             '| case | dtype | cfg (BD fwd/bwd, R, NJ, segs, warps fwd/bwd; (n): fwd warps '
             'without channel pairs) | fwd µs | bwd µs '
             '| fwd / bwd µs with launch | fwd floor / bwd floor µs | u + delta µs '
             '| fwd GB/s (frac) | bwd GB/s (frac) | official 1 group fwd / bwd µs '
             '| reference fwd / bwd µs | compiled reference fwd / bwd µs '
             '| fusion path fwd / bwd µs |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']

    def single(c):  # forward warps where the maps allow no channel pairs
        return '' if c.get('num_warps_single') is None else f" ({c['num_warps_single']})"
    for r in rows:
        c = r['cfg']
        off = ('–' if r['official_fwd_us'] is None
               else f"{r['official_fwd_us']} / {r['official_bwd_us']}")
        ew = '–' if r.get('elementwise_us') is None else f"{r['elementwise_us']:.1f}"
        lines.append(
            f"| {r['case']} | {r['dtype']} "
            f"| {c['BD']}/{c['BD_bwd']}, {c['R']}, {c['NJ']}, {c['NSEG']}, "
            f"{c['num_warps']}{single(c)}/{c['num_warps_bwd']} "
            f"| {r['fwd_us']:.1f} | {r['bwd_us']:.1f} "
            f"| {r['fwd_us_with_launch']:.0f} / {r['bwd_us_with_launch']:.0f} "
            f"| {r['fwd_floor_us']:.0f} / {r['bwd_floor_us']:.0f} "
            f"| {ew} "
            f"| {r['fwd_GBps']:.0f} ({r['fwd_frac']:.0%}) "
            f"| {r['bwd_GBps']:.0f} ({r['bwd_frac']:.0%}) "
            f"| {off} | {fmt(r.get('ref'))} | {fmt(r.get('compiled_ref'))} "
            f"| {fmt(r.get('fusion_path'))} |")
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
