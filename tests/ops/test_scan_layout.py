"""The compiled scan kernels keep a run's steps inside a thread (CPU: a
compile for an H100, sm_90, through ``tools/scan_sass.py``; no GPU).

The kernels' speed rests on Triton laying a [NJ, R, BK] tile channels, then
runs, across lanes and warps, and the R steps of a run inside one thread (see
``_off`` and ``_ties_last`` in ``mmgroupmamba/ops/triton_scan.py``). Triton
derives that layout from its own tie-breaking rule, which changed in 3.7: a
new Triton can silently spread the steps over lanes (with triton 3.8 the
GroupMamba-T stage-1 backward loop grew from 1108 to 2468 instructions). This
test reads the layouts the installed Triton gives the kernels' loads and
stores.
"""
import os
import re
import subprocess
import sys
from typing import Dict, List, Tuple

from scan_utils import ROOT

STAGE1 = (16, 56, 56)  # GroupMamba-T stage 1: 4 groups of 16 channels, 56x56
RUN = 4                # steps a run at stage 1 (the heuristic's R)

_LAYOUT = re.compile(r'^(#blocked\d*) = #ttg\.blocked<\{(.*)\}>', re.M)
_MEMORY_OP = re.compile(r'\b(tt\.load|tt\.store|tt\.atomic_rmw)\b')
_TILE = re.compile(r'tensor<(\d+)x(\d+)x(\d+)x[^,]*?, (#blocked\d*)>')


def _layouts(ttgir: str) -> Dict[str, Dict[str, List[int]]]:
    out = {}
    for name, body in _LAYOUT.findall(ttgir):
        out[name] = {k: [int(v) for v in vals.split(',')]
                     for k, vals in re.findall(r'(\w+) = \[([\d, ]+)\]', body)}
    return out


def _memory_tiles(ttgir: str) -> List[Tuple[str, Tuple[int, int, int], str]]:
    """(op, shape, layout) of every 3-D tile a load or store of the kernel
    takes."""
    return [(op.group(1), (int(a), int(b), int(c)), lay) for line in ttgir.splitlines()
            if (op := _MEMORY_OP.search(line)) for a, b, c, lay in _TILE.findall(line)]


def _steps_across_threads(ttgir: str, run: int) -> List[str]:
    """The loads and map stores whose step axis (the one of ``run``
    elements) is spread over lanes or warps. Not checked: tiles without one
    (per-channel vectors: checkpoints, the carried state) and the stores of
    dB and dC (one value a step, summed over the channels: Triton 3.6 spread
    their steps over warps too, converting the sums once a chunk)."""
    layouts = _layouts(ttgir)
    bad = []
    for op, shape, name in _memory_tiles(ttgir):
        if run not in shape or (op != 'tt.load' and shape[-1] == 1):
            continue
        axis = shape.index(run)
        lay = layouts[name]
        if lay['threadsPerWarp'][axis] != 1 or lay['warpsPerCTA'][axis] != 1:
            bad.append(f'{shape} {name} = {lay}')
    return bad


def _pairs_off_the_low_lanes(ttgir: str, bd: int, run: int) -> List[str]:
    """The loads of [NJ, R, BD] tiles (or their transposes) whose channel
    pairs are not on the low lanes with the runs above them, the layout the
    backward's pair lane sums take (``_pair_lane_sums``: pair p of a run on
    lane p of the BD / 2 lowest, a pair inside a thread)."""
    layouts = _layouts(ttgir)
    bad = []
    for op, shape, name in _memory_tiles(ttgir):
        if op != 'tt.load' or shape[-1] != bd or run not in shape[:2]:
            continue
        lay = layouts[name]
        runs = 1 - shape.index(run)
        if (lay['sizePerThread'][2] != 2 or lay['threadsPerWarp'][2] != bd // 2
                or lay['order'][0] != 2 or lay['threadsPerWarp'][runs] != 64 // bd):
            bad.append(f'{shape} {name} = {lay}')
    return bad


def _compile(tmp_path, *overrides: str, flags: Tuple[str, ...] = ()) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop('TRITON_INTERPRET', None)   # a real compile, for sm_90
    tmp_path.mkdir()
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'scan_sass.py'),
           ','.join(map(str, STAGE1)), '--dump', str(tmp_path), *flags]
    if overrides:
        cmd += ['--set', *overrides]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {p: (tmp_path / f'{p}.ttgir').read_text() for p in ('fwd', 'bwd')}


def test_layout_reader_flags_steps_across_lanes():
    ttgir = ('#blocked = #ttg.blocked<{sizePerThread = [1, 1, 2], threadsPerWarp = [4, 1, 8], '
             'warpsPerCTA = [8, 1, 1], order = [2, 0, 1]}>\n'
             '#blocked1 = #ttg.blocked<{sizePerThread = [1, 1, 2], threadsPerWarp = [1, 4, 8], '
             'warpsPerCTA = [8, 1, 1], order = [2, 1, 0]}>\n'
             '  %1 = tt.load %0, %m : tensor<32x4x16x!tt.ptr<f32>, #blocked>\n'
             '  tt.store %2, %3, %m : tensor<32x4x16x!tt.ptr<f32>, #blocked1>\n'
             '  %4 = tt.load %5 : tensor<4x32x1x!tt.ptr<f32>, #blocked>\n'
             '  tt.store %6, %7 : tensor<32x4x1x!tt.ptr<f32>, #blocked1>\n')   # dB: not checked
    assert len(_memory_tiles(ttgir)) == 4
    assert _steps_across_threads(ttgir.replace('32x4x16', '32x8x16').replace('4x32x1', '8x32x1'),
                                 RUN) == []                            # no axis of 4 steps
    bad = _steps_across_threads(ttgir, RUN)
    assert len(bad) == 2 and '#blocked1' in bad[0] and '(4, 32, 1)' in bad[1]


def test_layout_reader_flags_pairs_off_the_low_lanes():
    ttgir = ('#blocked = #ttg.blocked<{sizePerThread = [1, 1, 2], threadsPerWarp = [4, 1, 8], '
             'warpsPerCTA = [8, 1, 1], order = [2, 0, 1]}>\n'
             '#blocked1 = #ttg.blocked<{sizePerThread = [1, 1, 2], threadsPerWarp = [1, 4, 8], '
             'warpsPerCTA = [1, 8, 1], order = [2, 1, 0]}>\n'
             '#blocked2 = #ttg.blocked<{sizePerThread = [1, 1, 2], threadsPerWarp = [8, 1, 4], '
             'warpsPerCTA = [8, 1, 1], order = [0, 2, 1]}>\n'
             '  %1 = tt.load %0 : tensor<32x4x16x!tt.ptr<f32>, #blocked>\n'
             '  %2 = tt.load %0 : tensor<4x32x16x!tt.ptr<f32>, #blocked1>\n'   # transposed
             '  %3 = tt.load %0 : tensor<32x4x16x!tt.ptr<f32>, #blocked2>\n')  # runs lowest
    bad = _pairs_off_the_low_lanes(ttgir, 16, RUN)
    assert len(bad) == 1 and '#blocked2' in bad[0]


def test_stage1_steps_stay_inside_a_thread(tmp_path):
    """The installed Triton's layouts, on channels-last maps and on the
    GroupMamba layer's own (grouped delta, B and C columns of x_proj's
    output: the kernels' grouped-offset path), and the version rule behind
    them: the memory ops taken the other way spread the steps over lanes."""
    from mmgroupmamba.ops.triton_scan import _ties_last
    for maps, flags in (('channels-last', ()), ('model', ('--model-layouts',))):
        for name, ttgir in _compile(tmp_path / maps, flags=flags).items():
            tiles = [shape for _, shape, _ in _memory_tiles(ttgir) if RUN in shape]
            assert len(tiles) >= 4, (maps, name)            # u, delta, B, C (fwd); + dy (bwd)
            assert _steps_across_threads(ttgir, RUN) == [], (maps, name)
            if name == 'bwd':
                # and the pairs where the backward's lane sums take them (u, delta, dy)
                assert sum(op == 'tt.load' and shape[-1] == STAGE1[0]
                           for op, shape, _ in _memory_tiles(ttgir)) >= 3, maps
                assert _pairs_off_the_low_lanes(ttgir, STAGE1[0], RUN) == [], maps
    other = _compile(tmp_path / 'other', f'MEM_T={int(not _ties_last())}')
    assert all(_steps_across_threads(ttgir, RUN) for ttgir in other.values())
