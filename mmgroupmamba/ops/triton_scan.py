"""Triton kernels of the directional selective scan (forward and backward).

Design: line-aligned runs, two tile orders
-----------------------------------------
One launch serves every channel group and direction. A program owns
``(batch b, group g, tile of BD channels of g, segment of chunks)`` and walks
its chunks in scan order, carrying the state ``h`` in registers.

A scan direction is a line order of the map: rows (``'lr'``, ``'rl'``) or
columns (``'tb'``, ``'bt'``), forwards or mirrored. Each line is cut into
*runs* of ``R`` consecutive steps (the last run of a line is padded with
identity steps ``a = 1, b = 0``), and a chunk is ``NJ`` consecutive runs: a
register tile ``[NJ, R, BK]`` (``BK = BD * NP`` channel-state pairs) whose
loads assert adjacent channel pairs, so Triton lays channels and then runs
across lanes and warps and keeps each run inside a thread (channels-last
maps, one state: GroupMamba; see :func:`_off`). Other maps (the states mode's
channels-first ones) take ``[R, NJ, BK]`` with the steps across lanes, where
a warp reads whole rows (``SA``, the tiles' step axis, says which). Triton
chooses a layout from the memory it can prove contiguous; what the
kernels assert is what the host checked of the strides (from Triton 3.7 the
memory ops take the tiles transposed to keep that layout, see
:func:`_ties_last`). Because a run never
leaves its line, the memory offset of step ``r`` of a run
is ``base + o * s_outer + (i0 + r) * s_inner``: every direction is the same
code with run-time strides (negated for mirrored directions), no divmod per
step, no permutation of the tile, no flipped or transposed copies. A
channel's offset is ``g * s_group + c * s_channel`` (channel c of group g),
so the maps may also be grouped, (batch, G, dim / G, H, W) with the groups
anywhere in memory (see :func:`_map_strides`).

Per chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` (``a = exp(delta A)``,
``b = delta B u``) runs as

1. an ``associative_scan`` along the step axis: with the steps inside a
   thread a sequential scan of each run (no shuffles);
2. an *exclusive* scan of the ``NJ`` run summaries (across lanes/warps, one
   value per thread): the combine carries both the composition of a segment
   and of the segment without its last element, so run ``j`` gets the state
   at its start without a shift or a division;
3. the chunk's carry: the last run's inclusive value.

The chunk loop is a serial chain (each chunk needs the previous carry), so
the next chunk's inputs are loaded before the current chunk is scanned:
their memory latency overlaps the work. (A single-pass decoupled look-back,
one program per chunk, was measured slower overall on an H100; see
docs/benchmarks.md.)

Decays are only ever multiplied (in (0, 1]), never formed as exp of a
cumulative sum and divided, so nothing overflows.

Few rows (detection/segmentation maps: 2 images x 64 channels x 66,800
steps): when ``batch * groups * channel tiles`` would leave a quarter of the
SMs idle (see :func:`scan_config`), the chunks of a sequence are split into
segments run by different programs. A
summary pass computes each segment's decay product and zero-start final
state; the main pass chains the summaries of the earlier segments (O(segments)
tiny loads) and recomputes. The backward does the same in reverse.

Backward: the forward stores the state at every chunk start (``N`` floats per
row per chunk). The backward walks chunks in reverse; per chunk it recomputes
the states from the checkpoint (the forward's scan, shared code) and runs the
reverse recurrence ``dh_t = a_{t+1} dh_{t+1} + g_t`` (``g_t = C_t dy_t``, or
the states' own gradient without C) with the same two-level scan in reverse
(``reverse=True`` across runs and, with the steps across lanes, along runs;
with the steps inside a thread a forward scan of the flipped runs, see
:func:`_rscan_chunk`; checked compiled against the reference by ``pytest
tests/ops --gpu``). It carries the decayed
gradient ``x_t = a_{t+1} dh_{t+1}``, whose step ``x_{t-1} = a_t (x_t + g_t)``
needs only the step's own decay, the one the recomputed forward uses; ``dh_t =
g_t + x_t`` is the scan exclusive of step t. (Carrying dh itself needs
``a_{t+1}``: a second, shifted load of delta and its softplus and exp again.)
``a_t h_{t-1} = h_t - delta_t B_t u_t`` gives
the decay gradient without a division. dB/dC are reduced over the channel
tile in registers and stored directly when one tile holds the whole group
(the GroupMamba case), else added atomically into fp32 buffers; with a
channel per lane (GroupMamba's stage 3) the reduction is a reduce-scatter
over the lanes (:func:`_lane_sums`), and with channel pairs (stages 1 and
2) one over the lanes that hold a run's pairs (:func:`_pair_lane_sums`);
dA/dD/d(delta_bias) are accumulated per program into one partials buffer
and summed over programs by one small kernel (:func:`_sum_partials_kernel`,
deterministic: the three ``torch.sum`` launches it replaces took 7.6 us
of the GroupMamba-T stage-1 backward on an H100, it takes 1.8; that
backward went from 265 to 255 us, docs/benchmarks.md).

Channel pairs: with channels-last maps a thread holds a run of two
adjacent channels, loaded and stored as one vector where the compiler can
prove the pair aligned; the host passes the strides halved so that it can
(``VEC``, see :func:`_layout`), and tiles of groups of an odd channel count
start at an even channel (``SHIFT``, see :func:`_program`).

L2 policy: where the four groups' channels share cache lines (channels-last
u and y) and the maps are well over the L2, the forward asks the L2 to keep
u's and y's lines (``evict_last``) until the other directions' programs have
used them (see :func:`_l2_policy`). The backward's dB and dC stores ask the
same, so that the sectors a column direction fills a value at a time are
not written back half full (see :data:`_BC_POLICY`).

Interpreter (``TRITON_INTERPRET=1``): no libdevice (``tl.exp`` and ``/``
where compiled kernels take the hardware's approximate exp2 and division,
see :func:`_exp`), bf16 only loaded and cast, and a fixed
small config (no autotuning) so CI stays fast.

States mode (``STATES``, Spatial-Mamba): without C the forward stores the
hidden states (fp32, a (batch, dim, N, H, W) tensor) instead of reducing them
with C, and the backward takes their gradient as the injection ``g_t``.
Everything else is shared, so the gradient is right for any d_state.
"""
import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .reference import map_shape

_INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'
#: compiled kernels take the hardware's approximate exp2 and reciprocal
#: (libdevice), see :func:`_exp` and :func:`_div`
_HW_MATH = tl.constexpr(not _INTERPRET)

#: L2 policy of the backward's dB and dC stores. A program stores one value a
#: step, so a column direction writes 4 bytes (2 in 16-bit types) of a 32-byte
#: sector a step and completes the sector only 8 lines later; a sector
#: evicted half written costs a read from DRAM to merge it. Kept in the L2,
#: the GroupMamba-T stage-1 fp32 backward took 265 us instead of 275 on an
#: H100, B's 437 instead of 445 (bf16 408 instead of 428), Mask R-CNN's 145
#: instead of 151; no case got slower beyond run-to-run spread
#: (docs/benchmarks.md).
_BC_POLICY = tl.constexpr('evict_last')

#: Tile of the backward's final sum over programs (:func:`_sum_partials_kernel`):
#: rows (batch elements x segments) a step, columns (channel-state sums) a
#: program. Most rows in one step: 1.8 us at GroupMamba-T stage 1 on an H100,
#: against 3.5 with tiles of 32 rows x 64 columns on 2 warps.
_SUM_BLOCK_R, _SUM_BLOCK_C, _SUM_WARPS = 128, 32, 4

#: Test/benchmark hook: keys 'BD' (channels per program, both passes), 'R'
#: (steps per run), 'NJ' (runs per chunk), 'CPS' (chunks per segment),
#: 'num_warps' (forward), 'num_warps_bwd' (backward) override the heuristic
#: tile config (see :func:`scan_config`); 'VEC' = 1 and 'LANE_SUMS' = 0 turn
#: off channel pairs (:func:`_layout`) and the backward's lane sums
#: (:func:`_lane_sums_mode`); 'CK_CM' (0 or 1) sets the checkpoints' layout
#: (:func:`_ckpt_off`); 'EVICT_LAST' (0 or 1) the forward's L2 policy for u
#: and y (:func:`_l2_policy`); 'MEM_T' (0 or 1) whether the memory ops take
#: the tiles transposed (:func:`_ties_last`).
CONFIG_OVERRIDE: Dict[str, int] = {}


def _np2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _n_chunks(n_outer: int, n_inner: int, r: int, nj: int) -> int:
    return _cdiv(n_outer * _cdiv(n_inner, r), nj)


def scan_config(batch: int, dim: int, groups: int, n_state: int, height: int, width: int,
                codes: Sequence[int], on_gpu: bool, backward: bool = False,
                states: bool = False) -> Dict[str, int]:
    """Tile configuration of the forward (or with ``backward`` the backward)
    kernel; ``states`` is the states mode (no C).

    The chunking (R, NJ and so the checkpoint shape) depends only on the
    shapes, so the backward and ``torch.compile``'s fake tensors agree with
    the forward; the channel tile, warps and segments may differ per pass.
    ``num_warps_single``, where present, replaces the forward's warps when
    the maps' strides allow no channel pairs (see :func:`_layout`).
    """
    per = dim // groups
    small = _INTERPRET or not on_gpu
    ov = CONFIG_OVERRIDE
    np_ = _np2(n_state)
    has_r = any(c in (0, 2) for c in codes)
    has_c = any(c in (1, 3) for c in codes)
    # a run is padded to R steps at the end of each line: R <= the lines
    n_min = min(width if has_r else height, height if has_c else width)
    sms = 1 if small else torch.cuda.get_device_properties(
        torch.cuda.current_device()).multi_processor_count
    one = _np2(per)                               # a tile of the whole group
    single = 0                                    # forward warps without channel pairs
    if small:
        bd, r, nj, warps = min(one, 4), 2, 4, 1
    elif np_ == 1 and not states and 16 <= one <= 128 and 3 * (one - per) <= one:
        # Measured on an H100 (docs/benchmarks.md, sweeps): one tile holds
        # the whole group where that pads it by at most a third, so dB/dC
        # are stored without atomics and B/C are read once (T stage 2
        # backward 233 -> 152 us, stage 3 200 -> 153). Runs of 4 steps (of
        # 8 on 14x14 maps: two per line), NJ such that a thread holds 8
        # elements; 8 warps (32 runs of 16 channels) on 56x56-class maps
        # with rows enough to fill the GPU, else 4.
        bd = one
        r = 8 if 8 < min(height, width) and max(height, width) <= 16 else 4
        warps = 8 if (one == 16 and min(height, width) >= 32
                      and batch * groups >= 2 * sms) else 4
        nj = max(1, 8 * 32 * warps // (bd * r))
        if r == 8 and not backward:
            # The forward on 2 warps: a thread holds a run of a channel
            # pair, loaded as one vector (see _layout; T stage 3 62 -> 60
            # us, B 85 -> 66, bf16 50 -> 46 and 52 -> 46), or on 4
            # (``num_warps_single``) where the maps allow no pairs (T stage
            # 3 on grouped maps: 52 us on 4 warps, 77 on 2). The backward
            # keeps 4 warps of single channels (2 warps of pairs would hold
            # 16 elements a thread, at 248 registers with 8).
            warps, single = 2, warps
    else:
        # Groups padded more, N > 1, the states mode (H100 sweeps, with the
        # layout :func:`_off` sets): 16 channels x 16 runs of 4 steps on 4
        # warps. The forward takes 16-channel tiles whatever the padding
        # (N = 1); the backward of small groups takes 8-channel tiles where
        # they pad less, the states-mode backward of large ones 8 channels
        # on 2 warps. Tiles of at most 64 channel-state pairs so N > 1 stays
        # in registers.
        if np_ == 1 and per >= 32 and states and backward:
            bd, warps = 8, 2
        elif np_ == 1 and (per >= 32 or not backward):
            bd, warps = 16, 4
        else:
            bd = 16 if (_cdiv(per, 16) * 16 - per) <= (_cdiv(per, 8) * 8 - per) else 8
            warps = 4
        bd = max(1, min(bd, one, 64 // np_))
        r, nj = (4 if np_ == 1 else 2), 16
        # Shape rules, the same for both passes (the backward reads the
        # forward's checkpoints, so R and NJ must agree).
        if np_ == 1 and not states:
            if max(height, width) <= 8:
                nj, warps = 8, 2                  # 7x7 maps: 8 runs per chunk
            elif 8 < min(height, width) and max(height, width) <= 16:
                r, nj, warps = 8, 4, 2            # 14x14 maps: two runs of 8 per line
    bd = ov.get('BD', bd)
    r = min(ov.get('R', r), _np2(n_min))
    nj = ov.get('NJ', nj)
    nch = max(_n_chunks(height, width, r, nj) if has_r else 0,
              _n_chunks(width, height, r, nj) if has_c else 0)
    n_dt = _cdiv(per, bd)
    rows = batch * groups * n_dt
    if 'CPS' in ov:
        cps = ov['CPS']
    elif small or 4 * rows >= 3 * sms:
        cps = nch
    else:
        # Split a sequence over programs only when rows alone leave a
        # quarter of the SMs idle: the summary pass re-reads delta, u and B,
        # and the split grid runs more programs per SM. Measured on an H100
        # (docs/benchmarks.md), fwd + bwd of the four GroupMamba-T stages:
        # splitting won at 96 rows or fewer (80 rows: 218 against 248 us),
        # lost from 112 (275 against 296; 256 rows, batch 64: 443 against
        # 648). ~4 programs per SM.
        cps = max(2, _cdiv(nch * rows, 4 * sms))
    cps = max(1, min(cps, nch))
    warps = ov.get('num_warps_bwd' if backward else 'num_warps', warps)
    # Checkpoints chunk-major where the sequences have many chunks (measured
    # on an H100, docs/benchmarks.md: B stage 1, 98 chunks, forward 291 ->
    # 283 us, bf16 327 -> 288; Mask R-CNN stage 3, 525 chunks, 35.0 -> 32.6;
    # with 25 chunks, T stages 2-3, it was 2-3% slower in fp32).
    ck_cm = ov.get('CK_CM', int(nch >= 64))
    cfg = dict(BD=bd, NP=np_, R=r, NJ=nj, NCH=nch, CPS=cps, NSEG=_cdiv(nch, cps), N_DT=n_dt,
               CK_CM=ck_cm, num_warps=warps, VEC=ov.get('VEC', 2),
               LANE_SUMS=ov.get('LANE_SUMS', 1), MEM_T=ov.get('MEM_T', int(_ties_last())))
    if single and 'num_warps' not in ov:
        cfg['num_warps_single'] = single
    return cfg


# --------------------------------------------------------------------------- helpers


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier step: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_excl(a1, b1, e1, f1, a2, b2, e2, f2):
    # (a, b): the whole segment; (e, f): the segment without its last element
    # (identity for one element), i.e. the exclusive prefix of the next one.
    return a1 * a2, a2 * b1 + b2, a1 * e2, e2 * b1 + f2


@triton.jit
def _exp(x):
    """e^x. Compiled: libdevice ``fast_expf``, PTX ``ex2.approx.ftz`` of
    x log2(e), the approximation ``tl.exp`` takes too, but flushing results
    below 2^-126 to zero (no decay or softplus needs them) instead of three
    more instructions per element that rescale them."""
    if _HW_MATH:
        return libdevice.fast_expf(x)
    return tl.exp(x)


@triton.jit
def _div(a, b):
    """a / b. Compiled: libdevice ``fast_dividef`` (PTX ``div.approx.ftz``,
    2 ulp for the b in [1, 2^126] it serves), two instructions against the
    IEEE division's range checks."""
    if _HW_MATH:
        return libdevice.fast_dividef(a, b)
    return a / b


@triton.jit
def _softplus(x):
    """softplus(x) = log(1 + e^x) and its derivative e^x / (1 + e^x).

    Taken as max(x, 0) + log(1 + t) with t = e^-|x| in (0, 1], and log(1 +
    t) = t P(t), P a degree-7 polynomial fitted to minimise the relative
    error on [0, 1] (1.9e-7; 4e-7 evaluated in fp32, with the hardware's
    approximate exp 6e-7): 12 instructions an element and one exponential.
    (``tl.log`` compiles to a polynomial of about 20 instructions; the
    series for small e^x with the hardware log2 elsewhere that this
    replaces took 16 and two special-function instructions, softplus being
    a fifth of the GroupMamba-T stage-1 backward's loop.) The derivative
    is [x > 0 ? 1 : t] / (1 + t). No argument overflows the exponential,
    and a NaN x gives NaN through t, as in the reference.

    Both passes take :func:`_exp`. (The backward took ``tl.exp`` while the
    old form's fast exponential made ptxas issue the stage-3 prefetch loads
    late; with this form the fast one was as fast or faster in every case
    measured. Against the old form one case lost: with triton 3.6 the
    stage-3 bf16 backward, 4-6%, its prefetch waited on earlier; see
    docs/benchmarks.md.)
    """
    t = _exp(-tl.abs(x))
    p = -0.008539144 * t + 0.0440893
    p = p * t - 0.10768108
    p = p * t + 0.17745183
    p = p * t - 0.24495435
    p = p * t + 0.33275473
    p = p * t - 0.49997404
    p = p * t + 0.9999998
    return tl.maximum(x, 0.0) + p * t, _div(tl.where(x > 0.0, 1.0, t), 1.0 + t)


@triton.jit
def _sigmoid(x):
    return _div(1.0, 1.0 + _exp(-x))


@triton.jit
def _geom(code, H, W, R: tl.constexpr, NJ: tl.constexpr):
    """Line geometry of a direction code: (col, rev, n_outer, n_inner, runs
    per line, chunks)."""
    col = (code % 2) == 1
    n_outer = tl.where(col, W, H)
    n_inner = tl.where(col, H, W)
    rpl = tl.cdiv(n_inner, R)
    return col, code >= 2, n_outer, n_inner, rpl, tl.cdiv(n_outer * rpl, NJ)


@triton.jit
def _line(sh, sw, col, rev, n_outer, n_inner):
    """(base, outer stride, inner stride) of a map with strides (sh, sw)
    scanned in this direction: the offset of line o, position i is
    base + o * so + i * si."""
    so = tl.where(col, sw, sh)
    si = tl.where(col, sh, sw)
    base = tl.where(rev, (n_outer - 1) * so + (n_inner - 1) * si, 0)
    return base, tl.where(rev, -so, so), tl.where(rev, -si, si)


@triton.jit
def _runs(c, rpl, NJ: tl.constexpr):
    """Chunk c's runs [NJ]: their line and index in the line."""
    jg = c * NJ + tl.arange(0, NJ)
    o = jg // rpl
    return o, jg - o * rpl


@triton.jit
def _shift_runs(o, j, dq, dr, rpl, forward: tl.constexpr):
    """The runs of the next (``forward``) or previous chunk, NJ = dq * rpl +
    dr runs on: a carry instead of the chunk loop's division per run."""
    if forward:
        j = j + dr
        wrap = j >= rpl
        o, j = o + dq + wrap.to(tl.int32), tl.where(wrap, j - rpl, j)
    else:
        j = j - dr
        wrap = j < 0
        o, j = o - dq - wrap.to(tl.int32), tl.where(wrap, j + rpl, j)
    return o, j


@triton.jit
def _slots(runs, n_outer, n_inner, R: tl.constexpr, SA: tl.constexpr, EVEN: tl.constexpr):
    """Line o, position i and validity of the slots of a chunk's runs (see
    :func:`_runs`): [NJ, 1], [NJ, R], [NJ, R] with the steps on axis SA = 1,
    else [1, NJ], [R, NJ], [R, NJ]. ``EVEN``: R divides every line (the host
    checked), so validity is per run (a compare per element less)."""
    o, j = runs
    i0 = j * R
    if SA == 1:
        ii = i0[:, None] + tl.arange(0, R)[None, :]
        o = o[:, None]
    else:
        ii = i0[None, :] + tl.arange(0, R)[:, None]
        o = o[None, :]
    if EVEN:
        valid = tl.broadcast_to(o < n_outer, ii.shape)
    else:
        valid = (o < n_outer) & (ii < n_inner)
    return o, ii, valid


@triton.jit
def _off(ch, base, so, si, o, ii, CH_PAIRS: tl.constexpr):
    """Offsets of a tile, [NJ, R, BK] or [R, NJ, BK] (as o and ii): the
    per-channel part ch [BK] plus the slot pixels.

    ``CH_PAIRS`` asserts that pairs of channels are adjacent in memory (the
    caller knows: channel stride 1, one state) for the tile [NJ, R, BK]. It
    sets Triton's layout: the coalescing pass orders a tile's axes by their
    contiguity, ties by axis index (the memory ops take the tile transposed
    where Triton breaks ties last axis first, see :func:`_ties_last`), so
    channels, then runs, go across lanes and the steps of a run stay inside
    a thread; the scans along a run need no shuffles. (The real contiguity,
    16 channels, would give 4-channel vectors, and those put steps across
    warps.) Without it ([R, NJ, BK] of maps not channels-last) the steps go
    across lanes, and a warp reads whole rows of a channels-first map."""
    off = ch[None, None, :] + (base + o * so + ii * si)[:, :, None]
    if CH_PAIRS:
        off = tl.max_contiguous(off, [1, 1, 2])
    return off


@triton.jit
def _ld(ptrs, mask, other, MEM_T: tl.constexpr, POLICY: tl.constexpr):
    """``tl.load`` of a [NJ, R, .] tile; ``MEM_T``: through its transpose
    [R, NJ, .], so that Triton >= 3.7 lays it out as 3.6 does (see
    :func:`_off` and :func:`_ties_last`). The transposes move no data:
    they relabel the layout's axes."""
    if MEM_T:
        return tl.permute(tl.load(tl.permute(ptrs, (1, 0, 2)), mask=tl.permute(mask, (1, 0, 2)),
                                  other=other, eviction_policy=POLICY), (1, 0, 2))
    return tl.load(ptrs, mask=mask, other=other, eviction_policy=POLICY)


@triton.jit
def _st(ptrs, value, mask, MEM_T: tl.constexpr, POLICY: tl.constexpr):
    """``tl.store`` of a [NJ, R, .] tile, transposed with ``MEM_T`` (see
    :func:`_ld`)."""
    if MEM_T:
        tl.store(tl.permute(ptrs, (1, 0, 2)), tl.permute(value, (1, 0, 2)),
                 mask=tl.permute(mask, (1, 0, 2)), eviction_policy=POLICY)
    else:
        tl.store(ptrs, value, mask=mask, eviction_policy=POLICY)


@triton.jit
def _add(ptrs, value, mask, MEM_T: tl.constexpr):
    """``tl.atomic_add`` of a [NJ, R, .] tile, transposed with ``MEM_T``
    (see :func:`_ld`)."""
    if MEM_T:
        tl.atomic_add(tl.permute(ptrs, (1, 0, 2)), tl.permute(value, (1, 0, 2)),
                      mask=tl.permute(mask, (1, 0, 2)))
    else:
        tl.atomic_add(ptrs, value, mask=mask)


@triton.jit
def _chan(sg, sc, g, d, dl, GROUPED: tl.constexpr):
    """Offsets [BK] of a tile's channels (d = g * per + dl) in a map with
    group stride sg and channel stride sc (see :func:`_map_strides`).
    Without ``GROUPED`` the host checked sg = per * sc and the offset is
    d * sc: ungrouped maps then run the kernels from before the group
    stride, which the H100 ran faster (T stage 3 backward 149 against 161
    us with the two-term offset everywhere, the SASS differing only in
    scheduling)."""
    if GROUPED:
        return g * sg + dl * sc
    return d * sc


@triton.jit
def _delta(dt, bias, valid, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta after bias/softplus, zero on padding; d delta / d(dt + bias),
    the softplus derivative, or 1)."""
    if HAS_BIAS:
        dt = dt + bias[None, None, :]
    dtv = dt
    dsp = tl.full(dt.shape, 1.0, tl.float32)
    if SOFTPLUS:
        dtv, dsp = _softplus(dt)
    return tl.where(valid, dtv, 0.0), dsp


@triton.jit
def _last(x, axis: tl.constexpr, n: tl.constexpr, first: tl.constexpr, KEEP: tl.constexpr):
    """x at index n - 1 (or 0 with ``first``) of an axis of size n of a tile
    or of the runs' summaries [NJ, BK] (a masked sum); ``KEEP`` keeps the
    axis (see :func:`_carry`)."""
    idx = tl.arange(0, n)
    if first:
        sel = idx == 0
    else:
        sel = idx == n - 1
    if len(x.shape) == 2:
        sel = sel[:, None]
    elif axis == 1:
        sel = sel[None, :, None]
    else:
        sel = sel[:, None, None]
    return tl.sum(tl.where(sel, x, 0.0), axis=axis, keep_dims=KEEP)


@triton.jit
def _carry(x, SA: tl.constexpr):
    """A per-channel-state vector [BK] in the shape of the carried state and
    the runs' summaries: [1, 1, BK] with the steps inside a thread (SA = 1),
    so the scan across runs and the carry stay in the tile's layout (reduced
    to a sliced layout, Triton converted them through shared memory);
    [BK] with the steps across lanes, where a kept axis is replicated over
    lanes and the scan across runs was slower (both measured,
    docs/benchmarks.md)."""
    if SA == 1:
        x = x[None, None, :]
    return x


@triton.jit
def _scan_chunk(a, bx, h_in, R: tl.constexpr, NJ: tl.constexpr, SA: tl.constexpr):
    """States (a tile, steps on axis SA) of a chunk entered with state h_in
    (see :func:`_carry`); also the state after it and the chunk's decay
    product (shaped like h_in)."""
    aa, hl = tl.associative_scan((a, bx), SA, _combine)              # within runs
    p = _last(aa, SA, R, False, SA == 1)                             # runs' summaries: runs
    s = _last(hl, SA, R, False, SA == 1)                             # on axis 0
    pi, si, pe, se = tl.associative_scan(
        (p, s, tl.full(p.shape, 1.0, tl.float32), tl.zeros(p.shape, tl.float32)), 0,
        _combine_excl)                                               # across runs
    start = pe * h_in + se                                           # state before each run
    h_out = _last(pi * h_in + si, 0, NJ, False, SA == 1)
    if SA == 0:
        start = start[None, :, :]
    return aa * start + hl, h_out, _last(pi, 0, NJ, False, SA == 1)


@triton.jit
def _rscan_chunk(a, gsrc, x_in, R: tl.constexpr, NJ: tl.constexpr, SA: tl.constexpr):
    """Reverse recurrence ``dh_t = g_t + a_{t+1} dh_{t+1}`` over a chunk, in
    terms of the decayed gradient ``x_t = a_{t+1} dh_{t+1}``:
    ``x_{t-1} = a_t (x_t + g_t)`` needs each step's own decay ``a_t`` only,
    and ``dh_t = g_t + x_t`` is the scan *exclusive* of step t. Entered (from
    its end) with x_in (see :func:`_carry`); returns dh (a tile like a), x
    before the chunk's first step, and the chunk's decay product.

    With the steps inside a thread (SA = 1) the scan within runs is a
    forward scan of the flipped run: compiled, Triton 3.6's reverse scan
    along an in-thread axis issued 160 warp shuffles per chunk (the flips
    are register moves)."""
    one = tl.full(a.shape, 1.0, tl.float32)
    zero = tl.zeros(a.shape, tl.float32)
    if SA == 1:
        qi_t, gi_t, qe_t, ge_t = tl.associative_scan(
            (tl.flip(a, 1), tl.flip(a * gsrc, 1), one, zero), 1, _combine_excl)
        q = _last(qi_t, 1, R, False, True)
        g = _last(gi_t, 1, R, False, True)
        qe_t = tl.flip(qe_t, 1)
        ge_t = tl.flip(ge_t, 1)
    else:
        qi_t, gi_t, qe_t, ge_t = tl.associative_scan(
            (a, a * gsrc, one, zero), 0, _combine_excl, reverse=True)
        q = _last(qi_t, 0, R, True, False)
        g = _last(gi_t, 0, R, True, False)
    qi, gi, qe, ge = tl.associative_scan(
        (q, g, tl.full(q.shape, 1.0, tl.float32), tl.zeros(q.shape, tl.float32)), 0,
        _combine_excl, reverse=True)                                 # across runs
    after = qe * x_in + ge                                           # x after each run
    x_out = _last(qi * x_in + gi, 0, NJ, True, SA == 1)
    if SA == 0:
        after = after[None, :, :]
    return gsrc + qe_t * after + ge_t, x_out, _last(qi, 0, NJ, True, SA == 1)


@triton.jit
def _sum_states(x, BD: tl.constexpr, NP: tl.constexpr):
    """Sum over the NP states of each channel of a tile, broadcast back."""
    if NP > 1:
        s = tl.sum(tl.reshape(x, (x.shape[0], x.shape[1], BD, NP)), axis=3)
        x = tl.reshape(tl.broadcast_to(s[:, :, :, None], (x.shape[0], x.shape[1], BD, NP)),
                       (x.shape[0], x.shape[1], BD * NP))
    return x


@triton.jit
def _shfl_xor(x, MASK: tl.constexpr):
    """x of lane ``lane ^ MASK`` (a butterfly shuffle of fp32; compiled only:
    the interpreter runs no PTX)."""
    r = tl.inline_asm_elementwise('shfl.sync.bfly.b32 $0, $1, $2, 0x1f, 0xffffffff;', '=r,r,r',
                                  [x.to(tl.int32, bitcast=True), tl.full(x.shape, MASK, tl.int32)],
                                  dtype=tl.int32, is_pure=True, pack=1)
    return r.to(tl.float32, bitcast=True)


@triton.jit
def _scatter_step(lo, hi, lane, MASK: tl.constexpr):
    """One step of a reduce-scatter over lanes l and l ^ MASK: the lane whose
    MASK bit is clear keeps lo, the other hi, each adding its partner's
    copy, so a shuffle moves half the values a butterfly would."""
    up = (lane & MASK) != 0
    return tl.where(up, hi, lo) + _shfl_xor(tl.where(up, lo, hi), MASK)


@triton.jit
def _lane_sums(xb, xc, BD: tl.constexpr):
    """Sums over the channels of two tiles [NJ, R, BD] with NJ * R = 8 and
    channel c in lane c % 32 of warp c // 32 (``LANE_SUMS``, see
    :func:`_lane_sums_mode`): a reduce-scatter over lanes 16, 8, 4, 2 apart,
    a butterfly over 1, then a sum over the warps. Returns [32]: lane l holds
    the sum of xc if l & 16 else xb, at step f = 4 (l >> 1 & 1) + 2 (l >> 2
    & 1) + (l >> 3 & 1) of the tile (f = run * R + step in the run). A
    butterfly per value (``tl.sum``) took 80 shuffles and adds per chunk,
    this 16."""
    y = _scatter_step(xb, xc, (tl.arange(0, BD) % 32)[None, None, :], 16)
    lane = (tl.arange(0, BD) % 32)[:, None]
    e, o = tl.split(tl.reshape(tl.permute(y, (2, 0, 1)), (BD, 4, 2)))   # steps f = 2k, 2k + 1
    y = _scatter_step(e, o, lane, 8)                                    # [BD, 4]: f = 2k + b3
    e, o = tl.split(tl.reshape(y, (BD, 2, 2)))
    y = _scatter_step(e, o, lane, 4)                                    # [BD, 2]: k = 2m + b2
    e, o = tl.split(y)
    y = _scatter_step(e, o, tl.arange(0, BD) % 32, 2)                   # [BD]: m = b1
    y = y + _shfl_xor(y, 1)
    return tl.sum(tl.reshape(y, (BD // 32, 32)), axis=0)


@triton.jit
def _pair_lane_sums(xb, xc, NJ: tl.constexpr, BD: tl.constexpr):
    """Sums over the channels of two tiles [NJ, 4, BD] held a channel pair a
    thread, pair p of a run in lane p of the P = BD / 2 lanes that hold the
    run (``LANE_SUMS`` = 2, see :func:`_lane_sums_mode`): each pair summed
    in its thread, then a reduce-scatter over lanes P / 2, P / 4, P / 8
    apart (splitting xb from xc, then the step's two bits) and a butterfly
    over the lanes below. Returns [NJ, P]: lane p of run j holds the sum of
    xc if p & P / 2 else xb, at step 2 [p & P / 4 != 0] + [p & P / 8 != 0]
    (see :func:`_store_pair_lane_sums`). The butterflies of ``tl.sum`` and
    the conversion of its result for the store took four barriers a chunk
    in the GroupMamba-T stage-1 backward, which ran in 291 us, and in 266
    without dB and dC at all (H100, docs/benchmarks.md)."""
    P: tl.constexpr = BD // 2
    lane = tl.arange(0, P)
    eb, ob = tl.split(tl.reshape(xb, (NJ, 4, P, 2)))
    ec, oc = tl.split(tl.reshape(xc, (NJ, 4, P, 2)))
    y = _scatter_step(eb + ob, ec + oc, lane[None, None, :], P // 2)   # [NJ, 4, P]
    # steps s = 2 s1 + s0: split on s1, then on s0
    lo, hi = tl.split(tl.permute(tl.reshape(tl.permute(y, (0, 2, 1)), (NJ, P, 2, 2)),
                                 (0, 1, 3, 2)))
    y = _scatter_step(lo, hi, lane[None, :, None], P // 4)             # [NJ, P, 2]: s0
    lo, hi = tl.split(y)
    y = _scatter_step(lo, hi, lane[None, :], P // 8)                   # [NJ, P]
    if P >= 16:
        y = y + _shfl_xor(y, P // 16)
    if P >= 32:
        y = y + _shfl_xor(y, P // 32)
    return y


@triton.jit
def _store_sums(s, o, ii, is_c, keep, n_outer, n_inner, col, rev, g, b64, dB_ptr, dC_ptr,
                sdb, sdc):
    """Store channel sums s at line o, position ii of the map of dC where
    is_c, else of dB, where keep (tensors of one shape), asking the L2 to
    keep the lines (see :data:`_BC_POLICY`)."""
    bdb, odb, idb = _line(sdb[3], sdb[4], col, rev, n_outer, n_inner)
    bdc, odc, idc = _line(sdc[3], sdc[4], col, rev, n_outer, n_inner)
    ptr = tl.where(is_c, dC_ptr + b64 * sdc[0] + (g * sdc[1] + bdc + o * odc + ii * idc),
                   dB_ptr + b64 * sdb[0] + (g * sdb[1] + bdb + o * odb + ii * idb))
    tl.store(ptr, s.to(dB_ptr.dtype.element_ty), mask=(o < n_outer) & (ii < n_inner) & keep,
             eviction_policy=_BC_POLICY)


@triton.jit
def _store_lane_sums(s, ro, rj, n_outer, n_inner, col, rev, g, b64, dB_ptr, dC_ptr, sdb, sdc,
                     R: tl.constexpr, NJ: tl.constexpr):
    """Store the [32] lane sums of :func:`_lane_sums` (dB in lanes 0-15, dC
    in 16-31, each twice) at their steps of the chunk of runs (ro, rj)."""
    lane = tl.arange(0, 32)
    f = 4 * ((lane >> 1) & 1) + 2 * ((lane >> 2) & 1) + ((lane >> 3) & 1)
    sel = tl.arange(0, NJ)[:, None] == (f // R)[None, :]
    o = tl.sum(tl.where(sel, ro[:, None], 0), axis=0)
    ii = tl.sum(tl.where(sel, rj[:, None], 0), axis=0) * R + f % R
    _store_sums(s, o, ii, (lane & 16) != 0, (lane & 1) == 0, n_outer, n_inner, col, rev, g, b64,
                dB_ptr, dC_ptr, sdb, sdc)


@triton.jit
def _store_pair_lane_sums(s, ro, rj, n_outer, n_inner, col, rev, g, b64, dB_ptr, dC_ptr, sdb,
                          sdc, NJ: tl.constexpr, BD: tl.constexpr):
    """Store the [NJ, BD / 2] lane sums of :func:`_pair_lane_sums` at their
    steps of the chunk of runs (ro, rj) (runs of 4 steps)."""
    P: tl.constexpr = BD // 2
    lane = tl.arange(0, P)[None, :]
    step = 2 * ((lane & (P // 4)) != 0).to(tl.int32) + ((lane & (P // 8)) != 0).to(tl.int32)
    # flat [NJ * P], one value a thread: a [NJ, P] store took a layout with
    # the runs on the lanes, converted through shared memory
    n: tl.constexpr = NJ * P
    o = tl.reshape(tl.broadcast_to(ro[:, None], (NJ, P)), (n,))
    ii = tl.reshape(rj[:, None] * 4 + step, (n,))
    is_c = tl.reshape(tl.broadcast_to((lane & (P // 2)) != 0, (NJ, P)), (n,))
    keep = tl.reshape(tl.broadcast_to(lane % (P // 8) == 0, (NJ, P)), (n,))
    _store_sums(tl.reshape(s, (n,)), o, ii, is_c, keep, n_outer, n_inner, col, rev, g, b64,
                dB_ptr, dC_ptr, sdb, sdc)


@triton.jit
def _sum_channels(x, BD: tl.constexpr, NP: tl.constexpr):
    """Sum over the channels of a tile: [., ., BK] -> [., ., NP]."""
    if NP > 1:
        s = tl.sum(tl.reshape(x, (x.shape[0], x.shape[1], BD, NP)), axis=2)
    else:
        s = tl.sum(x, axis=2)[:, :, None]
    return s


@triton.jit
def _bc_state(nk, NP: tl.constexpr):
    """State index along the last axis of a B or C tile. With one state, B
    and C are the same for every channel of the tile: a tile of one channel,
    broadcast where used, is loaded once per step instead of once per
    channel (and holds fewer registers: the backward spilled with full
    tiles). Else a full tile like the other inputs."""
    if NP == 1:
        k = tl.zeros([1], dtype=tl.int32)
    else:
        k = nk
    return k


@triton.jit
def _bc_mask(steps, m3, NP: tl.constexpr):
    """Load mask of a B or C tile (see :func:`_bc_state`): the steps' mask
    of one channel with one state, else the channel-state mask m3."""
    if NP == 1:
        m = steps
    else:
        m = m3
    return m


@triton.jit
def _program(dir_bits, dim, per, N, N_DT, BD: tl.constexpr, NP: tl.constexpr,
             VEC: tl.constexpr, SHIFT: tl.constexpr, GROUPED: tl.constexpr):
    """Program coordinates, its direction code (2 bits of ``dir_bits`` per
    group, see :func:`pack_directions`), its channel-state pairs k -> (d, n)
    and two masks of them: ``kmask``, the pairs of this group, and
    ``kmask_ld``, the one the maps' loads take.

    With channel pairs (``VEC = 2``, see :func:`_layout`) the loads need a
    mask the compiler knows to be the same for both channels of a pair.
    Where groups have an even channel count that is ``kmask`` (asserted).
    Else (``SHIFT``: ungrouped maps, odd groups) a group's tiles start at
    the even channel at or below its first, and a pair is loaded whole when
    either channel is the group's: the other is a neighbouring group's, in
    bounds (the host checked that the map's channel count is even) and its
    values never stored (stores take ``kmask``; the forward only)."""
    pid = tl.program_id(0)
    g = pid // N_DT
    dtile = pid - g * N_DT
    k = tl.arange(0, BD * NP)
    nk = k % NP
    if VEC > 1 and not GROUPED:
        # d * s_channel addresses the maps: a multiple of VEC the compiler sees
        lo = VEC * ((g * per) // VEC) + dtile * BD
        d = lo + k // NP
        dl = d - g * per
    else:
        lo = g * per + dtile * BD            # (defined on every path; SHIFT's)
        dl = dtile * BD + k // NP
        d = g * per + dl
    if SHIFT:
        tl.static_assert(NP == 1)
        kmask = (dl >= 0) & (dl < per)
        pair = lo + VEC * (k // VEC) - g * per                         # dl of the pair's first
        kmask_ld = tl.max_constancy((pair + VEC - 1 >= 0) & (pair < per), [VEC])
    else:
        kmask = dl < per
        if VEC > 1:
            # per is even (the assertion goes on the compare: with one
            # state the compiler folds the & below away, and its attribute)
            kmask = tl.max_constancy(kmask, [VEC])
        kmask = kmask & (nk < N)
        kmask_ld = kmask
    code = (dir_bits >> (2 * (g % 16))) & 3
    return g, tl.program_id(1), tl.program_id(2), code, d, dl, nk, kmask, kmask_ld


@triton.jit
def _vs(s, VEC: tl.constexpr, GROUPED: tl.constexpr):
    """A map's strides (batch, group, channel, [state,] H, W), those but the
    channel's, the state's and (without ``GROUPED``) the unused group's
    given divided by VEC (see :func:`_layout`), as elements: the products
    tell the compiler that these offsets are multiples of VEC."""
    sg = s[1]
    if GROUPED:
        sg = sg * VEC
    if len(s) == 6:
        r = (s[0] * VEC, sg, s[2], s[3], s[4] * VEC, s[5] * VEC)
    else:
        r = (s[0] * VEC, sg, s[2], s[3] * VEC, s[4] * VEC)
    return r


# --------------------------------------------------------------------------- forward


@triton.jit
def _ckpt_off(b, c, d, nk, dim, NCH, N, CK_CM: tl.constexpr):
    """Offset of the state checkpoint of chunk c, channel d, state nk: in a
    (batch, dim, NCH, N) buffer, or with ``CK_CM`` (see :func:`scan_config`)
    a (batch, NCH, dim rounded up to even, N) one, whose channels are
    contiguous and whose row length the compiler sees even, so that channel
    pairs are stored as they are held."""
    if CK_CM:
        off = ((b * NCH + c) * (((dim + 1) // 2) * 2) + d) * N + nk
    else:
        off = ((b * dim + d) * NCH + c) * N + nk
    return off


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, z_ptr, y_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
                ckpt_ptr, last_ptr, sp_ptr, sh_ptr, dir_bits,
                dim, per, H, W, N, NCH, NSEG, CPS, N_DT,
                su0, sug, su1, su2, su3, sd0, sdg, sd1, sd2, sd3, sz0, szg, sz1, sz2, sz3,
                sy0, syg, sy1, syn, sy2, sy3, sb0, sb1, sb2, sb3, sb4, sc0, sc1, sc2, sc3, sc4,
                BD: tl.constexpr, NP: tl.constexpr, R: tl.constexpr, NJ: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, SUMMARY: tl.constexpr, SAVE_CKPT: tl.constexpr,
                STATES: tl.constexpr, SA: tl.constexpr,
                EVEN: tl.constexpr, GROUPED: tl.constexpr, VEC: tl.constexpr,
                SHIFT: tl.constexpr, MEM_T: tl.constexpr, CK_CM: tl.constexpr,
                U_POLICY: tl.constexpr, Y_POLICY: tl.constexpr):
    g, b, seg, code, d, dl, nk, kmask, kmask_ld = _program(dir_bits, dim, per, N, N_DT, BD, NP,
                                                           VEC, SHIFT, GROUPED)
    su0, sug, su1, su2, su3 = _vs((su0, sug, su1, su2, su3), VEC, GROUPED)
    sd0, sdg, sd1, sd2, sd3 = _vs((sd0, sdg, sd1, sd2, sd3), VEC, GROUPED)
    sz0, szg, sz1, sz2, sz3 = _vs((sz0, szg, sz1, sz2, sz3), VEC, GROUPED)
    sy0, syg, sy1, syn, sy2, sy3 = _vs((sy0, syg, sy1, syn, sy2, sy3), VEC, GROUPED)
    col, rev, n_outer, n_inner, rpl, n_ch = _geom(code, H, W, R, NJ)
    bu, ou, iu = _line(su2, su3, col, rev, n_outer, n_inner)
    bd_, od, id_ = _line(sd2, sd3, col, rev, n_outer, n_inner)
    bb, ob, ib = _line(sb3, sb4, col, rev, n_outer, n_inner)
    # 64-bit batch offsets once; per-item offsets are 32-bit
    b64 = b.to(tl.int64)
    u_b = u_ptr + b64 * su0
    dt_b = dt_ptr + b64 * sd0
    B_b = B_ptr + b64 * sb0
    u_ch = _chan(sug, su1, g, d, dl, GROUPED)
    dt_ch = _chan(sdg, sd1, g, d, dl, GROUPED)
    bc_k = _bc_state(nk, NP)
    b_ch = g * sb1 + bc_k * sb2
    bc, oc, ic = _line(sc3, sc4, col, rev, n_outer, n_inner)
    C_b = C_ptr + b64 * sc0
    c_ch = g * sc1 + bc_k * sc2
    dn = (b * dim + d) * N + nk                                          # [BK]
    A = tl.load(A_ptr + d * N + nk, mask=kmask, other=0.0)
    # (defined on every path: the compiler needs them in scope in the loop)
    Dv = tl.zeros([BD * NP], dtype=tl.float32)
    bias = tl.zeros([BD * NP], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=kmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=kmask, other=0.0)
    c_start = seg * CPS
    c_end = tl.minimum(c_start + CPS, n_ch)

    h = _carry(tl.zeros([BD * NP], dtype=tl.float32), SA)
    p_seg = _carry(tl.full([BD * NP], 1.0, tl.float32), SA)
    if not SUMMARY:
        # Start state of this segment: chain the summaries of earlier ones.
        for s in range(0, seg):
            soff = _carry(((b * dim + d) * NSEG + s) * N + nk, SA)
            h = (tl.load(sp_ptr + soff, mask=_carry(kmask, SA), other=1.0) * h
                 + tl.load(sh_ptr + soff, mask=_carry(kmask, SA), other=0.0))
    # The next chunk's inputs are loaded before this chunk is scanned, so
    # their memory latency overlaps the scan (the loop is a serial chain).
    dq = NJ // rpl
    dr = NJ - dq * rpl
    runs = _runs(c_start, rpl, NJ)
    o, ii, valid = _slots(runs, n_outer, n_inner, R, SA, EVEN)
    m3 = valid[:, :, None] & kmask_ld[None, None, :] & (c_start < c_end)
    u_n = _ld(u_b + _off(u_ch, bu, ou, iu, o, ii, SA == 1), m3, 0.0, MEM_T, U_POLICY)
    dt_n = _ld(dt_b + _off(dt_ch, bd_, od, id_, o, ii, SA == 1), m3, 0.0, MEM_T, '')
    B_n = _ld(B_b + _off(b_ch, bb, ob, ib, o, ii, False),
              _bc_mask(valid[:, :, None] & (c_start < c_end), m3, NP), 0.0, MEM_T, '')
    # C too (not in the states mode, which has none): loaded in its own
    # iteration, its latency was exposed before the y stores (ncu).
    C_n = tl.zeros(B_n.shape, B_n.dtype)
    if not (STATES or SUMMARY):
        C_n = _ld(C_b + _off(c_ch, bc, oc, ic, o, ii, False),
                  _bc_mask(valid[:, :, None] & (c_start < c_end), m3, NP), 0.0, MEM_T, '')
    for c in range(c_start, c_end):
        u = u_n.to(tl.float32)
        dt_raw = dt_n.to(tl.float32)
        Bv = B_n.to(tl.float32)
        Cv = C_n.to(tl.float32)
        runs_n = _shift_runs(runs[0], runs[1], dq, dr, rpl, True)
        o, ii, valid = _slots(runs_n, n_outer, n_inner, R, SA, EVEN)
        m3 = valid[:, :, None] & kmask_ld[None, None, :] & (c + 1 < c_end)
        u_n = _ld(u_b + _off(u_ch, bu, ou, iu, o, ii, SA == 1), m3, 0.0, MEM_T, U_POLICY)
        dt_n = _ld(dt_b + _off(dt_ch, bd_, od, id_, o, ii, SA == 1), m3, 0.0, MEM_T, '')
        B_n = _ld(B_b + _off(b_ch, bb, ob, ib, o, ii, False),
                  _bc_mask(valid[:, :, None] & (c + 1 < c_end), m3, NP), 0.0, MEM_T, '')
        if not (STATES or SUMMARY):
            C_n = _ld(C_b + _off(c_ch, bc, oc, ic, o, ii, False),
                      _bc_mask(valid[:, :, None] & (c + 1 < c_end), m3, NP), 0.0, MEM_T, '')
        o, ii, valid = _slots(runs, n_outer, n_inner, R, SA, EVEN)
        runs = runs_n
        m3 = valid[:, :, None] & kmask[None, None, :]
        dtv, _ = _delta(dt_raw, bias, m3, HAS_BIAS, SOFTPLUS)
        if SAVE_CKPT:
            tl.store(ckpt_ptr + _carry(_ckpt_off(b, c, d, nk, dim, NCH, N, CK_CM), SA), h,
                     mask=_carry(kmask, SA))
        hs, h_next, p_chunk = _scan_chunk(_exp(dtv * A[None, None, :]), dtv * u * Bv, h, R, NJ,
                                          SA)
        h = h_next
        if SUMMARY:
            p_seg = p_seg * p_chunk
        elif STATES:
            by, oy, iy = _line(sy2, sy3, col, rev, n_outer, n_inner)
            off_y = _off(_chan(syg, sy1, g, d, dl, GROUPED) + nk * syn, by, oy, iy, o, ii, SA == 1)
            _st(y_ptr + b64 * sy0 + off_y, hs, m3, MEM_T, '')
        else:
            y = _sum_states(hs * Cv, BD, NP)
            if HAS_D:
                y = y + Dv[None, None, :] * u
            if HAS_Z:
                bz, oz, iz = _line(sz2, sz3, col, rev, n_outer, n_inner)
                off_z = _off(_chan(szg, sz1, g, d, dl, GROUPED), bz, oz, iz, o, ii, SA == 1)
                zv = _ld(z_ptr + b64 * sz0 + off_z, m3, 0.0, MEM_T, '').to(tl.float32)
                y = y * zv * _sigmoid(zv)
            by, oy, iy = _line(sy2, sy3, col, rev, n_outer, n_inner)
            off_y = _off(_chan(syg, sy1, g, d, dl, GROUPED), by, oy, iy, o, ii, SA == 1)
            _st(y_ptr + b64 * sy0 + off_y, y.to(y_ptr.dtype.element_ty),
                m3 & (nk == 0)[None, None, :], MEM_T, Y_POLICY)
    if SUMMARY:
        soff = _carry(((b * dim + d) * NSEG + seg) * N + nk, SA)
        tl.store(sp_ptr + soff, p_seg, mask=_carry(kmask, SA))
        tl.store(sh_ptr + soff, h, mask=_carry(kmask, SA))
    else:
        if (c_start < n_ch) & (c_end == n_ch):
            tl.store(last_ptr + _carry(dn, SA), h, mask=_carry(kmask, SA))


# --------------------------------------------------------------------------- backward


@triton.jit
def _bwd_loads(runs, live, n_outer, n_inner, col, rev, kmask, b64, g, d, dl, nk,
               u_ptr, dt_ptr, z_ptr, dy_ptr, B_ptr, C_ptr, su, sd, sz, sdy, sb, sc,
               R: tl.constexpr, HAS_Z: tl.constexpr, STATES: tl.constexpr,
               FULL: tl.constexpr, NP: tl.constexpr, SA: tl.constexpr,
               EVEN: tl.constexpr, GROUPED: tl.constexpr, MEM_T: tl.constexpr):
    """Raw [NJ, R, BK] tiles of a chunk's runs (see :func:`_runs`) for the
    backward (all-masked unless live): delta, u, B, dy (or the states'
    gradient: its state stride is 0 for y), C, z. Without FULL (the summary
    pass) only what the reverse recurrence needs."""
    o, ii, valid = _slots(runs, n_outer, n_inner, R, SA, EVEN)
    m3 = valid[:, :, None] & kmask[None, None, :] & live
    bd_, od, id_ = _line(sd[3], sd[4], col, rev, n_outer, n_inner)
    dt = _ld(dt_ptr + b64 * sd[0] + _off(_chan(sd[1], sd[2], g, d, dl, GROUPED), bd_, od, id_,
                                         o, ii, SA == 1), m3, 0.0, MEM_T, '')
    by, oy, iy = _line(sdy[4], sdy[5], col, rev, n_outer, n_inner)
    dy = _ld(dy_ptr + b64 * sdy[0] + _off(_chan(sdy[1], sdy[2], g, d, dl, GROUPED)
                                          + nk * sdy[3], by, oy, iy, o, ii, SA == 1),
             m3, 0.0, MEM_T, '')
    # (defined on every path: compiled Triton keeps only names that exist on
    # every path, even for a constexpr condition)
    u = tl.zeros([valid.shape[0], valid.shape[1], dl.shape[0]], dtype=u_ptr.dtype.element_ty)
    bc_k = _bc_state(nk, NP)
    m_bc = _bc_mask(valid[:, :, None] & live, m3, NP)
    Bv = tl.zeros([valid.shape[0], valid.shape[1], bc_k.shape[0]], dtype=B_ptr.dtype.element_ty)
    Cv = tl.zeros([valid.shape[0], valid.shape[1], bc_k.shape[0]], dtype=C_ptr.dtype.element_ty)
    zv = tl.zeros([valid.shape[0], valid.shape[1], dl.shape[0]], dtype=z_ptr.dtype.element_ty)
    if FULL:
        bu, ou, iu = _line(su[3], su[4], col, rev, n_outer, n_inner)
        u = _ld(u_ptr + b64 * su[0] + _off(_chan(su[1], su[2], g, d, dl, GROUPED), bu, ou, iu,
                                           o, ii, SA == 1), m3, 0.0, MEM_T, '')
        bb, ob, ib = _line(sb[3], sb[4], col, rev, n_outer, n_inner)
        Bv = _ld(B_ptr + b64 * sb[0] + _off(g * sb[1] + bc_k * sb[2], bb, ob, ib, o, ii, False),
                 m_bc, 0.0, MEM_T, '')
    if not STATES:
        bc, oc, ic = _line(sc[3], sc[4], col, rev, n_outer, n_inner)
        Cv = _ld(C_ptr + b64 * sc[0] + _off(g * sc[1] + bc_k * sc[2], bc, oc, ic, o, ii, False),
                 m_bc, 0.0, MEM_T, '')
    if HAS_Z:
        bz, oz, iz = _line(sz[3], sz[4], col, rev, n_outer, n_inner)
        zv = _ld(z_ptr + b64 * sz[0] + _off(_chan(sz[1], sz[2], g, d, dl, GROUPED), bz, oz, iz,
                                            o, ii, SA == 1), m3, 0.0, MEM_T, '')
    return dt, u, Bv, dy, Cv, zv


@triton.jit(do_not_specialize=['ck_sd'])
def _bwd_kernel(u_ptr, dt_ptr, z_ptr, dy_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
                ckpt_ptr, ck_sb, ck_sc, ck_sd, dlast_ptr, sq_ptr, sg_ptr,
                du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, part_ptr, dir_bits,
                dim, per, H, W, N, NCH, NSEG, CPS, N_DT,
                su, sd, sz, sdy, sdu, sddt, sdz, sb, sc, sdb, sdc,
                BD: tl.constexpr, NP: tl.constexpr, R: tl.constexpr, NJ: tl.constexpr,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, SUMMARY: tl.constexpr, HAS_DLAST: tl.constexpr,
                ATOMIC_BC: tl.constexpr, STATES: tl.constexpr, SA: tl.constexpr,
                EVEN: tl.constexpr, GROUPED: tl.constexpr, VEC: tl.constexpr,
                SHIFT: tl.constexpr, MEM_T: tl.constexpr, LANE_SUMS: tl.constexpr):
    # (no pairs shifted over a group's edge: their neighbour's channels would
    # enter the sums over channels, dB and dC; see _layout)
    tl.static_assert(not SHIFT)
    g, b, seg, code, d, dl, nk, kmask, kmask_ld = _program(dir_bits, dim, per, N, N_DT, BD, NP,
                                                           VEC, SHIFT, GROUPED)
    su, sd, sz = _vs(su, VEC, GROUPED), _vs(sd, VEC, GROUPED), _vs(sz, VEC, GROUPED)
    sdy, sdu = _vs(sdy, VEC, GROUPED), _vs(sdu, VEC, GROUPED)
    sddt, sdz = _vs(sddt, VEC, GROUPED), _vs(sdz, VEC, GROUPED)
    col, rev, n_outer, n_inner, rpl, n_ch = _geom(code, H, W, R, NJ)
    b64 = b.to(tl.int64)
    A = tl.load(A_ptr + d * N + nk, mask=kmask, other=0.0)
    # (defined on every path: the compiler needs them in scope in the loop)
    Dv = tl.zeros([BD * NP], dtype=tl.float32)
    bias = tl.zeros([BD * NP], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=kmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=kmask, other=0.0)
    nn = tl.arange(0, NP)
    first_k = (nk == 0)[None, None, :]
    c_start = seg * CPS
    c_end = tl.minimum(c_start + CPS, n_ch)

    # x: the decayed gradient a_{t+1} dh_{t+1} reaching this segment's last
    # step t (see _rscan_chunk), chained from the final-state gradient (x of
    # the sequence's last step) through the later segments.
    x = _carry(tl.zeros([BD * NP], dtype=tl.float32), SA)
    q_seg = _carry(tl.full([BD * NP], 1.0, tl.float32), SA)
    if not SUMMARY:
        if HAS_DLAST:
            x = tl.load(dlast_ptr + _carry((b * dim + d) * N + nk, SA), mask=_carry(kmask, SA),
                        other=0.0)
        n_seg_g = tl.cdiv(n_ch, CPS)
        for j in range(0, n_seg_g - 1 - seg):
            soff = _carry(((b * dim + d) * NSEG + (n_seg_g - 1 - j)) * N + nk, SA)
            x = (tl.load(sq_ptr + soff, mask=_carry(kmask, SA), other=1.0) * x
                 + tl.load(sg_ptr + soff, mask=_carry(kmask, SA), other=0.0))
    dA_acc = tl.zeros([NJ, BD * NP], dtype=tl.float32)
    dD_acc = tl.zeros([NJ, BD * NP], dtype=tl.float32)
    dbias_acc = tl.zeros([NJ, BD * NP], dtype=tl.float32)
    # The next (earlier) chunk's inputs are loaded before this chunk is
    # processed, so their latency overlaps the work (the loop is a serial chain).
    dq = NJ // rpl
    dr = NJ - dq * rpl
    runs = _runs(c_end - 1, rpl, NJ)
    dt_n, u_n, B_n, dy_n, C_n, z_n = _bwd_loads(
        runs, c_start < c_end, n_outer, n_inner, col, rev, kmask_ld, b64, g, d, dl, nk,
        u_ptr, dt_ptr, z_ptr, dy_ptr, B_ptr, C_ptr, su, sd, sz, sdy, sb, sc,
        R, HAS_Z, STATES, not SUMMARY, NP, SA, EVEN, GROUPED, MEM_T)
    # The chunk-start checkpoints are prefetched with the inputs: with one
    # run per chunk (14x14 maps) their load latency was exposed every chunk.
    # (in either layout, see _ckpt_off; the channel stride ck_sd is not
    # specialised: with the checkpoints' channels known contiguous Triton
    # laid the backward out otherwise, and the H100 ran the bf16 stage-3
    # backward of B in 134 us instead of 118)
    ck = _carry(b * ck_sb + d * ck_sd + nk, SA)
    ck_mask = _carry(kmask, SA)
    h0_n = tl.zeros(ck.shape, tl.float32)
    if not SUMMARY:
        h0_n = tl.load(ckpt_ptr + ck + (c_end - 1) * ck_sc, mask=ck_mask & (c_start < c_end),
                       other=0.0)
    for j in range(0, c_end - c_start):
        c = c_end - 1 - j
        dt_r, u_r, B_r, dy_r, C_r, z_r = dt_n, u_n, B_n, dy_n, C_n, z_n
        runs_n = _shift_runs(runs[0], runs[1], dq, dr, rpl, False)
        dt_n, u_n, B_n, dy_n, C_n, z_n = _bwd_loads(
            runs_n, c - 1 >= c_start, n_outer, n_inner, col, rev, kmask_ld, b64, g, d, dl, nk,
            u_ptr, dt_ptr, z_ptr, dy_ptr, B_ptr, C_ptr, su, sd, sz, sdy, sb, sc,
            R, HAS_Z, STATES, not SUMMARY, NP, SA, EVEN, GROUPED, MEM_T)
        h0 = h0_n
        if not SUMMARY:
            h0_n = tl.load(ckpt_ptr + ck + (c - 1) * ck_sc, mask=ck_mask & (c - 1 >= c_start),
                           other=0.0)
        o, ii, valid = _slots(runs, n_outer, n_inner, R, SA, EVEN)
        ro, rj = runs
        runs = runs_n
        m3 = valid[:, :, None] & kmask[None, None, :]
        dtv, dsp = _delta(dt_r.to(tl.float32), bias, m3, HAS_BIAS, SOFTPLUS)
        a = _exp(dtv * A[None, None, :])                                # 1 on padding
        dy = dy_r.to(tl.float32)
        Cv = C_r.to(tl.float32)
        zv = z_r.to(tl.float32)
        zs = zv
        gy = dy
        if HAS_Z:
            zs = _sigmoid(zv)
            gy = dy * zv * zs
        if STATES:
            gsrc = dy                       # the states' own gradient is the injection g_t
        else:
            gsrc = Cv * gy
        dhs, x, q_chunk = _rscan_chunk(a, gsrc, x, R, NJ, SA)
        if SUMMARY:
            q_seg = q_seg * q_chunk
        else:
            u = u_r.to(tl.float32)
            Bv = B_r.to(tl.float32)
            # Recompute the chunk's states from its checkpoint h0.
            bx = dtv * u * Bv
            hs, _, _ = _scan_chunk(a, bx, h0, R, NJ, SA)
            store_d = m3 & first_k                                      # one state per channel
            if HAS_Z:
                y0 = _sum_states(hs * Cv, BD, NP)
                if HAS_D:
                    y0 = y0 + Dv[None, None, :] * u
                dzv = dy * y0 * zs * (1.0 + zv * (1.0 - zs))
                bz, oz, iz = _line(sdz[3], sdz[4], col, rev, n_outer, n_inner)
                off_dz = _off(_chan(sdz[1], sdz[2], g, d, dl, GROUPED), bz, oz, iz, o, ii, SA == 1)
                _st(dz_ptr + b64 * sdz[0] + off_dz, dzv.to(dz_ptr.dtype.element_ty), store_d,
                    MEM_T, '')
            ta = dhs * (hs - bx)                                         # dh_t a_t h_{t-1}
            dhB = dhs * Bv
            ddt = _sum_states(dhB * u + ta * A[None, None, :], BD, NP)
            du = _sum_states(dhB, BD, NP) * dtv
            if HAS_D:
                du = du + Dv[None, None, :] * gy
                dD_acc += tl.sum(gy * u, axis=SA)
            dA_acc += tl.sum(ta * dtv, axis=SA)
            ddt = tl.where(m3, ddt * dsp, 0.0)
            dbias_acc += tl.sum(ddt, axis=SA)
            bdu, odu, idu = _line(sdu[3], sdu[4], col, rev, n_outer, n_inner)
            off_du = _off(_chan(sdu[1], sdu[2], g, d, dl, GROUPED), bdu, odu, idu, o, ii, SA == 1)
            _st(du_ptr + b64 * sdu[0] + off_du, du.to(du_ptr.dtype.element_ty), store_d, MEM_T, '')
            bdd, odd, idd = _line(sddt[3], sddt[4], col, rev, n_outer, n_inner)
            off_ddt = _off(_chan(sddt[1], sddt[2], g, d, dl, GROUPED), bdd, odd, idd, o, ii,
                           SA == 1)
            _st(ddt_ptr + b64 * sddt[0] + off_ddt, ddt.to(ddt_ptr.dtype.element_ty), store_d,
                MEM_T, '')
            # dB, dC: reduced over the tile's channels, one value per (step, state)
            if LANE_SUMS == 1:
                _store_lane_sums(_lane_sums(dhs * (dtv * u), hs * gy, BD), ro, rj, n_outer,
                                 n_inner, col, rev, g, b64, dB_ptr, dC_ptr, sdb, sdc, R, NJ)
            elif LANE_SUMS == 2:
                _store_pair_lane_sums(_pair_lane_sums(dhs * (dtv * u), hs * gy, NJ, BD), ro, rj,
                                      n_outer, n_inner, col, rev, g, b64, dB_ptr, dC_ptr, sdb,
                                      sdc, NJ, BD)
            else:
                mbc = valid[:, :, None] & (nn < N)[None, None, :]
                bdb, odb, idb = _line(sdb[3], sdb[4], col, rev, n_outer, n_inner)
                off_db = b64 * sdb[0] + _off(g * sdb[1] + nn * sdb[2], bdb, odb, idb, o, ii, False)
                dBt = _sum_channels(dhs * (dtv * u), BD, NP)
                if ATOMIC_BC:
                    _add(dB_ptr + off_db, dBt, mbc, MEM_T)
                else:
                    _st(dB_ptr + off_db, dBt.to(dB_ptr.dtype.element_ty), mbc, MEM_T,
                        _BC_POLICY)
                if not STATES:
                    bdc, odc, idc = _line(sdc[3], sdc[4], col, rev, n_outer, n_inner)
                    off_dc = b64 * sdc[0] + _off(g * sdc[1] + nn * sdc[2], bdc, odc, idc, o, ii,
                                                 False)
                    dCt = _sum_channels(hs * gy, BD, NP)
                    if ATOMIC_BC:
                        _add(dC_ptr + off_dc, dCt, mbc, MEM_T)
                    else:
                        _st(dC_ptr + off_dc, dCt.to(dC_ptr.dtype.element_ty), mbc, MEM_T,
                            _BC_POLICY)
    if SUMMARY:
        soff = _carry(((b * dim + d) * NSEG + seg) * N + nk, SA)
        tl.store(sq_ptr + soff, q_seg, mask=_carry(kmask, SA))
        tl.store(sg_ptr + soff, x, mask=_carry(kmask, SA))
    else:
        # this program's row of the partials (batch * NSEG, dim, N + 2):
        # dA in [..., :N], dD in [..., N], d(delta_bias) in [..., N + 1]
        poff = ((b * NSEG + seg) * dim + d) * (N + 2)
        tl.store(part_ptr + poff + nk, tl.sum(dA_acc, axis=0), mask=kmask)
        first = kmask & (nk == 0)
        tl.store(part_ptr + poff + N, tl.sum(dD_acc, axis=0), mask=first)
        tl.store(part_ptr + poff + N + 1, tl.sum(dbias_acc, axis=0), mask=first)


@triton.jit
def _sum_partials_kernel(part_ptr, dA_ptr, dD_ptr, dbias_ptr, rows, cols, N,
                         HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dA (dim, N), dD (dim,) and d(delta_bias) (dim,), each in its output's
    dtype, from the backward's partials ``part`` (rows, dim, N + 2) summed
    over rows (one per batch element and segment) in a fixed order; ``cols``
    = dim * (N + 2), one program per BLOCK_C of them."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < cols
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        acc += tl.sum(tl.load(part_ptr + r[:, None] * cols + c[None, :],
                              mask=(r[:, None] < rows) & cmask[None, :], other=0.0), axis=0)
    d, k = c // (N + 2), c % (N + 2)
    tl.store(dA_ptr + d * N + k, acc.to(dA_ptr.dtype.element_ty), mask=cmask & (k < N))
    if HAS_D:
        tl.store(dD_ptr + d, acc.to(dD_ptr.dtype.element_ty), mask=cmask & (k == N))
    if HAS_BIAS:
        tl.store(dbias_ptr + d, acc.to(dbias_ptr.dtype.element_ty), mask=cmask & (k == N + 1))


# --------------------------------------------------------------------------- host side


def _map_strides(t: Optional[torch.Tensor], groups: int, states: bool = False
                 ) -> Tuple[int, ...]:
    """Strides (batch, group, channel in group, [state,] H, W) of a map
    given as (batch, dim, [N,] H, W), whose group stride is dim / G channel
    strides, or as (batch, G, dim / G, [N,] H, W), whose groups may lie
    anywhere (e.g. each group's map contiguous: every 128-byte line then
    belongs to one scan direction). Zeros for an absent map."""
    if t is None:
        return (0,) * (6 if states else 5)
    st = tuple(t.stride())
    if t.dim() == (5 if states else 4):
        per = t.shape[1] // groups
        st = (st[0], per * st[1]) + st[1:]
    return st


def _vec(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-channel parameters as contiguous fp32 (tiny); a dummy when absent."""
    return like if t is None else t.detach().to(torch.float32).contiguous()


def _l2_policy(t: torch.Tensor, groups: int, l2_bytes: Optional[int] = None) -> str:
    """The forward's L2 eviction policy for u's loads and y's stores, decided
    on u: 'evict_last' where the groups share its cache lines (a pixel's
    groups adjacent, channels innermost: channels-last maps) and the map is
    well over the L2's size (1.5x), else the default ''.

    Each group scans its own direction, so a line that holds several groups'
    channels is read (for y: written) by their programs at different times.
    Over the L2's size it was evicted in between and read again from DRAM
    (23 MB more for GroupMamba-T's stage 1, docs/benchmarks.md). Marked to
    stay, T's fp32 stage-1 forward took 148 us instead of 154, B's 256
    instead of 260 on an H100; maps that fit (T stages 2-4, bf16 stage 1)
    gained nothing or lost 1-2%. ``CONFIG_OVERRIDE['EVICT_LAST']`` (0 or 1)
    overrides the rule. ``l2_bytes``: the cache's size (default the
    device's; off CUDA no policy)."""
    per = map_shape(t)[1] // groups
    st = _map_strides(t, groups)
    rule = st[2] == 1 and st[1] == per and t.numel() * t.element_size() > 1.5 * (
        l2_bytes if l2_bytes is not None
        else torch.cuda.get_device_properties(t.device).L2_cache_size if t.is_cuda
        else float('inf'))
    return 'evict_last' if CONFIG_OVERRIDE.get('EVICT_LAST', rule) else ''


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_item_size(*tensors: Optional[torch.Tensor]) -> None:
    """Offsets within one batch item are 32-bit in the kernels."""
    for t in tensors:
        if t is not None and t.dim() > 0 and t.shape[0] and (t.numel() // t.shape[0]) >= 2 ** 31:
            raise ValueError(f'selective scan: one batch item of a {tuple(t.shape)} tensor has '
                             '>= 2**31 elements; the Triton kernels index items with 32 bits')


def _step_axis(cfg: Dict[str, int], per: int, *strides: Tuple[int, ...]) -> int:
    """The tiles' step axis (``SA`` of the kernels, see :func:`_off`): 1,
    tiles [NJ, R, BK] with the steps inside a thread, when every map read or
    written per channel (``strides``: those of :func:`_map_strides`, of the
    maps given) has channel stride 1 and there is one state (a tile's last
    axis is then the channels); else 0, tiles [R, NJ, BK]."""
    ok = cfg['NP'] == 1 and cfg['BD'] > 1 and all(per == 1 or st[2] == 1 for st in strides)
    return 1 if ok else 0


def _grouped(per: int, *strides: Tuple[int, ...]) -> bool:
    """Whether some map's group stride is not ``per`` channel strides (a
    grouped map, see :func:`_map_strides`): the kernels' ``GROUPED``."""
    return any(st[1] != per * st[2] for st in strides)


def _layout(cfg: Dict[str, int], groups: int, per: int, *strides: Tuple[int, ...],
            shift: bool = True) -> Dict[str, int]:
    """The kernels' layout flags for maps with these strides (those of
    :func:`_map_strides`): ``SA`` (:func:`_step_axis`), ``GROUPED``
    (:func:`_grouped`), and ``VEC``, ``SHIFT``.

    ``VEC = 2`` where the tiles hold channel pairs (``SA = 1``) and every
    stride but the channel's (and, for ungrouped maps, the group's) is even:
    the kernels take those strides halved and multiply them by 2, so the
    compiler can prove each pair 8-byte aligned (4 for 16-bit types) and
    loads and stores it as one vector. Without, it proves that only where
    the group and the strides are multiples of 16 (Triton's integer
    specialisation; there ``VEC`` stays 1, see :func:`_proven`), and loaded
    one channel a request elsewhere: GroupMamba-T stage 3 (87 channels a
    group), B stages 1 and 3 (24, 106). The B stage-3 forward took 85 us
    with single channels and 65 with pairs (docs/benchmarks.md).
    ``SHIFT``: ungrouped maps with groups of an odd channel count start
    each group's tile at the even channel below its first (see
    :func:`_program`); with even groups, or the maps grouped, no shift.
    Without ``shift`` (the backward) odd groups keep single channels: the
    neighbour's channel of a shifted pair would need zeroing before the sums
    over channels (dB, dC), and with those selects the backward spilled at
    255 registers and ran slower (Mask R-CNN stage 3 82 -> 95 us on an
    H100, T stage 3 with 4-step runs 152 -> 177).
    Compiled, pairs are taken only where the tile has channel pairs and
    runs enough for every thread (``BD / 2 * NJ >= 32 * num_warps``): else
    Triton would spread a run's steps over lanes or warps (the scans along
    a run would cross threads). ``cfg['VEC']`` = 1 turns the vectors off (a
    test and benchmark hook).
    """
    sa = _step_axis(cfg, per, *strides)
    grouped = _grouped(per, *strides)
    fits = _INTERPRET or cfg['BD'] // 2 * cfg['NJ'] >= 32 * cfg['num_warps']
    # a pair never leaves the map's channels: odd groups only shift
    # inside an even channel count
    pairs_in = per % 2 == 0 or (shift and not grouped and groups * per % 2 == 0)
    scaled = _scaled(grouped, *strides)
    vec = 2 if (sa == 1 and fits and pairs_in and not _proven(per, grouped, *strides)
                and cfg.get('VEC', 2) == 2 and all(v % 2 == 0 for v in scaled)) else 1
    return dict(SA=sa, GROUPED=grouped, VEC=vec, SHIFT=vec == 2 and not grouped and per % 2 == 1,
                MEM_T=int(sa == 1 and cfg.get('MEM_T', _ties_last())))


def _ties_last() -> bool:
    """Whether this Triton breaks contiguity ties last axis first (3.7 and
    later), so that the kernels' memory ops take the [NJ, R, BK] tiles
    (steps inside a thread, ``SA = 1``) transposed (``MEM_T``, see
    :func:`_ld`).

    Triton's coalescing orders a load's or store's axes by their contiguity
    and breaks ties (runs and steps: both 1) by axis index: the first axis
    first up to 3.6, the last first from 3.7. On [NJ, R, BK] the newer rule
    puts a run's steps across lanes: with triton 3.8 the GroupMamba-T
    stage-1 loops compiled to 1098 instructions instead of 585 (forward) and
    to 2468 with a spill instead of 1108 (backward; ``tools/scan_sass.py``),
    and ran 1.6-2.1x slower on an H100 (``tools/scan_cubins.py``). On the
    transpose [R, NJ, BK] the last-first rule gives the lanes to the runs, as
    the first-first rule does on [NJ, R, BK]. ``cfg['MEM_T']`` (0 or 1)
    overrides this version check in :func:`_layout` (a test and benchmark
    hook)."""
    return tuple(int(v) for v in triton.__version__.split('.')[:2]) >= (3, 7)


def _lane_sums_mode(cfg: Dict[str, int], layout: Dict[str, int], per: int,
                    *strides: Tuple[int, ...]) -> int:
    """How the backward sums dB and dC over channels (``LANE_SUMS``): 0 by
    ``tl.sum``; 1 by the lanes' reduce-scatter of :func:`_lane_sums`; 2 by
    that of :func:`_pair_lane_sums`. Both are compiled only (inline PTX
    shuffles), for one state with the steps inside a thread, and rely on the
    tile's layout, which these conditions fix:

    - 1: a thread per channel (single channels, where Triton cannot prove
      pairs either), a channel per lane (``BD = 32 * warps``), 8 steps a
      thread (``NJ * R``): GroupMamba's stage-3 tiles;
    - 2: channel pairs (ours, ``VEC = 2``, or proven by Triton, see
      :func:`_proven`), runs of 4 steps, the BD / 2 pairs on 8 to 32 lanes
      and the runs on the other lanes and the warps (``NJ * BD / 2 = 32 *
      warps``): the tiles of stages 1 and 2 and of the dense maps' stage 1
      (``tests/ops/test_scan_layout.py`` checks that layout).

    The backward's host adds what the stores need: dB and dC stored
    directly (one tile per group, not the states mode) and of one dtype
    (one store takes both). ``cfg['LANE_SUMS']`` = 0 turns both off (a
    test and benchmark hook)."""
    if _INTERPRET or cfg.get('LANE_SUMS', 1) == 0 or cfg['NP'] != 1 or layout['SA'] != 1:
        return 0
    pairs = layout['VEC'] == 2 or _proven(per, layout['GROUPED'], *strides)
    if not pairs and cfg['BD'] == 32 * cfg['num_warps'] and cfg['NJ'] * cfg['R'] == 8:
        return 1
    if (pairs and cfg['R'] == 4 and cfg['BD'] in (16, 32, 64)
            and cfg['NJ'] * cfg['BD'] // 2 == 32 * cfg['num_warps']):
        return 2
    return 0


def _scaled(grouped: bool, *strides: Tuple[int, ...]) -> List[int]:
    """The strides :func:`_halve` divides by ``VEC``."""
    return [v for st in strides for i, v in enumerate(st) if i not in _unscaled(st, grouped)]


def _proven(per: int, grouped: bool, *strides: Tuple[int, ...]) -> bool:
    """Whether Triton proves channel pairs aligned itself: where per and the
    strides of :func:`_scaled` are multiples of 16 (its integer
    specialisation). The kernels then take ``VEC = 1`` and stay as they were
    (with the explicit products an H100 ran the backward of T stages 2 and
    4 2-3% slower, the same instructions scheduled otherwise)."""
    return per % 16 == 0 and all(v % 16 == 0 for v in _scaled(grouped, *strides))


def _unscaled(st: Tuple[int, ...], grouped: bool) -> Tuple[int, ...]:
    """Indices of a stride tuple that :func:`_halve` keeps (as the kernels'
    ``_vs``): the channel's, the state's (of 6 strides), and the group's
    where ``GROUPED`` is off (the kernels then take ``d * s_channel``, see
    :func:`_chan`)."""
    return (2,) + ((3,) if len(st) == 6 else ()) + (() if grouped else (1,))


def _halve(st: Tuple[int, ...], layout: Dict[str, int]) -> Tuple[int, ...]:
    """Strides as the kernels take them: divided by ``VEC`` (see :func:`_layout`)."""
    keep = _unscaled(st, layout['GROUPED'])
    return tuple(v if i in keep else v // layout['VEC'] for i, v in enumerate(st))


def pack_directions(codes: Sequence[int]) -> int:
    """Direction codes as one int32 kernel argument, 2 bits per group.

    A scalar, not a device tensor: building a CUDA tensor from a host list
    is a blocking copy that would synchronise the stream at every call.
    Group g reads the code of group ``g % 16``, so more than 16 groups need
    a direction pattern that repeats every 16 groups (e.g. all the same).
    """
    if any(c != codes[i % 16] for i, c in enumerate(codes)):
        raise ValueError(f'directions: with more than 16 groups the Triton kernels need the '
                         f'directions to repeat every 16 groups, got {len(codes)} groups '
                         f'{list(codes)}')
    bits = 0
    for i, c in enumerate(codes[:16]):
        bits |= int(c) << (2 * i)
    return bits - (1 << 32) if bits >= 1 << 31 else bits


def ckpt_shape(u: torch.Tensor, B: torch.Tensor, codes: Sequence[int]) -> Tuple[int, ...]:
    """Shape of the chunk-start state checkpoints the forward saves."""
    batch, dim, height, width = map_shape(u)
    cfg = scan_config(batch, dim, B.shape[1], B.shape[2], height, width, codes, u.is_cuda)
    return _ckpt_shape(batch, dim, B.shape[2], cfg)


def _ckpt_shape(batch: int, dim: int, n_state: int, cfg: Dict[str, int]) -> Tuple[int, ...]:
    """(batch, dim, NCH, N), or chunk-major with ``CK_CM`` (see :func:`_ckpt_off`)."""
    if cfg['CK_CM']:
        return (batch, cfg['NCH'], dim + dim % 2, n_state)
    return (batch, dim, cfg['NCH'], n_state)


def _ckpt_strides(ckpt: torch.Tensor, cfg: Dict[str, int]) -> Tuple[int, int, int]:
    """Strides of a checkpoint buffer's batch, chunk and channel."""
    s = ckpt.stride()
    return (s[0], s[1], s[2]) if cfg['CK_CM'] else (s[0], s[2], s[1])


def selective_scan_2d_fwd_triton(u, delta, A, B, C, codes: List[int], D=None, z=None,
                                 delta_bias=None, delta_softplus: bool = False,
                                 out_dtype: Optional[torch.dtype] = None,
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the directional scan (shapes as in ``selective_scan_2d``).

    Returns:
        y (batch, dim, H, W) laid out like u, in ``out_dtype`` (default u's) (with ``C=None``
        the states (batch, dim, N, H, W), contiguous fp32); the last state
        (batch, dim, N) fp32; chunk-start checkpoints fp32 (see :func:`_ckpt_shape`).
    """
    groups, n_state = B.shape[1], B.shape[2]
    batch, dim, height, width = map_shape(u)
    states = C is None
    cfg = scan_config(batch, dim, groups, n_state, height, width, codes, u.is_cuda,
                      states=states)
    if states:
        y = u.new_empty((batch, dim, n_state, height, width), dtype=torch.float32)
        y_strides = _map_strides(y, groups, states=True)
    else:
        y = torch.empty_like(u, dtype=out_dtype)
        y_strides = _map_strides(y, groups)
        y_strides = y_strides[:3] + (0,) + y_strides[3:]
    _check_item_size(u, delta, z, y, B, C)
    last = u.new_empty((batch, dim, n_state), dtype=torch.float32)
    ckpt = u.new_empty(_ckpt_shape(batch, dim, n_state, cfg), dtype=torch.float32)
    dirs = pack_directions(codes)
    A32 = _vec(A, None)
    D32, bias32 = _vec(D, A32), _vec(delta_bias, A32)
    nseg = cfg['NSEG']
    summ = (u.new_empty((2, batch, dim, nseg, n_state), dtype=torch.float32) if nseg > 1
            else (last, last))
    grid = (groups * cfg['N_DT'], batch, nseg)
    zz = z if z is not None else u
    maps = [y_strides] + [_map_strides(t, groups) for t in (u, delta, z) if t is not None]
    layout = _layout(cfg, groups, dim // groups, *maps)
    if ('num_warps_single' in cfg and layout['VEC'] == 1
            and not (layout['SA'] == 1 and _proven(dim // groups, layout['GROUPED'], *maps))):
        # no channel pairs after all (see scan_config)
        cfg = dict(cfg, num_warps=cfg['num_warps_single'])
        layout = _layout(cfg, groups, dim // groups, *maps)
    common = dict(BD=cfg['BD'], NP=cfg['NP'], R=cfg['R'], NJ=cfg['NJ'], HAS_D=D is not None,
                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=bool(delta_softplus), num_warps=cfg['num_warps'],
                  EVEN=height % cfg['R'] == 0 and width % cfg['R'] == 0, CK_CM=cfg['CK_CM'],
                  **layout)
    # y in u's layout shares u's lines: the same policy, decided on u (so
    # AMP's fp16 u with fp32 y keeps the default; bf16 maps gained nothing)
    policy = _l2_policy(u, groups)
    y_policy = policy if not states and y_strides == maps[1][:3] + (0,) + maps[1][3:] else ''
    with _device_ctx(u):
        for summary in ((True, False) if nseg > 1 else (False,)):
            _fwd_kernel[grid](
                u, delta, zz, y, A32, D32, bias32, B, B if states else C, ckpt, last, summ[0],
                summ[1], dirs,
                dim, dim // groups, height, width, n_state, cfg['NCH'], nseg, cfg['CPS'],
                cfg['N_DT'], *_halve(_map_strides(u, groups), layout),
                *_halve(_map_strides(delta, groups), layout),
                *_halve(_map_strides(z, groups), layout), *_halve(y_strides, layout),
                *B.stride(), *(B if states else C).stride(), SUMMARY=summary,
                SAVE_CKPT=not summary, STATES=states, U_POLICY=policy, Y_POLICY=y_policy,
                **common)
    return y, last, ckpt


def selective_scan_2d_bwd_triton(dy, dlast, u, delta, A, B, C, codes: List[int], ckpt,
                                 D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                                 ) -> Tuple[Optional[torch.Tensor], ...]:
    """Backward of :func:`selective_scan_2d_fwd_triton`.

    Args:
        dy: gradient of y (batch, dim, H, W) (with ``C=None``: of the states,
            (batch, dim, N, H, W)), any strides; dlast: gradient of the last
            state (batch, dim, N) or None; ckpt: the forward's checkpoints.
    Returns:
        (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each like its input
        (None for absent optional inputs).
    """
    states = C is None
    groups, n_state = B.shape[1], B.shape[2]
    batch, dim, height, width = map_shape(u)
    cfg = scan_config(batch, dim, groups, n_state, height, width, codes, u.is_cuda,
                      backward=True, states=states)
    nseg = cfg['NSEG']
    atomic = cfg['N_DT'] > 1
    dirs = pack_directions(codes)
    A32 = _vec(A, None)
    D32, bias32 = _vec(D, A32), _vec(delta_bias, A32)
    du, ddt = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    if atomic:
        dB = torch.zeros_like(B, dtype=torch.float32)
        dC = None if states else torch.zeros_like(C, dtype=torch.float32)
    else:
        dB, dC = torch.empty_like(B), None if states else torch.empty_like(C)
    dy_strides = _map_strides(dy, groups, states=states)
    if not states:
        dy_strides = dy_strides[:3] + (0,) + dy_strides[3:]
    st = {k: _map_strides(t, groups) for k, t in
          (('u', u), ('delta', delta), ('z', z), ('du', du), ('ddt', ddt), ('dz', dz))}
    maps = [dy_strides] + [st[k] for k, t in (('u', u), ('delta', delta), ('z', z), ('du', du),
                                              ('ddt', ddt), ('dz', dz)) if t is not None]
    layout = _layout(cfg, groups, dim // groups, *maps, shift=False)
    st = {k: _halve(v, layout) for k, v in st.items()}
    _check_item_size(dy, u, delta, z, B, C)
    part = u.new_empty((batch * nseg, dim, n_state + 2), dtype=torch.float32)
    summ = (u.new_empty((2, batch, dim, nseg, n_state), dtype=torch.float32) if nseg > 1
            else (part, part))
    zz = z if z is not None else u
    dzz = dz if dz is not None else du
    dl = dlast.contiguous() if dlast is not None else part
    grid = (groups * cfg['N_DT'], batch, nseg)
    common = dict(BD=cfg['BD'], NP=cfg['NP'], R=cfg['R'], NJ=cfg['NJ'], HAS_D=D is not None,
                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None,
                  ATOMIC_BC=atomic, num_warps=cfg['num_warps'],
                  EVEN=height % cfg['R'] == 0 and width % cfg['R'] == 0,
                  LANE_SUMS=(0 if atomic or states or dB.dtype != dC.dtype
                             else _lane_sums_mode(cfg, layout, dim // groups, *maps)), **layout)
    with _device_ctx(u):
        for summary in ((True, False) if nseg > 1 else (False,)):
            _bwd_kernel[grid](
                u, delta, zz, dy, A32, D32, bias32, B, B if states else C, ckpt,
                *_ckpt_strides(ckpt, cfg), dl, summ[0],
                summ[1], du, ddt, dzz, dB, dB if states else dC, part, dirs,
                dim, dim // groups, height, width, n_state, cfg['NCH'], nseg, cfg['CPS'],
                cfg['N_DT'], st['u'], st['delta'], st['z'], _halve(dy_strides, layout), st['du'],
                st['ddt'], st['dz'],
                tuple(B.stride()), tuple((B if states else C).stride()), tuple(dB.stride()),
                tuple((dB if states else dC).stride()), SUMMARY=summary, STATES=states,
                **common)
    if atomic:
        dB = dB.to(B.dtype)
        dC = None if states else dC.to(C.dtype)
    dA = A.new_empty((dim, n_state))
    dD = D.new_empty(D.shape) if D is not None else None
    dbias = delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else None
    cols = dim * (n_state + 2)
    with _device_ctx(u):
        _sum_partials_kernel[(_cdiv(cols, _SUM_BLOCK_C),)](
            part, dA, dD if dD is not None else dA, dbias if dbias is not None else dA,
            batch * nseg, cols, n_state, HAS_D=dD is not None, HAS_BIAS=dbias is not None,
            BLOCK_R=_SUM_BLOCK_R, BLOCK_C=_SUM_BLOCK_C, num_warps=_SUM_WARPS)
    return du, ddt, dA, dB, dC, dD, dz, dbias
