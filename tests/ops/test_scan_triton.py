"""Triton kernels vs the float64 reference: forward, every gradient, layouts,
directions, chunk boundaries and the split-L path.

Runs under TRITON_INTERPRET=1 on CPU by default (tests/conftest.py); with
``pytest tests/ops --gpu`` the same tests run compiled on CUDA.
"""
import pytest
import torch
from scan_utils import GRAD_NAMES, PassThroughMode, make_inputs, rel_err, run_scan

from mmgroupmamba.ops import selective_scan, selective_scan_2d

TOL = 1e-4  # relative (norm) error, fp32


def _check(inp, dirs, softplus, tol=TOL, states=False, dy_like_y=False):
    y, last, grads = run_scan(inp, dirs, softplus, backend='triton', states=states,
                              dy_like_y=dy_like_y)
    y64, last64, grads64 = run_scan(inp, dirs, softplus, backend=None, reference64=True,
                                    states=states)
    if states:  # (batch, dim, N, H, W) fp32, contiguous
        batch, dim, height, width = inp['u'].shape
        assert y.shape == (batch, dim, inp['B'].shape[2], height, width) and y.is_contiguous()
        assert y.dtype == torch.float32 and set(grads) == {'u', 'delta', 'A', 'B', 'delta_bias'}
    else:  # y takes u's layout (u's own strides when u is dense)
        assert y.dtype == inp['u'].dtype and y.stride() == torch.empty_like(inp['u']).stride()
    errs = {'y': rel_err(y.cpu(), y64), 'last': rel_err(last.cpu(), last64)}
    for k, g in grads.items():
        assert g is not None and g.shape == inp[k].shape, k
        errs['d' + k] = rel_err(g.cpu(), grads64[k])
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f'relative errors over {tol}: {bad}'


# (batch, dim, groups, N, H, W, directions, D, z, bias, softplus)
CASES = [
    (2, 8, 2, 1, 3, 5, ('lr', 'tb'), True, True, True, True),
    (1, 8, 4, 1, 5, 4, ('lr', 'tb', 'rl', 'bt'), True, False, True, True),
    (1, 4, 1, 4, 3, 3, ('bt',), False, True, False, False),
    (2, 6, 1, 16, 2, 3, ('rl',), True, False, True, True),
    (1, 12, 2, 4, 6, 2, ('tb', 'rl'), False, False, False, True),   # 6 channels/group: 2 tiles, atomics
    (1, 4, 2, 1, 1, 1, ('lr', 'bt'), True, True, True, True),       # L = 1
    (2, 9, 3, 1, 4, 3, ('rl', 'tb', 'lr'), True, False, True, True),  # odd channel count
]


@pytest.mark.parametrize('case', CASES, ids=[f'case{i}' for i in range(len(CASES))])
def test_kernels_match_reference(case, kernel_device):
    batch, dim, groups, n, h, w, dirs, with_d, with_z, with_bias, sp = case
    inp = make_inputs(batch, dim, groups, n, h, w, with_d, with_z, with_bias, device=kernel_device)
    _check(inp, dirs, sp)


@pytest.mark.parametrize('length', [1, 15, 16, 17, 37])
def test_chunk_boundaries_1d(length, kernel_device, scan_override):
    """1D scans whose length straddles the chunk boundary (4 runs of 4 steps)
    and ends inside a padded run."""
    scan_override(R=4, NJ=4, BD=4)
    inp = make_inputs(2, 4, 1, 1, 1, length, device=kernel_device, seed=length)
    _check(inp, ('lr',), True)


@pytest.mark.parametrize('cps', [1, 2])
def test_split_path(cps, kernel_device, scan_override):
    """Segments of 1-2 chunks run by different programs (summary + carry)."""
    scan_override(R=2, NJ=2, BD=4, CPS=cps)
    inp = make_inputs(1, 8, 4, 2 if cps == 2 else 1, 4, 5, device=kernel_device, seed=cps)
    _check(inp, ('lr', 'tb', 'rl', 'bt'), True)


# (batch, dim, groups, N, H, W, directions, split segments): the states mode
# (no C: Spatial-Mamba), its backward for N > 1 too, the split path, L = 1.
STATE_CASES = [
    (2, 8, 1, 1, 4, 5, ('lr',), None),
    (1, 8, 2, 4, 3, 4, ('lr', 'bt'), None),
    (1, 4, 1, 2, 4, 5, ('tb',), 1),
    (1, 4, 1, 1, 1, 1, ('lr',), None),
]


@pytest.mark.parametrize('case', STATE_CASES, ids=[f'states{i}' for i in range(len(STATE_CASES))])
def test_states_mode_matches_reference(case, kernel_device, scan_override):
    batch, dim, groups, n, h, w, dirs, cps = case
    if cps is not None:
        scan_override(R=2, NJ=2, BD=4, CPS=cps)
    inp = make_inputs(batch, dim, groups, n, h, w, device=kernel_device, seed=n + h)
    _check(inp, dirs, True, states=True)


@pytest.mark.parametrize('layout, dy_like_y', [('channels_last', False), ('channels_last', True),
                                              ('strided', False)])
def test_layouts(layout, dy_like_y, kernel_device, monkeypatch):
    """Map layouts, forward and every gradient against float64. Channels-last
    maps with a channels-last output gradient take the tiles with the steps
    inside a thread in both passes (GroupMamba's case); with a contiguous
    gradient the backward takes the other tile order."""
    from mmgroupmamba.ops import triton_scan
    chosen = []
    step_axis = triton_scan._step_axis
    monkeypatch.setattr(triton_scan, '_step_axis',
                        lambda *a: chosen.append(step_axis(*a)) or chosen[-1])
    inp = make_inputs(2, 8, 4, 1, 4, 5, layout=layout, device=kernel_device)
    _check(inp, ('lr', 'tb', 'rl', 'bt'), True, dy_like_y=dy_like_y)
    want = {'channels_last': [1, 1 if dy_like_y else 0], 'strided': [0, 0]}[layout]
    assert chosen == want                       # (forward, backward)


@pytest.mark.parametrize('dim, layout, want', [
    (12, 'channels_last', [(2, True), (1, False)]),   # odd groups: pairs over a group's edge,
    (8, 'channels_last', [(2, False), (2, False)]),   # forward only; even groups: both passes
    (12, 'grouped', [(1, False), (1, False)]),        # odd grouped: a pair would leave its map
])
def test_channel_pairs(dim, layout, want, kernel_device, scan_override, monkeypatch):
    """Channel pairs loaded as one vector (``VEC``, ``SHIFT``, see
    ``triton_scan._layout``): forward and every gradient against float64,
    and the same as with single channels (the forward bit-identical). Odd
    groups (3 channels here, 87 in GroupMamba-T) start their tiles at the
    even channel below their first, and the neighbour's channel must change
    no output or gradient."""
    from mmgroupmamba.ops import triton_scan
    chosen = []
    layout_fn = triton_scan._layout
    monkeypatch.setattr(triton_scan, '_layout', lambda *a, **k: chosen.append(
        layout_fn(*a, **k)) or chosen[-1])
    # 16 runs of 2 steps of a 4-channel tile: every thread holds a pair,
    # compiled too (a thread per pair and run)
    scan_override(BD=4, R=2, NJ=16, num_warps=1, num_warps_bwd=1)
    dirs = ('lr', 'tb', 'rl', 'bt')
    inp = make_inputs(2, dim, 4, 1, 5, 6, layout=layout, device=kernel_device, seed=dim)
    _check(inp, dirs, True, dy_like_y=True)
    assert [(c['VEC'], c['SHIFT']) for c in chosen] == want        # (forward, backward)
    y, last, grads = run_scan(inp, dirs, True, backend='triton', dy_like_y=True)
    scan_override(BD=4, R=2, NJ=16, num_warps=1, num_warps_bwd=1, VEC=1)
    y1, last1, grads1 = run_scan(inp, dirs, True, backend='triton', dy_like_y=True)
    assert [c['VEC'] for c in chosen[-2:]] == [1, 1]
    assert torch.equal(y, y1) and torch.equal(last, last1)
    # (compiled, sums over steps and channels run in another order)
    assert all(rel_err(grads[k], grads1[k]) <= 1e-6 for k in grads)


def test_channel_pairs_where_needed():
    """``VEC = 2`` needs every stride but the channel's even (the kernels
    take them halved) and pairs that stay inside the map, and is not taken
    where Triton proves the pairs aligned itself (groups and strides
    multiples of 16)."""
    from mmgroupmamba.ops.triton_scan import _layout, _map_strides
    cfg = dict(NP=1, BD=4, NJ=16, num_warps=1)

    def nhwc(c):
        return _map_strides(torch.zeros(2, 5, 6, c).permute(0, 3, 1, 2), 4)

    def vec(c, *maps, **kw):
        return _layout(cfg, 4, c // 4, *maps, **kw)['VEC']
    assert vec(8, nhwc(8)) == 2
    assert vec(12, nhwc(12)) == 2 and vec(12, nhwc(12), shift=False) == 1
    assert vec(4, _map_strides(torch.zeros(2, 5, 6, 5)[..., :4].permute(0, 3, 1, 2), 4)) == 1
    assert vec(12, _map_strides(torch.zeros(2, 5, 6, 13)[..., :12].permute(0, 3, 1, 2), 4)) == 1
    assert vec(8, nhwc(8), _map_strides(torch.zeros(2, 8, 5, 6), 4)) == 1   # channels-first
    assert _layout(dict(cfg, VEC=1), 4, 2, nhwc(8))['VEC'] == 1             # the hook
    assert vec(64, nhwc(64)) == 1                                           # 16 | everything
    assert vec(64, _map_strides(torch.zeros(2, 5, 6, 72)[..., :64].permute(0, 3, 1, 2), 4)) == 2


def test_channel_pairs_need_a_pair_per_thread(gpu_heuristic):
    """Compiled, a tile of single-channel runs (T stage 3's backward: 128
    channels x 1 run of 8 steps on 4 warps) keeps single channels: pairs
    would spread a run's steps over warps."""
    nhwc = gpu_heuristic._map_strides(torch.zeros(2, 14, 14, 348).permute(0, 3, 1, 2), 4)
    cfg = dict(NP=1, BD=128, NJ=1, num_warps=4)
    assert gpu_heuristic._layout(cfg, 4, 87, nhwc)['VEC'] == 1
    assert gpu_heuristic._layout(dict(cfg, num_warps=2), 4, 87, nhwc)['VEC'] == 2


@pytest.mark.parametrize('ck_cm', [0, 1])
@pytest.mark.parametrize('dim, layout', [(12, 'channels_last'), (9, 'channels_last'),
                                         (12, 'grouped')])
def test_checkpoint_layouts(ck_cm, dim, layout, kernel_device, scan_override):
    """Both layouts of the chunk-start checkpoints (channel-major, or
    chunk-major with the row rounded up to an even channel count): forward
    and every gradient against float64, over several chunks; the buffer's
    shape as ``ckpt_shape`` (the fake kernel's) says."""
    from mmgroupmamba.ops import triton_scan
    scan_override(BD=4, R=2, NJ=2, num_warps=1, num_warps_bwd=1, CK_CM=ck_cm)
    dirs = ('lr', 'tb', 'rl')
    inp = make_inputs(2, dim, 3, 1, 4, 5, layout=layout, device=kernel_device, seed=dim + ck_cm)
    _check(inp, dirs, True, dy_like_y=True)
    u = inp['u'].detach()
    _, _, ckpt = triton_scan.selective_scan_2d_fwd_triton(
        u, inp['delta'].detach(), inp['A'].detach(), inp['B'].detach(), inp['C'].detach(),
        [0, 1, 2], delta_softplus=True)
    nch = triton_scan.scan_config(2, dim, 3, 1, 4, 5, [0, 1, 2], False)['NCH']
    assert nch > 1
    want = (2, nch, dim + dim % 2, 1) if ck_cm else (2, dim, nch, 1)
    assert ckpt.shape == want == triton_scan.ckpt_shape(u, inp['B'], [0, 1, 2])


@pytest.mark.parametrize('channels_last', [False, True])
def test_grouped_maps(channels_last, kernel_device):
    """Grouped maps (batch, G, dim / G, H, W), each group's map contiguous
    (a (G, batch, H, W, dim / G) buffer, where every cache line belongs to
    one direction): forward and every gradient against float64, y and the
    map gradients in the maps' own shape and layout; the channels-last form
    (batch, H, W, G, dim / G) gives the same values."""
    dirs = ('lr', 'tb', 'rl', 'bt')
    inp = make_inputs(2, 12, 4, 1, 4, 5, layout='grouped', device=kernel_device, seed=5)
    if not channels_last:
        _check(inp, dirs, True, dy_like_y=True)
        return
    cl = (lambda t: None if t is None else t.permute(0, 3, 4, 1, 2))
    kw = dict(D=inp['D'], delta_bias=inp['delta_bias'], delta_softplus=True, backend='triton')
    y = selective_scan_2d(cl(inp['u']), cl(inp['delta']), inp['A'], cl(inp['B']), cl(inp['C']),
                          dirs, z=cl(inp['z']), channels_last=True, **kw)
    assert y.shape == (2, 4, 5, 4, 3)
    want = selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], inp['C'], dirs,
                             z=inp['z'], **kw)
    assert torch.equal(cl(y), want)


def test_directions_match_hand_permuted_1d(kernel_device):
    """Each direction of the 2D op == flipping/transposing by hand + 1D op."""
    inp = make_inputs(1, 4, 1, 2, 3, 4, device=kernel_device)
    u, dt, A, B, C, D, z, bias = (inp[k].detach() for k in ('u', 'delta', 'A', 'B', 'C', 'D',
                                                            'z', 'delta_bias'))
    to_seq = {
        'lr': lambda x: x.flatten(-2),
        'tb': lambda x: x.transpose(-1, -2).flatten(-2),
        'rl': lambda x: x.flatten(-2).flip(-1),
        'bt': lambda x: x.transpose(-1, -2).flatten(-2).flip(-1),
    }
    for name, seq in to_seq.items():
        y2 = selective_scan_2d(u, dt, A, B, C, (name,), D=D, z=z, delta_bias=bias,
                               delta_softplus=True, backend='triton')
        y1 = selective_scan(seq(u), seq(dt), A, seq(B[:, 0]), seq(C[:, 0]), D=D, z=seq(z),
                            delta_bias=bias, delta_softplus=True, backend='triton')
        assert rel_err(seq(y2).cpu(), y1.cpu()) < 1e-6, name


def test_bf16_inputs(kernel_device):
    """bf16 maps are loaded and cast: fp32 state, bf16 output."""
    inp = make_inputs(1, 4, 2, 1, 3, 4, dtype=torch.bfloat16, device=kernel_device)
    y, last, grads = run_scan(inp, ('lr', 'bt'), True, backend='triton')
    y64, last64, grads64 = run_scan(inp, ('lr', 'bt'), True, backend=None, reference64=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(y.float().cpu(), y64) < 1e-2
    for k in ('u', 'delta', 'B', 'C'):
        assert grads[k].dtype == torch.bfloat16
        assert rel_err(grads[k].float().cpu(), grads64[k]) < 2e-2, k


@pytest.mark.parametrize('backend', ['triton', 'reference'])
def test_low_precision_inputs_float32_out_equal_upcasting_first(backend, kernel_device):
    """fp16/bf16 (or mixed) maps with ``out_dtype=float32`` compute what
    upcasting them to float32 first does (the arithmetic is float32 either
    way; compiled kernels may contract multiply-adds differently, so to
    float32 rounding), forward and every gradient: what GroupMamba's layer
    relies on to drop its float32 copies under autocast."""
    # fp16: the interpreter stores bf16 by truncation, the compiled kernel
    # (and torch) round to nearest; fp16 rounds to nearest in both.
    dtype = torch.float16
    low = make_inputs(2, 8, 4, 1, 3, 5, dtype=dtype, device=kernel_device, layout='channels_last')
    # maps of mixed precision (autocast may leave one in float32)
    low['delta'] = low['delta'].detach().float().requires_grad_(True)
    up = {k: None if v is None else (v.detach().float() if v.dtype == dtype else v.detach())
          .requires_grad_(True) for k, v in low.items()}
    dirs = ('lr', 'tb', 'rl', 'bt')
    y, last, grads = run_scan(low, dirs, True, backend=backend, out_dtype=torch.float32)
    y_up, last_up, grads_up = run_scan(up, dirs, True, backend=backend)
    assert y.dtype == torch.float32 and y.stride() == y_up.stride()
    assert rel_err(y, y_up) < 1e-6 and rel_err(last, last_up) < 1e-6
    for k, g in grads.items():
        assert g.dtype == low[k].dtype, k
        # a float32 rounding difference can flip an fp16 rounding (one ulp)
        tol = 1e-6 if g.dtype == torch.float32 else 1e-4
        assert rel_err(g, grads_up[k].to(g.dtype)) < tol, k


def test_out_dtype_errors():
    inp = make_inputs(1, 4, 1, 1, 2, 3)
    args = [inp[k].detach() for k in ('u', 'delta', 'A', 'B', 'C')]
    with pytest.raises(ValueError, match='out_dtype'):
        selective_scan_2d(*args, ('lr',), out_dtype=torch.int32)
    with pytest.raises(ValueError, match='out_dtype.*C=None'):
        selective_scan_2d(*args[:4], None, ('lr',), out_dtype=torch.float32)


# (batch, dim, groups, N, H, W), states: groups in one tile (16 channels on
# lines of 9-16 steps and longer ones; 87 channels in a 128-channel tile, one
# run of 8 per chunk; 24 in 32; 112 in 128 on 7x7 maps, dB/dC stored without
# atomics); N = 16; groups padded too much for one tile (35 channels:
# 16-channel tiles, atomic dB/dC), on both kinds of lines; the states mode
# (forward on 16-channel tiles, backward on 8).
@pytest.mark.parametrize('shape, states', [((2, 64, 4, 1, 14, 14), False),
                                           ((2, 64, 4, 1, 18, 20), False),
                                           ((2, 348, 4, 1, 14, 14), False),
                                           ((2, 96, 4, 1, 20, 12), False),
                                           ((2, 448, 4, 1, 7, 7), False),
                                           ((1, 32, 2, 16, 8, 9), False),
                                           ((2, 140, 4, 1, 9, 7), False),
                                           ((2, 140, 4, 1, 16, 11), False),
                                           ((1, 64, 1, 1, 6, 5), True)])
def test_default_gpu_tiles(shape, states, request):
    """Larger shapes with the heuristic (GPU) tiles; GPU only (too slow to interpret)."""
    if not request.config.getoption('--gpu'):
        pytest.skip('GPU-only (heuristic tiles)')
    if not torch.cuda.is_available():
        pytest.skip('no CUDA')
    inp = make_inputs(*shape, device='cuda')
    _check(inp, ('lr', 'tb', 'rl', 'bt')[:shape[2]], True, states=states)


@pytest.mark.parametrize('shape, layout, tile, mode', [
    ((2, 348, 4, 1, 14, 14), 'channels_last', {}, 1),   # T stage 3: 87 channels in 128 lanes
    ((2, 424, 4, 1, 9, 13), 'grouped', {}, 1),          # B stage 3's groups, grouped maps
    ((2, 80, 4, 1, 5, 6), 'channels_last', dict(BD=32, R=8, NJ=1, num_warps_bwd=1), 1),
    ((2, 156, 4, 1, 6, 7), 'channels_last', dict(BD=64, R=4, NJ=2, num_warps_bwd=2), 1),
    # channel pairs: T stage 1's tile (8 pairs a run, 32 runs on 8 warps),
    # Triton's own pairs, on lines that runs of 4 do not divide
    ((2, 64, 4, 1, 56, 56), 'channels_last', dict(NJ=32, num_warps=8, num_warps_bwd=8), 2),
    ((2, 64, 4, 1, 18, 22), 'grouped', {}, 2),          # 16 runs on 4 warps
    ((2, 96, 4, 1, 20, 12), 'channels_last', {}, 2),    # B stage 1's groups: our pairs, 16 a run
    ((2, 128, 4, 1, 14, 30), 'grouped', {}, 2),         # T stage 2's: 16 pairs a run
    ((2, 192, 4, 1, 12, 20), 'channels_last', {}, 2),   # B stage 2's: 32 pairs, a run a warp
])
def test_lane_sums(shape, layout, tile, mode, request, scan_override, monkeypatch):
    """dB and dC summed over channels by the lanes' reduce-scatter
    (``LANE_SUMS``, inline PTX shuffles, so compiled only): taken in the
    given mode for these tiles (1: a channel per lane, 8 steps a thread, 1
    or 2 runs; 2: channel pairs, runs of 4), every gradient against float64
    and against the sums of ``tl.sum``."""
    if not request.config.getoption('--gpu'):
        pytest.skip('GPU-only (inline PTX)')
    if not torch.cuda.is_available():
        pytest.skip('no CUDA')
    from mmgroupmamba.ops import triton_scan
    taken = []
    fit = triton_scan._lane_sums_mode
    monkeypatch.setattr(triton_scan, '_lane_sums_mode',
                        lambda *a: taken.append(fit(*a)) or taken[-1])
    dirs = ('lr', 'tb', 'rl', 'bt')
    scan_override(**tile)
    inp = make_inputs(*shape, layout=layout, device='cuda', seed=shape[1])
    _check(inp, dirs, True, dy_like_y=True)
    y, last, grads = run_scan(inp, dirs, True, backend='triton', dy_like_y=True)
    assert taken == [mode, mode]
    scan_override(LANE_SUMS=0, **tile)
    y0, last0, grads0 = run_scan(inp, dirs, True, backend='triton', dy_like_y=True)
    assert taken == [mode, mode, 0]
    assert torch.equal(y, y0)
    assert all(rel_err(grads[k], grads0[k]) <= 1e-6 for k in grads)


@pytest.fixture
def gpu_heuristic(monkeypatch):
    """``triton_scan`` with its tile heuristic answering as on an H100 (132 SMs)."""
    from types import SimpleNamespace

    from mmgroupmamba.ops import triton_scan
    monkeypatch.setattr(triton_scan, '_INTERPRET', False)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda d: SimpleNamespace(multi_processor_count=132))
    return triton_scan


def test_lane_sums_where_they_fit(gpu_heuristic, monkeypatch):
    """The backward sums dB/dC by a lanes' reduce-scatter only where its
    lane arithmetic holds, one state with the steps inside a thread: mode 1
    for single channels (neither our pairs nor those Triton proves aligned),
    a channel per lane and 8 steps a thread; mode 2 for channel pairs, runs
    of 4 and 8 to 32 lanes of pairs, the runs on the rest; never in the
    interpreter."""
    ts = gpu_heuristic

    def mode(per, cfg, hw=(14, 14), **kw):
        maps = ts._map_strides(torch.zeros(2, *hw, 4 * per).permute(0, 3, 1, 2), 4)
        cfg = dict(dict(NP=1, BD=128, R=8, NJ=1, num_warps=4), **cfg)
        return ts._lane_sums_mode(cfg, dict(ts._layout(cfg, 4, per, maps, shift=False), **kw),
                                  per, maps)
    assert mode(87, {}) == 1 and mode(106, {}) == 1      # T and B stage 3
    assert mode(39, dict(BD=64, R=4, NJ=2, num_warps=2)) == 1
    assert mode(87, {}, VEC=2) == 0
    assert mode(87, dict(num_warps=2)) == 0              # two channels a lane
    assert mode(87, dict(R=4)) == 0                      # 4 steps a thread
    assert mode(87, dict(NP=2)) == 0
    assert mode(87, dict(LANE_SUMS=0)) == 0
    assert mode(87, {}, SA=0) == 0                       # steps across lanes
    t1 = dict(BD=16, R=4, NJ=32, num_warps=8)            # T stage 1: Triton's pairs (16 | 16)
    assert mode(16, t1, (56, 56)) == 2
    assert mode(24, dict(BD=32, R=4, NJ=8), (56, 56)) == 2        # B stage 1: our pairs
    assert mode(48, dict(BD=64, R=4, NJ=4), (28, 28)) == 2        # B stage 2
    assert mode(112, dict(R=4, NJ=2)) == 0               # 64 pairs: more than a warp's lanes
    assert mode(16, dict(t1, NJ=16), (56, 56)) == 0      # runs fewer than the lanes and warps
    assert mode(16, dict(t1, R=8, NJ=16), (56, 56)) == 0
    assert mode(24, dict(BD=32, R=4, NJ=8), (56, 56), VEC=1) == 0   # single channels
    assert mode(16, dict(t1, LANE_SUMS=0), (56, 56)) == 0
    monkeypatch.setattr(ts, '_INTERPRET', True)
    assert mode(87, {}) == 0 and mode(16, t1, (56, 56)) == 0


@pytest.mark.parametrize('height, width, states, want', [
    (14, 14, False, (8, 1)),    # 9-16-step lines: two runs of 8 per line; 106 channels in
    (16, 11, False, (8, 1)),    # one 128-channel tile, so one run per chunk
    (28, 28, False, (4, 2)),    # longer lines: runs of 4 steps
    (14, 28, False, (4, 2)),
    (7, 7, False, (4, 2)),      # 7-step lines: runs of 4
    (14, 14, True, (4, 16)),    # the states mode keeps its measured tile
])
def test_gpu_heuristic_runs_per_line_on_short_lines(gpu_heuristic, height, width, states, want):
    """The GPU tile heuristic (measured on an H100, docs/benchmarks.md) picks
    the runs by the lines' length, and both passes agree on the chunking
    (the backward reads the forward's checkpoints)."""
    cfgs = [gpu_heuristic.scan_config(128, 424, 4, 1, height, width, (0, 1, 2, 3), True,
                                      backward=b, states=states) for b in (False, True)]
    assert {(c['R'], c['NJ']) for c in cfgs} == {want}
    assert cfgs[0]['NCH'] == cfgs[1]['NCH']


@pytest.mark.parametrize('batch, per, want', [
    (128, 16, (32, 8)),   # GroupMamba-T stage 1: 32 runs per chunk on 8 warps
    (128, 24, (8, 4)),    # larger groups, one 32-channel tile: 8 runs on 4 warps
    (2, 16, (16, 4)),     # few rows (a sequence split over programs): 16 runs
])
def test_gpu_heuristic_long_lines(gpu_heuristic, batch, per, want):
    """56x56 maps take 32 runs per chunk on 8 warps, in both passes, only
    for groups of <= 16 channels with rows enough to fill the GPU."""
    cfgs = [gpu_heuristic.scan_config(batch, 4 * per, 4, 1, 56, 56, (0, 1, 2, 3), True,
                                      backward=b) for b in (False, True)]
    assert {(c['NJ'], c['num_warps']) for c in cfgs} == {want}


@pytest.mark.parametrize('batch, per, height, width, want', [
    (64, 16, 56, 56, 1),      # 256 rows: one segment (3 until the threshold moved)
    (28, 87, 14, 14, 1),      # 112 rows
    (24, 87, 14, 14, 5),      # 96 rows: a quarter of the 132 SMs idle, split
    (24, 16, 56, 56, 6),
    (2, 16, 200, 334, 66),    # Mask R-CNN 1333x800 stage 1: 8 rows
])
def test_gpu_heuristic_splits_sequences_only_for_few_rows(gpu_heuristic, batch, per, height,
                                                          width, want):
    """Segments per sequence (both passes): a sequence is split over
    programs only when its rows (batch x groups x channel tiles) leave a
    quarter of the SMs idle (H100 measurements, docs/benchmarks.md)."""
    cfgs = [gpu_heuristic.scan_config(batch, 4 * per, 4, 1, height, width, (0, 1, 2, 3), True,
                                      backward=b) for b in (False, True)]
    assert [c['NSEG'] for c in cfgs] == [want, want]


@pytest.mark.parametrize('per, hw, states, backward, want', [
    (32, 28, False, False, (32, 4)),   # one tile per group, 4 warps, both passes
    (32, 28, False, True, (32, 4)),
    (87, 14, False, False, (128, 2)),  # padded by at most a third: 87 -> 128 channels; the
    (87, 14, False, True, (128, 4)),   # forward of 14x14 maps on 2 warps of channel pairs
    (112, 7, False, True, (128, 4)),
    (24, 56, False, False, (32, 4)),
    (24, 56, False, True, (32, 4)),
    (40, 28, False, False, (16, 4)),   # padded more (40 -> 64): 16-channel tiles
    (40, 28, False, True, (16, 4)),
    (40, 14, False, True, (16, 2)),    # ... on 2 warps on 14x14 maps
    (20, 56, False, False, (16, 4)),   # forward of small groups: 16 channels, any padding
    (20, 56, False, True, (8, 4)),     # their backward: the tile that pads less
    (128, 28, True, True, (8, 2)),     # the states-mode backward keeps 8 channels on 2 warps
    (128, 28, True, False, (16, 4)),
])
def test_gpu_heuristic_tiles(gpu_heuristic, per, hw, states, backward, want):
    """The channel tile and warps the H100 sweeps chose (docs/benchmarks.md)."""
    groups = 1 if states else 4
    cfg = gpu_heuristic.scan_config(128, groups * per, groups, 1, hw, hw, (0, 1, 2, 3)[:groups],
                                    True, backward=backward, states=states)
    assert (cfg['BD'], cfg['num_warps']) == want


@pytest.mark.parametrize('layout, want', [('channels_last', (2, 2)), ('grouped', (4, 1))])
def test_forward_warps_follow_channel_pairs(gpu_heuristic, monkeypatch, layout, want):
    """T stage 3's forward runs 2 warps of channel pairs, or 4 warps of
    single channels where the maps allow no pairs (grouped maps of 87
    channels: a pair would leave its group's map): (num_warps, VEC) of the
    launch, the kernel replaced by a recorder."""
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)
    config = gpu_heuristic.scan_config
    monkeypatch.setattr(gpu_heuristic, 'scan_config', lambda *a, **k: config(
        *a[:7], True, *a[8:], **k))                    # the GPU branch for CPU tensors
    monkeypatch.setattr(gpu_heuristic, '_fwd_kernel', Recorder())
    t = make_inputs(2, 348, 4, 1, 14, 14, with_z=False, layout=layout)
    gpu_heuristic.selective_scan_2d_fwd_triton(t['u'], t['delta'], t['A'], t['B'], t['C'],
                                               [0, 1, 2, 3], D=t['D'], delta_softplus=True)
    assert (launches[-1]['num_warps'], launches[-1]['VEC']) == want


@pytest.mark.parametrize('dim, groups', [(12, 4), (24, 2)])   # (24, 2): 3 tiles a group, atomics
@pytest.mark.parametrize('mem_t', [0, 1])
def test_transposed_memory_ops(mem_t, dim, groups, kernel_device, scan_override, monkeypatch):
    """The memory ops on [NJ, R, BK] tiles taken through their transpose
    (``MEM_T``, what Triton >= 3.7 needs for the 3.6 layout, see
    ``triton_scan._ties_last``) or not: forward and every gradient against
    float64 either way, on channels-last maps (the tiles with the steps
    inside a thread) in all four directions, with z, dB/dC stored and added
    atomically. Compiled, only the installed Triton's own choice: the other
    one spreads a run's steps over lanes, and Triton 3.6 miscompiles the
    scan across runs in that layout (wrong states with one warp; see
    docs/benchmarks.md)."""
    from mmgroupmamba.ops import triton_scan
    if kernel_device == 'cuda' and mem_t != int(triton_scan._ties_last()):
        pytest.skip('compiled: the layout this Triton version does not use')
    chosen = []
    layout_fn = triton_scan._layout
    monkeypatch.setattr(triton_scan, '_layout', lambda *a, **k: chosen.append(
        layout_fn(*a, **k)) or chosen[-1])
    scan_override(BD=4, R=2, NJ=16, num_warps=1, num_warps_bwd=1, MEM_T=mem_t)
    dirs = ('lr', 'tb', 'rl', 'bt')[:groups]
    inp = make_inputs(2, dim, groups, 1, 5, 6, layout='channels_last', device=kernel_device,
                      seed=dim + mem_t)
    _check(inp, dirs, True, dy_like_y=True)
    assert [(c['SA'], c['MEM_T']) for c in chosen] == [(1, mem_t)] * 2   # (forward, backward)


def test_transposed_memory_ops_flag(scan_override, monkeypatch):
    """``MEM_T`` only for tiles with the steps inside a thread (``SA = 1``);
    by default where Triton breaks contiguity ties last axis first (3.7 and
    later, local and two-digit versions too); the override wins."""
    import triton

    from mmgroupmamba.ops.triton_scan import _layout, _map_strides, _ties_last, scan_config
    nhwc = _map_strides(torch.zeros(2, 5, 6, 8).permute(0, 3, 1, 2), 2)
    nchw = _map_strides(torch.zeros(2, 8, 5, 6), 2)
    installed = triton.__version__
    for version, last in (('3.6.0', False), ('2.3.1', False), ('3.7.0', True),
                          ('3.8.0+git1a2b3c4', True), ('3.10.1', True), ('4.0.0', True)):
        monkeypatch.setattr(triton, '__version__', version)
        assert _ties_last() == last, version
    monkeypatch.setattr(triton, '__version__', installed)
    new = _ties_last()
    cfg = dict(BD=4, NJ=4, R=2, NP=1, num_warps=1)
    assert _layout(cfg, 2, 4, nhwc)['MEM_T'] == int(new)
    assert _layout(cfg, 2, 4, nchw)['MEM_T'] == 0                     # steps across lanes
    assert _layout(dict(cfg, MEM_T=1), 2, 4, nhwc)['MEM_T'] == 1
    assert _layout(dict(cfg, MEM_T=0), 2, 4, nhwc)['MEM_T'] == 0
    assert scan_config(2, 8, 2, 1, 5, 6, [0, 1], False)['MEM_T'] == int(new)
    scan_override(MEM_T=1 - int(new))
    assert scan_config(2, 8, 2, 1, 5, 6, [0, 1], False)['MEM_T'] == 1 - int(new)


def test_step_axis():
    """The kernels' tile order: steps inside a thread ([NJ, R, BK], whose
    loads assert adjacent channel pairs; a wrong assertion would vectorise
    loads of elements apart in memory) only when every map has channel
    stride 1, with one state and tiles of >= 2 channels."""
    from mmgroupmamba.ops.triton_scan import _map_strides, _step_axis
    nchw = _map_strides(torch.zeros(2, 8, 5, 6), 2)
    nhwc = _map_strides(torch.zeros(2, 5, 6, 8).permute(0, 3, 1, 2), 2)
    grouped = _map_strides(torch.zeros(2, 2, 5, 6, 4).permute(1, 0, 4, 2, 3), 2)
    grouped_cf = _map_strides(torch.zeros(2, 2, 4, 5, 6).transpose(0, 1), 2)
    one = dict(NP=1, BD=4)
    assert _step_axis(one, 4, nhwc, nhwc) == 1
    assert _step_axis(one, 4, nhwc, nchw) == 0              # one map channels-first
    assert _step_axis(one, 4, grouped, nhwc) == 1           # each group's map channels-last
    assert _step_axis(one, 4, grouped, grouped_cf) == 0
    assert _step_axis(one, 1, nchw) == 1                    # one channel a group: stride moot
    assert _step_axis(dict(one, NP=2), 4, nhwc) == 0        # channel-state pairs
    assert _step_axis(dict(one, BD=1), 4, nhwc) == 0        # one channel per tile


def test_grouped_flag():
    """The kernels' GROUPED (a two-term channel offset) only where some map's
    group stride is not dim / G channel strides; a grouped view of one
    (batch, H, W, dim) buffer keeps the one-term offset."""
    from mmgroupmamba.ops.triton_scan import _grouped, _map_strides
    nhwc = torch.zeros(2, 5, 6, 8).permute(0, 3, 1, 2)
    per_group = torch.zeros(2, 2, 5, 6, 4).permute(1, 0, 4, 2, 3)    # each group's map contiguous
    adjacent = nhwc.unflatten(1, (2, 4))                              # (2, 2, 4, 5, 6) view
    assert not _grouped(4, _map_strides(nhwc, 2), _map_strides(torch.zeros(2, 8, 5, 6), 2))
    assert not _grouped(4, _map_strides(adjacent, 2))
    assert _grouped(4, _map_strides(nhwc, 2), _map_strides(per_group, 2))


def test_l2_policy(scan_override):
    """The forward keeps a map's lines in L2 ('evict_last') only where the
    groups share them (channels-last: a pixel's groups adjacent, also as a
    grouped view) and the map is over 1.5x the L2; the override wins."""
    from mmgroupmamba.ops.triton_scan import _l2_policy
    nhwc = torch.zeros(2, 5, 6, 8).permute(0, 3, 1, 2)              # 1920 bytes
    adjacent = nhwc.unflatten(1, (2, 4))
    per_group = torch.zeros(2, 2, 5, 6, 4).permute(1, 0, 4, 2, 3)   # each group's map contiguous
    nchw = torch.zeros(2, 8, 5, 6)
    assert _l2_policy(nhwc, 2, l2_bytes=1279) == 'evict_last'
    assert _l2_policy(adjacent, 2, l2_bytes=1279) == 'evict_last'
    assert _l2_policy(nhwc, 2, l2_bytes=1280) == ''                  # not over 1.5x
    assert _l2_policy(nhwc.half(), 2, l2_bytes=1279) == ''           # half the bytes
    assert _l2_policy(per_group, 2, l2_bytes=0) == ''
    assert _l2_policy(nchw, 2, l2_bytes=0) == ''
    assert _l2_policy(nhwc, 2) == ''                                  # off CUDA: none
    scan_override(EVICT_LAST=1)
    assert _l2_policy(per_group, 2) == 'evict_last'
    scan_override(EVICT_LAST=0)
    assert _l2_policy(nhwc, 2, l2_bytes=0) == ''


def test_forward_passes_the_l2_policy_to_the_kernel(scan_override, monkeypatch, kernel_device):
    """The forward launch takes u's policy for u and for y when y is in u's
    layout, none for the states (their own channels-first buffer)."""
    from mmgroupmamba.ops import triton_scan
    real, seen = triton_scan._fwd_kernel, []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((kw['U_POLICY'], kw['Y_POLICY']))
                return real[grid](*args, **kw)
            return launch
    monkeypatch.setattr(triton_scan, '_fwd_kernel', Spy())
    scan_override(EVICT_LAST=1)
    inp = make_inputs(1, 4, 2, 1, 3, 4, with_D=False, with_z=False, layout='channels_last',
                      device=kernel_device)
    with torch.no_grad():
        for C in (inp['C'], None):
            selective_scan_2d(inp['u'], inp['delta'], inp['A'], inp['B'], C, ('lr', 'tb'),
                              backend='triton')
    assert seen == [('evict_last', 'evict_last'), ('evict_last', '')]


def test_pack_directions():
    """Direction codes travel as one int32 argument, 2 bits per group (a
    device tensor built from a list would synchronise the stream per call)."""
    from mmgroupmamba.ops.triton_scan import pack_directions
    codes = [0, 1, 2, 3] * 4                       # 16 groups, top bits set
    bits = pack_directions(codes)
    assert -2 ** 31 <= bits < 2 ** 31
    assert [(bits >> (2 * g)) & 3 for g in range(16)] == codes
    assert pack_directions([3] * 40) == pack_directions([3] * 16)   # repeats every 16
    with pytest.raises(ValueError, match='directions'):
        pack_directions([0] * 16 + [1])


def test_many_groups_one_direction(kernel_device):
    """More than 16 groups (the 1D grouped op), one shared direction."""
    inp = make_inputs(1, 18, 18, 1, 1, 6, device=kernel_device, seed=3)
    _check(inp, ('lr',) * 18, True)


def test_item_size_guard():
    """Offsets within a batch item are 32-bit in the kernels: a larger item is
    refused with a clear error instead of wrapping around (shapes only, so a
    meta tensor stands in for the 8 GiB map)."""
    from mmgroupmamba.ops.triton_scan import _check_item_size
    _check_item_size(torch.empty((4, 2 ** 31 - 1), device='meta'), None)
    with pytest.raises(ValueError, match='2\\*\\*31'):
        _check_item_size(torch.empty((1, 64, 2 ** 25), device='meta'))


def _softplus_probe(x: torch.Tensor, device: str):
    """y and d y / d delta of one step (L = 1) with u = B = C = 1, no D (the
    skip term is absent) and delta = x, channel by channel: softplus(x) and
    its derivative."""
    dim = x.numel()
    delta = x.reshape(1, dim, 1).to(device).requires_grad_(True)
    ones = torch.ones(1, dim, 1, device=device)
    y = selective_scan(ones, delta, -torch.ones(dim, 1, device=device),
                       torch.ones(1, 1, 1, device=device), torch.ones(1, 1, 1, device=device),
                       delta_softplus=True, backend='triton')
    y.sum().backward()
    return y.detach().reshape(-1).cpu(), delta.grad.reshape(-1).cpu()


def test_softplus_over_its_whole_range(kernel_device):
    """delta from -40 to 40: the kernels' softplus (max(x, 0) plus a
    polynomial in e^-|x|) and its derivative, element by element against
    float64, densely where that polynomial's argument spans most of (0, 1]."""
    x = torch.cat([torch.linspace(-40, 40, 161), torch.linspace(-6, 6, 301),
                   torch.tensor([-1e-6, 0.0, 1e-6, 1e-3])])
    y, dx = _softplus_probe(x, kernel_device)
    x64 = x.double()
    torch.testing.assert_close(y.double(), torch.nn.functional.softplus(x64), rtol=5e-6, atol=0)
    torch.testing.assert_close(dx.double(), torch.sigmoid(x64), rtol=5e-6, atol=0)


@pytest.mark.parametrize('rows, dim, n_state, has_d, has_bias, block_r', [
    (70, 37, 3, True, True, 32), (128, 16, 1, True, False, None), (5, 9, 1, False, True, None),
    (200, 20, 16, False, False, None)])
def test_sum_partials(rows, dim, n_state, has_d, has_bias, block_r, kernel_device):
    """The backward's last step: its per-program partials (rows, dim, N + 2)
    summed over rows into dA, dD and d(delta_bias), each cast to its own
    dtype, against float64; an absent dD or d(delta_bias) is not written
    (their pointer is then dA's, which must keep dA's sums). Rows and
    columns that the blocks do not divide, with the shipped row block
    (``block_r`` None) and a smaller one (several steps)."""
    from mmgroupmamba.ops import triton_scan
    block_r = block_r or triton_scan._SUM_BLOCK_R
    g = torch.Generator().manual_seed(rows * dim + n_state)
    part = torch.randn(rows, dim, n_state + 2, generator=g).to(kernel_device)
    want = part.double().sum(0).cpu()
    dA = torch.full((dim, n_state), float('nan'), device=kernel_device)
    dD = torch.full((dim,), float('nan'), dtype=torch.float64, device=kernel_device)
    dbias = torch.full((dim,), float('nan'), dtype=torch.float16, device=kernel_device)
    cols = dim * (n_state + 2)
    triton_scan._sum_partials_kernel[(triton_scan._cdiv(cols, triton_scan._SUM_BLOCK_C),)](
        part, dA, dD if has_d else dA, dbias if has_bias else dA, rows, cols, n_state,
        HAS_D=has_d, HAS_BIAS=has_bias, BLOCK_R=block_r, BLOCK_C=triton_scan._SUM_BLOCK_C)
    torch.testing.assert_close(dA.cpu().double(), want[:, :n_state], rtol=1e-5, atol=1e-5)
    if has_d:
        torch.testing.assert_close(dD.cpu(), want[:, n_state], rtol=1e-5, atol=1e-5)
    if has_bias:
        torch.testing.assert_close(dbias.cpu(), want[:, n_state + 1].half(), rtol=1e-3, atol=1e-3)


def test_nan_delta_gives_nan(kernel_device):
    """A NaN in delta reaches y as NaN, as in the reference, and nowhere else
    (the clamp before the exponential must not turn it into a number)."""
    x = torch.tensor([-3.0, float('nan'), 0.5, 30.0])
    y, dx = _softplus_probe(x, kernel_device)
    assert torch.isnan(y).tolist() == [False, True, False, False]
    assert torch.isnan(dx).tolist() == [False, True, False, False]
    torch.testing.assert_close(y[[0, 2, 3]].double(),
                               torch.nn.functional.softplus(x[[0, 2, 3]].double()),
                               rtol=5e-6, atol=0)


def test_eager_calls_skip_the_custom_op_dispatch(kernel_device, monkeypatch):
    """Plain eager Triton calls run EagerScan (no custom-op dispatch); with
    a mode active they run the custom op; both give the same values and
    gradients bit for bit (the same kernels)."""
    inp = make_inputs(2, 8, 4, 1, 3, 5, device=kernel_device)
    dirs = ('lr', 'tb', 'rl', 'bt')
    y, last, grads = run_scan(inp, dirs, True, backend='triton')
    with PassThroughMode():
        y_op, last_op, grads_op = run_scan(inp, dirs, True, backend='triton')
    assert torch.equal(y, y_op) and torch.equal(last, last_op)
    assert set(grads) == set(grads_op) == set(GRAD_NAMES)
    for k in grads:
        assert torch.equal(grads[k], grads_op[k]), k
    args = [inp[k] for k in GRAD_NAMES[:5]]
    kw = dict(D=inp['D'], z=inp['z'], delta_bias=inp['delta_bias'], delta_softplus=True)
    assert type(selective_scan_2d(*args, dirs, backend='triton', **kw).grad_fn).__name__ == \
        'EagerScanBackward'
    with PassThroughMode():
        node = type(selective_scan_2d(*args, dirs, backend='triton', **kw).grad_fn).__name__
    assert node != 'EagerScanBackward'
    # an unused last state's gradient reaches the kernel as None (the custom
    # op's autograd passes zeros: the same values, more work)
    from mmgroupmamba.ops import triton_scan
    real, seen = triton_scan.selective_scan_2d_bwd_triton, []

    def spy(dy, dlast, *rest):
        seen.append(dlast)
        return real(dy, dlast, *rest)
    monkeypatch.setattr(triton_scan, 'selective_scan_2d_bwd_triton', spy)
    selective_scan_2d(*args, dirs, backend='triton', **kw).sum().backward()
    with PassThroughMode():
        selective_scan_2d(*args, dirs, backend='triton', **kw).sum().backward()
    assert seen[0] is None and len(seen) == 2
    assert seen[1].shape == last.shape and not seen[1].any()
    # the reference keeps the custom op (its host time does not matter)
    assert type(selective_scan_2d(*args, dirs, backend='reference', **kw).grad_fn).__name__ != \
        'EagerScanBackward'


def test_eager_path_is_not_twice_differentiable(kernel_device):
    """A second derivative raises, as through the custom op (whose backward
    op has no autograd), instead of coming out silently zero."""
    inp = make_inputs(1, 4, 2, 1, 2, 3, device=kernel_device)
    y = selective_scan_2d(*[inp[k] for k in GRAD_NAMES[:5]], ('lr', 'bt'), D=inp['D'],
                          backend='triton')
    (du,) = torch.autograd.grad(y.square().sum(), inp['u'], create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice.*once_differentiable'):
        du.sum().backward()


def test_triton_flops_and_compile_see_the_custom_op(kernel_device):
    """Under FlopCounterMode and torch.compile the Triton backend runs as the
    custom op: counted, and traced without a graph break."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmgroupmamba.ops import selective_scan_flops
    inp = make_inputs(2, 8, 4, 1, 3, 4, device=kernel_device)
    args = [inp[k] for k in GRAD_NAMES]
    dirs = ('lr', 'tb', 'rl', 'bt')

    def f(u, delta, A, B, C, D, z, bias):
        y = selective_scan_2d(u, delta, A, B, C, dirs, D=D, z=z, delta_bias=bias,
                              delta_softplus=True, backend='triton')
        return (y * y).sum()
    with FlopCounterMode(display=False) as counter:
        f(*[a.detach() for a in args])
    assert counter.get_total_flops() == selective_scan_flops(2, 8, 12, 1, with_z=True)
    torch._dynamo.reset()
    loss = torch.compile(f, fullgraph=True, backend='aot_eager')(*args)
    grads = torch.autograd.grad(loss, args)
    loss_e = f(*args)
    grads_e = torch.autograd.grad(loss_e, args)
    assert torch.allclose(loss, loss_e, rtol=1e-6)
    for a, b in zip(grads, grads_e):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
