"""Triton kernels of the directional selective scan (forward and backward).

Design
------
One launch serves every channel group and direction. A program owns
``(batch b, group g, channel tile of BD channels, segment of chunks)`` and
walks its chunks in scan order, carrying the state ``h`` ([BD, N], fp32) in
registers. Within a chunk of BT steps the recurrence ``h_t = a_t h_{t-1} + b_t``
runs as a ``tl.associative_scan`` over the pair (a, b) along the step axis of a
[BD, N, BT] tile; the carry enters as ``h_t = A_t h_in + h_loc_t``. This
recurrent (associative) form only multiplies decays in (0, 1], so unlike an
``exp(cumsum)``/division closed form it cannot overflow.

Directions without copies. The logical map is (batch, dim, H, W) with any
strides. A direction turns step ``t`` into ``(outer, inner) = divmod(t, n_inner)``
with ``(outer, inner) = (h, w)`` for row-major ('lr', 'rl') and ``(w, h)`` for
column-major ('tb', 'bt') scans, mirrored for the reversed ones. A chunk is a
tile of ``BO`` outer lines x ``BI >= n_inner`` inner positions (or, when a line
is longer than BT, ``1 x BI`` pieces of one line); the padding slots get the
identity element (a=1, b=0), so flattening the tile gives exactly the scan
order. The tile is *loaded in memory order* (w always the last axis) and
permuted to scan order in registers, so column scans of a channels-first map
still read whole 32-byte sectors along w. Each direction is a constexpr
specialisation of the program body; the group's direction code (read from a
small int tensor) picks one of the four at run time.

Few rows (detection/segmentation maps: 2 images x 64 channels x 66,800 steps).
When ``batch * groups * channel tiles`` cannot fill the GPU, the chunks of a
sequence are split into segments run by different programs: a summary pass
computes each segment's decay product and zero-start final state, and the main
pass starts each segment from the chained summaries of the segments before it
(O(segments) tiny loads) and recomputes. The backward does the same in reverse
for the state gradient.

Backward. The forward stores the state at every chunk start (N floats per row
per chunk). The backward walks chunks in reverse: it recomputes the chunk's
states from its checkpoint, then runs the reverse recurrence
``dh_t = a_{t+1} dh_{t+1} + C_t dy_t`` as a *forward* associative scan of the
tile flipped in registers (``tl.flip``; ``associative_scan(reverse=True)`` has
had wrong results with this combine), with ``a_{t+1}`` recomputed from delta
loaded at step t+1. ``a_t h_{t-1} = h_t - delta_t B_t u_t`` gives the decay
gradient without a division. dB/dC are reduced over the channel tile in
registers and stored directly when one tile holds the whole group (the
GroupMamba case), else added atomically into fp32 buffers; dA/dD/d(delta_bias)
are reduced per program into a partial buffer summed on the host
(deterministic).

Interpreter (``TRITON_INTERPRET=1``): no libdevice (softplus is a guarded
``log(1 + exp(x))``), bf16 only loaded and cast, and a fixed small config
(no autotuning) so CI stays fast.

States mode (``STATES``, Spatial-Mamba): without C the forward stores the
hidden states ``hs`` [BD, N, BT] (fp32, in a (batch, dim, N, H, W) tensor of
the map's pixel order) instead of reducing them with C, and the backward takes
their gradient as the injection ``g_t`` of the reverse recurrence
``dh_t = a_{t+1} dh_{t+1} + g_t`` in place of ``C_t dy_t``. Everything else
(recompute from checkpoints, dA/dB/du/ddelta) is shared, so the gradient is
right for any d_state.
"""
import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'

#: Test/benchmark hook: keys 'BD', 'BT', 'CPS' (chunks per segment),
#: 'num_warps' override the heuristic tile config (see :func:`scan_config`).
CONFIG_OVERRIDE: Dict[str, int] = {}


def _np2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _line_tile(n_outer: int, n_inner: int, bt: int) -> Tuple[int, int, int]:
    """(BO, BI, n_chunks) of one direction class for a tile of bt steps."""
    bi = min(_np2(n_inner), bt)
    bo = bt // bi
    return bo, bi, _cdiv(n_outer, bo) * _cdiv(n_inner, bi)


def scan_config(batch: int, dim: int, groups: int, n_state: int, height: int, width: int,
                codes: Sequence[int], on_gpu: bool) -> Dict[str, int]:
    """Tile configuration shared by the forward, backward and fake kernels.

    The chunking (and so the checkpoint shape) depends only on the shapes, so
    the backward and ``torch.compile``'s fake tensors agree with the forward.
    """
    per = dim // groups
    small = _INTERPRET or not on_gpu
    np_ = _np2(n_state)
    sms = 1 if small else torch.cuda.get_device_properties(
        torch.cuda.current_device()).multi_processor_count
    # Measured on an H100 (docs/benchmarks.md, sweep): with many rows, narrow
    # one-warp programs (4 channels x 128 steps) beat wide ones; with few rows
    # (dense maps, split over L) 16 channels x 128 steps on 4 warps did best.
    if small:
        bd, elems, warps = min(_np2(per), 4), 64, 1
    elif batch * groups * _cdiv(per, min(_np2(per), 4)) >= 2 * sms:
        bd, elems, warps = min(_np2(per), 4), 512, 1
    else:
        bd, elems, warps = min(_np2(per), 16), 2048, 4
    bd = CONFIG_OVERRIDE.get('BD', bd)
    bt = CONFIG_OVERRIDE.get('BT', max(min(elems // (bd * np_), 512), 16))
    # at least 16 steps: 1-step tiles miscompiled (garbage dA on an H100)
    bt = max(min(bt, _np2(height * width)), 16)
    bo_r, bi_r, nch_r = _line_tile(height, width, bt)   # rows: outer h, inner w
    bo_c, bi_c, nch_c = _line_tile(width, height, bt)   # columns: outer w, inner h
    has_r = any(c in (0, 2) for c in codes)
    has_c = any(c in (1, 3) for c in codes)
    nch = max(nch_r if has_r else 0, nch_c if has_c else 0)
    n_dt = _cdiv(per, bd)
    rows = batch * groups * n_dt
    if 'CPS' in CONFIG_OVERRIDE:
        cps = CONFIG_OVERRIDE['CPS']
    elif small or rows >= 2 * sms:
        cps = nch
    else:
        # Split a sequence over programs only when rows alone leave SMs idle:
        # the summary pass re-reads delta, u and B.
        cps = max(2, _cdiv(nch * rows, 4 * sms))
    cps = max(1, min(cps, nch))
    return dict(BD=bd, NP=np_, BT=bt, BO_R=bo_r, BI_R=bi_r, BO_C=bo_c, BI_C=bi_c, NCH=nch,
                CPS=cps, NSEG=_cdiv(nch, cps), N_DT=n_dt,
                num_warps=CONFIG_OVERRIDE.get('num_warps', warps))


# --------------------------------------------------------------------------- helpers


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier step: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # Guarded log(1 + exp(x)) (no libdevice log1p, so it runs in the
    # interpreter); exp(x) is the better value far below 0.
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, x, tl.where(x < -15.0, e, tl.log(1.0 + e)))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _line_geom(H, W, BO: tl.constexpr, BI: tl.constexpr, COL: tl.constexpr):
    """(n_outer, n_inner, inner blocks, chunks) of a direction class."""
    if COL:
        n_outer = W
        n_inner = H
    else:
        n_outer = H
        n_inner = W
    n_ib = tl.cdiv(n_inner, BI)
    return n_outer, n_inner, n_ib, tl.cdiv(n_outer, BO) * n_ib


@triton.jit
def _tile_hw(c, n_outer, n_inner, n_ib, BO: tl.constexpr, BI: tl.constexpr,
             COL: tl.constexpr, REV: tl.constexpr, NEXT: tl.constexpr):
    """Map indices (h, w) and validity of chunk c's tile, in memory order.

    The tile is [BO, BI] (outer, inner) for row scans and [BI, BO] for column
    scans, so w is always the last axis. With NEXT, the indices are those of
    the step after each slot (t + 1), for the shifted decay of the backward.
    """
    ob = c // n_ib
    o0 = ob * BO
    i0 = (c - ob * n_ib) * BI
    if COL:
        oo = o0 + tl.arange(0, BO)[None, :]
        ii = i0 + tl.arange(0, BI)[:, None]
    else:
        oo = o0 + tl.arange(0, BO)[:, None]
        ii = i0 + tl.arange(0, BI)[None, :]
    valid = (oo < n_outer) & (ii < n_inner)
    if NEXT:
        wrap = ii + 1 >= n_inner
        oo = tl.where(wrap, oo + 1, oo)
        ii = tl.where(wrap, 0, ii + 1)
        valid = valid & (oo < n_outer)
    if REV:
        oo = n_outer - 1 - oo
        ii = n_inner - 1 - ii
    if COL:
        return ii, oo, valid
    else:
        return oo, ii, valid


@triton.jit
def _step_valid(c, n_outer, n_inner, n_ib, BO: tl.constexpr, BI: tl.constexpr):
    """[BT] validity of chunk c's slots in scan order."""
    ob = c // n_ib
    k = tl.arange(0, BO * BI)
    so = ob * BO + k // BI
    si = (c - ob * n_ib) * BI + k % BI
    return (so < n_outer) & (si < n_inner)


@triton.jit
def _to_steps(x, COL: tl.constexpr, BT: tl.constexpr):
    """[K, X, Y] tile in memory order -> [K, BT] in scan order."""
    if COL:
        x = tl.permute(x, (0, 2, 1))
    return tl.reshape(x, (x.shape[0], BT))


@triton.jit
def _from_steps(x, BO: tl.constexpr, BI: tl.constexpr, COL: tl.constexpr):
    """[K, BT] in scan order -> [K, X, Y] tile in memory order."""
    x = tl.reshape(x, (x.shape[0], BO, BI))
    if COL:
        x = tl.permute(x, (0, 2, 1))
    return x


@triton.jit
def _map_off(b, d, hh, ww, s0, s1, s2, s3):
    """Offsets [BD, X, Y] of a (batch, dim, H, W) tensor."""
    return b * s0 + d[:, None, None] * s1 + (hh * s2 + ww * s3)[None, :, :]


@triton.jit
def _bc_off(b, g, nn, hh, ww, s0, s1, s2, s3, s4):
    """Offsets [NP, X, Y] of a (batch, G, N, H, W) tensor."""
    return b * s0 + g * s1 + nn[:, None, None] * s2 + (hh * s3 + ww * s4)[None, :, :]


@triton.jit
def _state_off(b, g, dtile, per, N, hh, ww, valid, s0, s1, sn, s2, s3,
               BD: tl.constexpr, NP: tl.constexpr):
    """Offsets and mask [BD*NP, X, Y] of a (batch, dim, N, H, W) states tensor
    (row k = channel k // NP, state k % NP of the tile)."""
    k = tl.arange(0, BD * NP)
    dl = dtile * BD + k // NP
    nk = k % NP
    off = (b * s0 + (g * per + dl) * s1 + nk * sn)[:, None, None] + (hh * s2 + ww * s3)[None, :, :]
    mask = ((dl < per) & (nk < N))[:, None, None] & valid[None, :, :]
    return off, mask


@triton.jit
def _sel(x, sel):
    """x[..., k] for the one k where sel [BT] is true (sum over the step axis)."""
    return tl.sum(tl.where(sel, x, 0.0), axis=len(x.shape) - 1)


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_body(u_ptr, dt_ptr, z_ptr, y_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
              ckpt_ptr, last_ptr, sp_ptr, sh_ptr,
              b, g, dtile, seg, dim, per, H, W, N, NCH, NSEG, CPS,
              su0, su1, su2, su3, sd0, sd1, sd2, sd3, sz0, sz1, sz2, sz3,
              sy0, sy1, syn, sy2, sy3, sb0, sb1, sb2, sb3, sb4, sc0, sc1, sc2, sc3, sc4,
              BD: tl.constexpr, NP: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr,
              COL: tl.constexpr, REV: tl.constexpr, HAS_D: tl.constexpr,
              HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              SUMMARY: tl.constexpr, SAVE_CKPT: tl.constexpr, STATES: tl.constexpr):
    BT: tl.constexpr = BO * BI
    n_outer, n_inner, n_ib, n_ch = _line_geom(H, W, BO, BI, COL)
    c_start = seg * CPS
    c_end = tl.minimum(c_start + CPS, n_ch)
    dl = dtile * BD + tl.arange(0, BD)
    dmask = dl < per
    d = g * per + dl
    nn = tl.arange(0, NP)
    nmask = nn < N
    dn_mask = dmask[:, None] & nmask[None, :]
    dn_off = (b * dim + d[:, None]) * N + nn[None, :]                      # [BD, NP]
    A = tl.load(A_ptr + d[:, None] * N + nn[None, :], mask=dn_mask, other=0.0)
    # (defined on every path: the compiler needs them in scope in the loop)
    Dv = tl.zeros([BD], dtype=tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    last_k = tl.arange(0, BT) == BT - 1

    h = tl.zeros([BD, NP], dtype=tl.float32)
    p_seg = tl.full([BD, NP], 1.0, tl.float32)
    if not SUMMARY:
        # Start state of this segment: chain the summaries of earlier ones.
        for s in range(0, seg):
            soff = ((b * dim + d[:, None]) * NSEG + s) * N + nn[None, :]
            p = tl.load(sp_ptr + soff, mask=dn_mask, other=1.0)
            hv = tl.load(sh_ptr + soff, mask=dn_mask, other=0.0)
            h = p * h + hv
    for c in range(c_start, c_end):
        hh, ww, valid = _tile_hw(c, n_outer, n_inner, n_ib, BO, BI, COL, REV, False)
        vs = _step_valid(c, n_outer, n_inner, n_ib, BO, BI)
        m3 = dmask[:, None, None] & valid[None, :, :]
        mbc = nmask[:, None, None] & valid[None, :, :]
        ms = dmask[:, None] & vs[None, :]
        u = _to_steps(tl.load(u_ptr + _map_off(b, d, hh, ww, su0, su1, su2, su3),
                              mask=m3, other=0.0).to(tl.float32), COL, BT)
        dt = _to_steps(tl.load(dt_ptr + _map_off(b, d, hh, ww, sd0, sd1, sd2, sd3),
                               mask=m3, other=0.0).to(tl.float32), COL, BT)
        Bv = _to_steps(tl.load(B_ptr + _bc_off(b, g, nn, hh, ww, sb0, sb1, sb2, sb3, sb4),
                               mask=mbc, other=0.0).to(tl.float32), COL, BT)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(ms, dt, 0.0)                                          # padding: a=1, b=0
        a = tl.exp(dt[:, None, :] * A[:, :, None])                          # [BD, NP, BT]
        bx = (dt * u)[:, None, :] * Bv[None, :, :]
        if SAVE_CKPT:
            tl.store(ckpt_ptr + ((b * dim + d[:, None]) * NCH + c) * N + nn[None, :], h,
                     mask=dn_mask)
        aa, hl = tl.associative_scan((a, bx), 2, _combine)
        hs = aa * h[:, :, None] + hl
        h = _sel(hs, last_k[None, None, :])
        if SUMMARY:
            p_seg = p_seg * _sel(aa, last_k[None, None, :])
        elif STATES:
            soff, smask = _state_off(b, g, dtile, per, N, hh, ww, valid, sy0, sy1, syn, sy2,
                                     sy3, BD, NP)
            tl.store(y_ptr + soff, _from_steps(tl.reshape(hs, (BD * NP, BT)), BO, BI, COL),
                     mask=smask)
        else:
            Cv = _to_steps(tl.load(C_ptr + _bc_off(b, g, nn, hh, ww, sc0, sc1, sc2, sc3, sc4),
                                   mask=mbc, other=0.0).to(tl.float32), COL, BT)
            y = tl.sum(hs * Cv[None, :, :], axis=1)                          # [BD, BT]
            if HAS_D:
                y = y + Dv[:, None] * u
            if HAS_Z:
                zv = _to_steps(tl.load(z_ptr + _map_off(b, d, hh, ww, sz0, sz1, sz2, sz3),
                                       mask=m3, other=0.0).to(tl.float32), COL, BT)
                y = y * zv * _sigmoid(zv)
            tl.store(y_ptr + _map_off(b, d, hh, ww, sy0, sy1, sy2, sy3),
                     _from_steps(y, BO, BI, COL).to(y_ptr.dtype.element_ty), mask=m3)
    if SUMMARY:
        soff = ((b * dim + d[:, None]) * NSEG + seg) * N + nn[None, :]
        tl.store(sp_ptr + soff, p_seg, mask=dn_mask)
        tl.store(sh_ptr + soff, h, mask=dn_mask)
    else:
        if (c_start < n_ch) & (c_end == n_ch):
            tl.store(last_ptr + dn_off, h, mask=dn_mask)


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, z_ptr, y_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
                ckpt_ptr, last_ptr, sp_ptr, sh_ptr, dir_ptr,
                dim, per, H, W, N, NCH, NSEG, CPS, N_DT,
                su0, su1, su2, su3, sd0, sd1, sd2, sd3, sz0, sz1, sz2, sz3,
                sy0, sy1, syn, sy2, sy3, sb0, sb1, sb2, sb3, sb4, sc0, sc1, sc2, sc3, sc4,
                BD: tl.constexpr, NP: tl.constexpr, BO_R: tl.constexpr, BI_R: tl.constexpr,
                BO_C: tl.constexpr, BI_C: tl.constexpr, HAS_D: tl.constexpr,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                SUMMARY: tl.constexpr, SAVE_CKPT: tl.constexpr, STATES: tl.constexpr):
    pid = tl.program_id(0)
    g = pid // N_DT
    dtile = pid - g * N_DT
    b = tl.program_id(1)
    seg = tl.program_id(2)
    code = tl.load(dir_ptr + g)
    args = (u_ptr, dt_ptr, z_ptr, y_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
            ckpt_ptr, last_ptr, sp_ptr, sh_ptr, b, g, dtile, seg, dim, per, H, W, N, NCH,
            NSEG, CPS, su0, su1, su2, su3, sd0, sd1, sd2, sd3, sz0, sz1, sz2, sz3,
            sy0, sy1, syn, sy2, sy3, sb0, sb1, sb2, sb3, sb4, sc0, sc1, sc2, sc3, sc4)
    flags = (HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SUMMARY, SAVE_CKPT, STATES)
    if code == 0:
        _fwd_body(*args, BD, NP, BO_R, BI_R, False, False, *flags)
    elif code == 1:
        _fwd_body(*args, BD, NP, BO_C, BI_C, True, False, *flags)
    elif code == 2:
        _fwd_body(*args, BD, NP, BO_R, BI_R, False, True, *flags)
    else:
        _fwd_body(*args, BD, NP, BO_C, BI_C, True, True, *flags)


# --------------------------------------------------------------------------- backward


@triton.jit
def _bwd_body(u_ptr, dt_ptr, z_ptr, dy_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
              ckpt_ptr, dlast_ptr, sq_ptr, sg_ptr,
              du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
              b, g, dtile, seg, dim, per, H, W, N, NCH, NSEG, CPS,
              su, sd, sz, sdy, sdu, sddt, sdz, sb, sc, sdb, sdc,
              BD: tl.constexpr, NP: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr,
              COL: tl.constexpr, REV: tl.constexpr, HAS_D: tl.constexpr,
              HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              SUMMARY: tl.constexpr, HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
              STATES: tl.constexpr):
    BT: tl.constexpr = BO * BI
    n_outer, n_inner, n_ib, n_ch = _line_geom(H, W, BO, BI, COL)
    c_start = seg * CPS
    c_end = tl.minimum(c_start + CPS, n_ch)
    dl = dtile * BD + tl.arange(0, BD)
    dmask = dl < per
    d = g * per + dl
    nn = tl.arange(0, NP)
    nmask = nn < N
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * N + nn[None, :], mask=dn_mask, other=0.0)
    # (defined on every path: the compiler needs them in scope in the loop)
    Dv = tl.zeros([BD], dtype=tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    k = tl.arange(0, BT)
    last_k = k == BT - 1

    # dh: gradient of the state after this segment's last step (dh_{t1+1}),
    # chained from the final-state gradient through the later segments.
    dh = tl.zeros([BD, NP], dtype=tl.float32)
    q_seg = tl.full([BD, NP], 1.0, tl.float32)
    if not SUMMARY:
        if HAS_DLAST:
            dh = tl.load(dlast_ptr + (b * dim + d[:, None]) * N + nn[None, :], mask=dn_mask,
                         other=0.0)
        n_seg_g = tl.cdiv(n_ch, CPS)
        for j in range(0, n_seg_g - 1 - seg):
            soff = ((b * dim + d[:, None]) * NSEG + (n_seg_g - 1 - j)) * N + nn[None, :]
            q = tl.load(sq_ptr + soff, mask=dn_mask, other=1.0)
            gv = tl.load(sg_ptr + soff, mask=dn_mask, other=0.0)
            dh = q * dh + gv
    dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    dbias_acc = tl.zeros([BD], dtype=tl.float32)
    for j in range(0, c_end - c_start):
        c = c_end - 1 - j
        hh, ww, valid = _tile_hw(c, n_outer, n_inner, n_ib, BO, BI, COL, REV, False)
        hn, wn, valid_n = _tile_hw(c, n_outer, n_inner, n_ib, BO, BI, COL, REV, True)
        # scan-order validity of each slot and of its next step
        ob = c // n_ib
        so = ob * BO + k // BI
        si = (c - ob * n_ib) * BI + k % BI
        vs = (so < n_outer) & (si < n_inner)
        vs_n = vs & ((si + 1 < n_inner) | (so + 1 < n_outer))
        m3 = dmask[:, None, None] & valid[None, :, :]
        m3n = dmask[:, None, None] & valid_n[None, :, :]
        mbc = nmask[:, None, None] & valid[None, :, :]
        ms = dmask[:, None] & vs[None, :]
        ms_n = dmask[:, None] & vs_n[None, :]
        dtn = _to_steps(tl.load(dt_ptr + _map_off(b, d, hn, wn, sd[0], sd[1], sd[2], sd[3]),
                                mask=m3n, other=0.0).to(tl.float32), COL, BT)
        if HAS_BIAS:
            dtn = dtn + bias[:, None]
        if SOFTPLUS:
            dtn = _softplus(dtn)
        # alpha_t = a_{t+1}; 1 past the end and on padding (identity).
        alpha = tl.where(ms_n[:, None, :], tl.exp(dtn[:, None, :] * A[:, :, None]), 1.0)
        # (defined before the branch: Triton keeps only names that exist on
        # every path, even for a constexpr condition)
        dy = tl.zeros([BD, BT], dtype=tl.float32)
        Cv = tl.zeros([NP, BT], dtype=tl.float32)
        zv = dy
        zs = dy
        gy = dy
        gsrc = tl.zeros([BD, NP, BT], dtype=tl.float32)
        if STATES:
            # the states' own gradient is the injection g_t
            soff, smask = _state_off(b, g, dtile, per, N, hh, ww, valid, sdy[0], sdy[1], sdy[2],
                                     sdy[3], sdy[4], BD, NP)
            gsrc = tl.reshape(_to_steps(tl.load(dy_ptr + soff, mask=smask, other=0.0)
                                        .to(tl.float32), COL, BT), (BD, NP, BT))
        else:
            dy = _to_steps(tl.load(dy_ptr + _map_off(b, d, hh, ww, sdy[0], sdy[1], sdy[3],
                                                     sdy[4]), mask=m3, other=0.0).to(tl.float32),
                           COL, BT)
            Cv = _to_steps(tl.load(C_ptr + _bc_off(b, g, nn, hh, ww, sc[0], sc[1], sc[2], sc[3],
                                                   sc[4]), mask=mbc, other=0.0).to(tl.float32),
                           COL, BT)
            zv = dy
            zs = dy
            gy = dy
            if HAS_Z:
                zv = _to_steps(tl.load(z_ptr + _map_off(b, d, hh, ww, sz[0], sz[1], sz[2], sz[3]),
                                       mask=m3, other=0.0).to(tl.float32), COL, BT)
                zs = _sigmoid(zv)
                gy = dy * zv * zs
            gsrc = Cv[None, :, :] * gy[:, None, :]                           # [BD, NP, BT]
        # Reverse recurrence dh_t = alpha_t dh_{t+1} + gsrc_t as a forward scan
        # of the flipped tile.
        qa, dloc = tl.associative_scan((tl.flip(alpha, 2), tl.flip(gsrc, 2)), 2, _combine)
        dh_f = qa * dh[:, :, None] + dloc                                    # flipped order
        dh = _sel(dh_f, last_k[None, None, :])                               # dh at the chunk's first step
        if SUMMARY:
            q_seg = q_seg * _sel(qa, last_k[None, None, :])
        else:
            dhs = tl.flip(dh_f, 2)                                           # scan order
            u = _to_steps(tl.load(u_ptr + _map_off(b, d, hh, ww, su[0], su[1], su[2], su[3]),
                                  mask=m3, other=0.0).to(tl.float32), COL, BT)
            dtx = _to_steps(tl.load(dt_ptr + _map_off(b, d, hh, ww, sd[0], sd[1], sd[2], sd[3]),
                                    mask=m3, other=0.0).to(tl.float32), COL, BT)
            Bv = _to_steps(tl.load(B_ptr + _bc_off(b, g, nn, hh, ww, sb[0], sb[1], sb[2], sb[3],
                                                   sb[4]), mask=mbc, other=0.0).to(tl.float32),
                           COL, BT)
            if HAS_BIAS:
                dtx = dtx + bias[:, None]
            dtv = dtx
            if SOFTPLUS:
                dtv = _softplus(dtx)
            dtv = tl.where(ms, dtv, 0.0)
            # Recompute the chunk's states from its checkpoint.
            h0 = tl.load(ckpt_ptr + ((b * dim + d[:, None]) * NCH + c) * N + nn[None, :],
                         mask=dn_mask, other=0.0)
            a = tl.exp(dtv[:, None, :] * A[:, :, None])
            bx = (dtv * u)[:, None, :] * Bv[None, :, :]
            aa, hl = tl.associative_scan((a, bx), 2, _combine)
            hs = aa * h0[:, :, None] + hl
            if HAS_Z:
                y0 = tl.sum(hs * Cv[None, :, :], axis=1)
                if HAS_D:
                    y0 = y0 + Dv[:, None] * u
                dzv = dy * y0 * zs * (1.0 + zv * (1.0 - zs))
                tl.store(dz_ptr + _map_off(b, d, hh, ww, sdz[0], sdz[1], sdz[2], sdz[3]),
                         _from_steps(dzv, BO, BI, COL).to(dz_ptr.dtype.element_ty), mask=m3)
            ta = dhs * (hs - bx)                                             # dh_t a_t h_{t-1}
            dhB = dhs * Bv[None, :, :]
            ddt = tl.sum(dhB * u[:, None, :] + ta * A[:, :, None], axis=1)   # [BD, BT]
            du = tl.sum(dhB, axis=1) * dtv
            if HAS_D:
                du = du + Dv[:, None] * gy
                dD_acc += tl.sum(gy * u, axis=1)
            dA_acc += tl.sum(ta * dtv[:, None, :], axis=2)
            if SOFTPLUS:
                ddt = ddt * tl.where(dtx > 20.0, 1.0, _sigmoid(dtx))
            ddt = tl.where(ms, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            dBt = tl.sum(dhs * (dtv * u)[:, None, :], axis=0)                # [NP, BT]
            tl.store(du_ptr + _map_off(b, d, hh, ww, sdu[0], sdu[1], sdu[2], sdu[3]),
                     _from_steps(du, BO, BI, COL).to(du_ptr.dtype.element_ty), mask=m3)
            tl.store(ddt_ptr + _map_off(b, d, hh, ww, sddt[0], sddt[1], sddt[2], sddt[3]),
                     _from_steps(ddt, BO, BI, COL).to(ddt_ptr.dtype.element_ty), mask=m3)
            off_db = _bc_off(b, g, nn, hh, ww, sdb[0], sdb[1], sdb[2], sdb[3], sdb[4])
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + off_db, _from_steps(dBt, BO, BI, COL), mask=mbc)
            else:
                tl.store(dB_ptr + off_db, _from_steps(dBt, BO, BI, COL).to(dB_ptr.dtype.element_ty),
                         mask=mbc)
            if not STATES:
                dCt = tl.sum(hs * gy[:, None, :], axis=0)
                off_dc = _bc_off(b, g, nn, hh, ww, sdc[0], sdc[1], sdc[2], sdc[3], sdc[4])
                if ATOMIC_BC:
                    tl.atomic_add(dC_ptr + off_dc, _from_steps(dCt, BO, BI, COL), mask=mbc)
                else:
                    tl.store(dC_ptr + off_dc,
                             _from_steps(dCt, BO, BI, COL).to(dC_ptr.dtype.element_ty), mask=mbc)
    if SUMMARY:
        soff = ((b * dim + d[:, None]) * NSEG + seg) * N + nn[None, :]
        tl.store(sq_ptr + soff, q_seg, mask=dn_mask)
        tl.store(sg_ptr + soff, dh, mask=dn_mask)
    else:
        poff = (b * NSEG + seg) * dim + d
        tl.store(dA_ptr + poff[:, None] * N + nn[None, :], dA_acc, mask=dn_mask)
        tl.store(dD_ptr + poff, dD_acc, mask=dmask)
        tl.store(dbias_ptr + poff, dbias_acc, mask=dmask)


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, z_ptr, dy_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
                ckpt_ptr, dlast_ptr, sq_ptr, sg_ptr,
                du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dir_ptr,
                dim, per, H, W, N, NCH, NSEG, CPS, N_DT,
                su, sd, sz, sdy, sdu, sddt, sdz, sb, sc, sdb, sdc,
                BD: tl.constexpr, NP: tl.constexpr, BO_R: tl.constexpr, BI_R: tl.constexpr,
                BO_C: tl.constexpr, BI_C: tl.constexpr, HAS_D: tl.constexpr,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                SUMMARY: tl.constexpr, HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
                STATES: tl.constexpr):
    pid = tl.program_id(0)
    g = pid // N_DT
    dtile = pid - g * N_DT
    b = tl.program_id(1)
    seg = tl.program_id(2)
    code = tl.load(dir_ptr + g)
    args = (u_ptr, dt_ptr, z_ptr, dy_ptr, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr,
            ckpt_ptr, dlast_ptr, sq_ptr, sg_ptr,
            du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
            b, g, dtile, seg, dim, per, H, W, N, NCH, NSEG, CPS,
            su, sd, sz, sdy, sdu, sddt, sdz, sb, sc, sdb, sdc)
    flags = (HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SUMMARY, HAS_DLAST, ATOMIC_BC, STATES)
    if code == 0:
        _bwd_body(*args, BD, NP, BO_R, BI_R, False, False, *flags)
    elif code == 1:
        _bwd_body(*args, BD, NP, BO_C, BI_C, True, False, *flags)
    elif code == 2:
        _bwd_body(*args, BD, NP, BO_R, BI_R, False, True, *flags)
    else:
        _bwd_body(*args, BD, NP, BO_C, BI_C, True, True, *flags)


# --------------------------------------------------------------------------- host side


def _strides(t: Optional[torch.Tensor], ndim: int) -> Tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def _vec(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-channel parameters as contiguous fp32 (tiny); a dummy when absent."""
    return like if t is None else t.detach().to(torch.float32).contiguous()


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def ckpt_shape(u: torch.Tensor, B: torch.Tensor, codes: Sequence[int]) -> Tuple[int, ...]:
    """Shape of the chunk-start state checkpoints the forward saves."""
    batch, dim, height, width = u.shape
    cfg = scan_config(batch, dim, B.shape[1], B.shape[2], height, width, codes, u.is_cuda)
    return (batch, dim, cfg['NCH'], B.shape[2])


def selective_scan_2d_fwd_triton(u, delta, A, B, C, codes: List[int], D=None, z=None,
                                 delta_bias=None, delta_softplus: bool = False,
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the directional scan (shapes as in ``selective_scan_2d``).

    Returns:
        y (batch, dim, H, W) laid out like u, in u's dtype (with ``C=None``
        the states (batch, dim, N, H, W), contiguous fp32); the last state
        (batch, dim, N) fp32; chunk-start checkpoints (batch, dim, NCH, N) fp32.
    """
    batch, dim, height, width = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    cfg = scan_config(batch, dim, groups, n_state, height, width, codes, u.is_cuda)
    states = C is None
    if states:
        y = u.new_empty((batch, dim, n_state, height, width), dtype=torch.float32)
        y_strides = y.stride()
    else:
        y = torch.empty_like(u)
        y_strides = (y.stride(0), y.stride(1), 0, y.stride(2), y.stride(3))
    last = u.new_empty((batch, dim, n_state), dtype=torch.float32)
    ckpt = u.new_empty((batch, dim, cfg['NCH'], n_state), dtype=torch.float32)
    dirs = torch.tensor(codes, dtype=torch.int32, device=u.device)
    A32 = _vec(A, None)
    D32, bias32 = _vec(D, A32), _vec(delta_bias, A32)
    nseg = cfg['NSEG']
    summ = (u.new_empty((2, batch, dim, nseg, n_state), dtype=torch.float32) if nseg > 1
            else (last, last))
    grid = (groups * cfg['N_DT'], batch, nseg)
    zz = z if z is not None else u
    common = dict(BD=cfg['BD'], NP=cfg['NP'], BO_R=cfg['BO_R'], BI_R=cfg['BI_R'],
                  BO_C=cfg['BO_C'], BI_C=cfg['BI_C'], HAS_D=D is not None,
                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=bool(delta_softplus), num_warps=cfg['num_warps'])
    with _device_ctx(u):
        for summary in ((True, False) if nseg > 1 else (False,)):
            _fwd_kernel[grid](
                u, delta, zz, y, A32, D32, bias32, B, B if states else C, ckpt, last, summ[0],
                summ[1], dirs,
                dim, dim // groups, height, width, n_state, cfg['NCH'], nseg, cfg['CPS'],
                cfg['N_DT'], *u.stride(), *delta.stride(), *_strides(z, 4), *y_strides,
                *B.stride(), *(B if states else C).stride(), SUMMARY=summary,
                SAVE_CKPT=not summary, STATES=states, **common)
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
    batch, dim, height, width = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    cfg = scan_config(batch, dim, groups, n_state, height, width, codes, u.is_cuda)
    nseg = cfg['NSEG']
    atomic = cfg['N_DT'] > 1
    dirs = torch.tensor(codes, dtype=torch.int32, device=u.device)
    A32 = _vec(A, None)
    D32, bias32 = _vec(D, A32), _vec(delta_bias, A32)
    du, ddt = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    if atomic:
        dB = torch.zeros_like(B, dtype=torch.float32)
        dC = None if states else torch.zeros_like(C, dtype=torch.float32)
    else:
        dB, dC = torch.empty_like(B), None if states else torch.empty_like(C)
    dy_strides = (dy.stride() if states
                  else (dy.stride(0), dy.stride(1), 0, dy.stride(2), dy.stride(3)))
    dA_p = u.new_empty((batch * nseg, dim, n_state), dtype=torch.float32)
    dD_p = u.new_empty((batch * nseg, dim), dtype=torch.float32)
    dbias_p = u.new_empty((batch * nseg, dim), dtype=torch.float32)
    summ = (u.new_empty((2, batch, dim, nseg, n_state), dtype=torch.float32) if nseg > 1
            else (dA_p, dA_p))
    zz = z if z is not None else u
    dzz = dz if dz is not None else du
    dl = dlast.contiguous() if dlast is not None else dA_p
    grid = (groups * cfg['N_DT'], batch, nseg)
    common = dict(BD=cfg['BD'], NP=cfg['NP'], BO_R=cfg['BO_R'], BI_R=cfg['BI_R'],
                  BO_C=cfg['BO_C'], BI_C=cfg['BI_C'], HAS_D=D is not None,
                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast is not None,
                  ATOMIC_BC=atomic, num_warps=cfg['num_warps'])
    with _device_ctx(u):
        for summary in ((True, False) if nseg > 1 else (False,)):
            _bwd_kernel[grid](
                u, delta, zz, dy, A32, D32, bias32, B, B if states else C, ckpt, dl, summ[0],
                summ[1], du, ddt, dzz, dB, dB if states else dC, dA_p, dD_p, dbias_p, dirs,
                dim, dim // groups, height, width, n_state, cfg['NCH'], nseg, cfg['CPS'],
                cfg['N_DT'], tuple(u.stride()), tuple(delta.stride()), _strides(z, 4),
                tuple(dy_strides), tuple(du.stride()), tuple(ddt.stride()), _strides(dz, 4),
                tuple(B.stride()), tuple((B if states else C).stride()), tuple(dB.stride()),
                tuple((dB if states else dC).stride()), SUMMARY=summary, STATES=states,
                **common)
    if atomic:
        dB = dB.to(B.dtype)
        dC = None if states else dC.to(C.dtype)
    dA = dA_p.sum(0).to(A.dtype)
    dD = dD_p.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_p.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddt, dA, dB, dC, dD, dz, dbias
