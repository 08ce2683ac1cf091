"""Compile the scan kernels for an H100 (sm_90) without a GPU and count their
SASS: registers, stack (spills), instructions in all and in the chunk loop,
and optionally the loop's instructions per source line.

The kernels are compiled as ``tools/benchmark_scan.py`` launches them (the
same heuristic tiles, strides and flags, and its maps: channels-last, or with
``--grouped-maps`` / ``--model-layouts`` those of its options of the same
names): the host functions run on CPU tensors of the case's shape while a
stand-in Triton driver reports an sm_90 target and the launches are turned
into compiles. The counts match the kernels Triton builds on the H100 when the
Triton versions agree (the benchmarks used triton 3.6: install that one to
compare, e.g. ``pip install triton==3.6.0`` beside a CPU torch).

Usage:
    python tools/scan_sass.py 16,56,56                  # GroupMamba-T stage 1, both passes
    python tools/scan_sass.py 87,14,14 --pass bwd --lines 25
    python tools/scan_sass.py 87,14,14 --pass fwd --waits   # loads waited on too early
    python tools/scan_sass.py 87,14,14 --model-layouts       # the GroupMamba layer's maps
    python tools/scan_sass.py 24,56,56 --dtype bfloat16 --set BD=8 --dump /tmp/sass  # + IR
CASE is ``per,H,W`` (channels per group of 4 groups, map size).
"""
import argparse
import os
import re
import subprocess
import sys
import types
from collections import Counter, defaultdict
from typing import Dict, List, Tuple

import torch
import triton
from triton.backends.compiler import GPUTarget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/: benchmark_scan
import benchmark_scan  # noqa: E402
BIN = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
_INSTR = re.compile(r'\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)')


class _Sm90Driver:
    """The parts of Triton's driver a compile asks for: an sm_90 target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget('cuda', 90, 32)

    def get_active_torch_device(self):
        return torch.device('cpu')


class _CompileOnly:
    """Stands in for a kernel: ``k[grid](...)`` compiles (no launch) and
    keeps the main pass's kernel (not the split path's summary pass), with
    the arguments the host passed it."""

    def __init__(self, kernel, name: str, out: Dict):
        self.kernel, self.name, self.out = kernel, name, out

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if not kwargs.get('SUMMARY', False):
                self.out[self.name] = (self.kernel.run(*args, grid=grid, warmup=True, **kwargs),
                                       kwargs, args)
        return launch


class _Skipped:
    """Stands in for a kernel these tools do not count (the backward's final
    sum over programs): ``k[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


DIRS = [0, 1, 2, 3]  # GroupMamba's lr, tb, rl, bt, one per group
LAYOUTS = ('channels-last', 'grouped', 'model')


def case_tensors(per: int, height: int, width: int, batch: int, layout: str,
                 dtype: torch.dtype, device: str = 'cpu'
                 ) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """The scan's inputs of a case as ``tools/benchmark_scan.py`` makes them
    (its ``make``) for ``layout`` (one of :data:`LAYOUTS`, its
    ``--channels-last``, ``--grouped-maps`` and ``--model-layouts`` maps),
    plus dy laid out like y (that is, like u); and the keyword arguments of
    the scan's functions (D, delta_bias, softplus)."""
    t = benchmark_scan.make(batch, per, height, width, dtype, 4, channels_last=True,
                            grouped=layout == 'grouped', model=layout == 'model', device=device)
    t['dy'] = torch.randn_like(t['u'])
    kw = dict(D=t.pop('D'), delta_bias=t.pop('delta_bias'), delta_softplus=True)
    return t, kw


def compile_case(per: int, height: int, width: int, batch: int, which: str, layout: str,
                 dtype: torch.dtype, override: Dict[str, int]) -> Dict:
    """Compile the main pass's kernels of a case for sm_90 (no GPU): {'fwd' /
    'bwd': (compiled kernel, constexpr keyword arguments, positional
    arguments)}. Patches the process's Triton driver and ``triton_scan``:
    run it in a process of its own."""
    triton.runtime.driver.set_active(_Sm90Driver())
    torch.cuda.get_device_properties = lambda *a: types.SimpleNamespace(
        multi_processor_count=132)
    torch.cuda.current_device = lambda: 0
    from mmgroupmamba.ops import triton_scan as ts
    config = ts.scan_config
    # the heuristic's GPU branch for CPU tensors
    ts.scan_config = (lambda b, d, g, n, h, w, codes, on_gpu, *a, **k:
                      config(b, d, g, n, h, w, codes, True, *a, **k))
    out: Dict = {}
    ts._fwd_kernel = _CompileOnly(ts._fwd_kernel, 'fwd', out)
    ts._bwd_kernel = _CompileOnly(ts._bwd_kernel, 'bwd', out)
    ts._sum_partials_kernel = _Skipped()
    ts.CONFIG_OVERRIDE.update(override)
    t, kw = case_tensors(per, height, width, batch, layout, dtype)
    args = (t['u'], t['delta'], t['A'], t['B'], t['C'], DIRS)
    if which in ('fwd', 'both'):
        ts.selective_scan_2d_fwd_triton(*args, **kw)
    if which in ('bwd', 'both'):
        ckpt = torch.empty(ts.ckpt_shape(t['u'], t['B'], DIRS))
        ts.selective_scan_2d_bwd_triton(t['dy'], None, *args, ckpt, **kw)
    return out


def loop_body(sass: str) -> List[str]:
    """The SASS lines of the longest backward branch's body (the chunk loop),
    with the source-line markers of ``nvdisasm -g``."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines)
              if (m := re.match(r'\.(L_x_\d+):', l))}
    span: Tuple[int, int] = (0, 0)
    for i, l in enumerate(lines):
        m = re.search(r'BRA\s+(?:`\()?\.?(L_x_\d+)', l)
        if m and m.group(1) in labels and labels[m.group(1)] < i \
                and i - labels[m.group(1)] > span[1] - span[0]:
            span = (labels[m.group(1)], i + 1)
    return lines[span[0]:span[1]]


def line_profile(body: List[str], top: int) -> None:
    """Instructions per source line of the loop, most first, with opcodes."""
    cur, count, ops = '?', Counter(), defaultdict(Counter)
    for l in body:
        m = re.search(r'## File "([^"]+)", line (\d+)', l)
        if m:
            cur = f'{m.group(1)}:{m.group(2)}'
            continue
        m = _INSTR.match(l)
        if m:
            count[cur] += 1
            ops[cur][m.group(2).split('.')[0]] += 1
    for key, n in count.most_common(top):
        path, line = key.rsplit(':', 1)
        try:
            with open(path) as f:
                text = f.read().splitlines()[int(line) - 1].strip()[:60]
        except (OSError, IndexError, ValueError):
            text = ''
        print(f'  {n:5d} {os.path.basename(path)}:{line:5s} {text:60s} '
              f'{dict(ops[key].most_common(4))}')


def exposed_loads(hex_sass: str) -> List[str]:
    """Loop instructions that wait on a scoreboard while a global load issued
    earlier in the same iteration is counted on it, so that the iteration
    waits out that load's latency (ptxas shares six scoreboards among the
    loads, the MUFU results and shared memory). Read from the control bits
    that ``nvdisasm -hex`` prints as each instruction's second word (sm_70
    and later: from bit 41, stall 4 bits, yield 1, write barrier 3, read
    barrier 3, wait mask 6; barrier 7 is none). Loads pending from the
    previous iteration (the prefetch) are not counted: their wait is due."""
    lines = hex_sass.splitlines()
    high_word = {re.search(r'/\*([0-9a-f]{4})\*/', l).group(1):
                 int(re.search(r'/\* (0x[0-9a-f]{16}) \*/', lines[i + 1]).group(1), 16)
                 for i, l in enumerate(lines) if _INSTR.match(l)}
    pending: Dict[int, List[int]] = defaultdict(list)
    found, pos = [], 0
    for l in loop_body(hex_sass):
        m = _INSTR.match(l)
        if not m:
            continue
        high = high_word[re.search(r'/\*([0-9a-f]{4})\*/', l).group(1)]
        write_barrier, wait = (high >> 46) & 7, (high >> 52) & 63
        for sb in range(6):
            if wait >> sb & 1:
                if pending[sb]:
                    text = l.split('*/', 1)[1].split(';')[0].strip()
                    found.append(f'waits on SB{sb} at {pos}: {text} (loads issued at '
                                 f'{pending[sb]})')
                pending[sb] = []
        if m.group(2).startswith('LDG') and write_barrier != 7:
            pending[write_barrier].append(pos)
        pos += 1
    return found


def add_case_args(parser: argparse.ArgumentParser) -> None:
    """The arguments naming a case to compile (see :func:`case_args`)."""
    parser.add_argument('case', help='per,H,W (channels per group, map size)')
    maps = parser.add_mutually_exclusive_group()
    maps.add_argument('--grouped-maps', action='store_true',
                      help='u, delta, dy as grouped maps (as benchmark_scan --grouped-maps)')
    maps.add_argument('--model-layouts', action='store_true',
                      help="the GroupMamba layer's layouts (as benchmark_scan --model-layouts)")
    parser.add_argument('--dtype', choices=('float32', 'bfloat16', 'float16'), default='float32')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VAL',
                        help="triton_scan.CONFIG_OVERRIDE entries, e.g. BD=8 num_warps_bwd=2")


def case_args(args: argparse.Namespace
              ) -> Tuple[Tuple[int, int, int], str, Dict[str, int]]:
    """(per, H, W), the maps' layout (see :func:`case_tensors`) and the config
    overrides of :func:`add_case_args`'s arguments."""
    per, height, width = (int(v) for v in args.case.split(','))
    layout = 'grouped' if args.grouped_maps else 'model' if args.model_layouts else LAYOUTS[0]
    return ((per, height, width), layout,
            {k: int(v) for k, v in (s.split('=') for s in args.set)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_case_args(parser)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--pass', dest='which', choices=('fwd', 'bwd', 'both'), default='both')
    parser.add_argument('--lines', type=int, default=0,
                        help='print the loop\'s N source lines with the most instructions')
    parser.add_argument('--waits', action='store_true',
                        help='list the loop\'s waits on loads issued in the same iteration '
                             '(see exposed_loads)')
    parser.add_argument('--dump', default=None,
                        help='write each kernel\'s SASS and Triton GPU IR (its layouts) to '
                             'DIR/NAME.sass and DIR/NAME.ttgir')
    args = parser.parse_args()
    (per, height, width), layout, override = case_args(args)
    kernels = compile_case(per, height, width, args.batch, args.which, layout,
                           getattr(torch, args.dtype), override)
    print(f'triton {triton.__version__}, sm_90, case {args.case} batch {args.batch} '
          f'{args.dtype}, {layout} maps')
    for name, (kernel, kw, _) in kernels.items():
        path = os.path.join(args.dump or '/tmp', f'scan_{name}.cubin')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(kernel.asm['cubin'])
        res = subprocess.run([os.path.join(BIN, 'cuobjdump'), '-res-usage', path],
                             capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, 'nvdisasm'), '-c', '-g', path],
                              capture_output=True, text=True, check=True).stdout
        body = loop_body(sass)
        n_all = sum(1 for l in sass.splitlines() if _INSTR.match(l))
        n_loop = sum(1 for l in body if _INSTR.match(l))
        flags = {k: kw[k] for k in ('BD', 'R', 'NJ', 'num_warps', 'SA', 'EVEN', 'GROUPED', 'VEC',
                                    'SHIFT')}
        regs = re.search(r'REG:(\d+)', res).group(1)
        stack = re.search(r'STACK:(\d+)', res).group(1)
        print(f'{name}: registers {regs}, stack {stack} B, instructions {n_all}, '
              f'chunk loop {n_loop}; {flags}')
        if args.lines:
            line_profile(body, args.lines)
        if args.waits:
            hex_sass = subprocess.run([os.path.join(BIN, 'nvdisasm'), '-c', '-hex', path],
                                      capture_output=True, text=True, check=True).stdout
            for w in exposed_loads(hex_sass):
                print('  ' + w)
        if args.dump:
            with open(os.path.join(args.dump, f'{name}.sass'), 'w') as f:
                f.write(sass)
            with open(os.path.join(args.dump, f'{name}.ttgir'), 'w') as f:
                f.write(kernel.asm['ttgir'])


if __name__ == '__main__':
    main()
