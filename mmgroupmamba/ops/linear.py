"""Linear layers with an fp32-accurate tensor-core GEMM for float32 inference.

In float32 (no autocast) the GroupMamba backbone is GEMM-bound: PyTorch's
default (``torch.backends.cuda.matmul.allow_tf32 = False``) runs its Linear
layers as SIMT fp32 cuBLAS GEMMs, 57% of the device time of compiled T
inference on an H100 (docs/benchmarks.md). This module adds a Triton GEMM on
tensor cores with the 3xTF32 split, which keeps fp32 accuracy:

* every fp32 operand v is split as ``v = hi + lo``: ``hi`` is v rounded to
  TF32 (10 mantissa bits, to nearest), ``lo = v - hi`` is exact in fp32;
* ``x w = x_lo w_hi + x_hi w_lo + x_hi w_hi``, three TF32 MMAs; the dropped
  ``x_lo w_lo`` is below 2**-22 relative;
* the weight is split once per call outside the kernel (by PyTorch, fused
  into one kernel by ``torch.compile``); x is split on the tile in registers;
* the MMAs accumulate on the tensor cores for :data:`PROMOTE_STEPS` K steps
  (128 products), then that partial sum joins the fp32 accumulator by an
  ordinary fp32 add. One unbroken tensor-core accumulation over all of K was
  measured 4-7x less accurate than cuBLAS fp32 for K >= 348 (8e-6 relative
  at K = 1392); adding after every K step is accurate but up to 3x slower,
  because each add waits for the MMAs in flight.

Measured on an H100 (``tools/benchmark_linear.py``): the largest error
against a float64 product is 0.4-2.6x that of cuBLAS fp32, and 1000x below
single-pass TF32. The FFN's GEMMs run 1.2-1.9x faster than cuBLAS fp32;
some square or ragged shapes run slower. So the first call of each shape
times both and keeps the faster (:func:`_prefer_triton`); a GPU on which the
Triton kernel loses keeps cuBLAS.

:func:`linear` uses this GEMM for float32 CUDA inputs outside autocast, with
at least :data:`MIN_ROWS` rows, and ``fp32_gemm='tf32x3'``. Everything else
goes to ``F.linear``: the CPU, autocast (its fp16/bf16 GEMMs use tensor cores
already), the batch-sized GEMMs of the channel attention, and
``fp32_gemm='ieee'``. The Triton path is a custom op
(``mmgroupmamba::linear_tf32x3``) with a fake kernel, so ``torch.compile``
traces it without a graph break (plain eager calls that need no gradient run
its body without the op's dispatch, see
:func:`~mmgroupmamba.ops.dispatch.op_or_body`; so does
:func:`grouped_linear_bmm`). Its backward uses cuBLAS: the fast path is
meant for fp32 inference, and fp32 training through it stays correct.

:func:`grouped_linear` is the grouped projection of GroupMamba's SSM (G
independent maps on channel groups): in float32 CUDA inference a cuBLAS
batched GEMM that reads and writes the groups in place, elsewhere an einsum;
with ``group_major`` a batched GEMM everywhere, whose output holds each
group's map contiguous.
"""
import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .dispatch import fp32_cuda_inference, op_or_body

_INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'

#: Modes of ``fp32_gemm``: 'tf32x3' (the Triton 3xTF32 GEMM where it is the
#: faster, on CUDA) or 'ieee' (always ``F.linear``, PyTorch's default).
FP32_GEMM_MODES = ('tf32x3', 'ieee')

#: Fewer rows than this (the channel attention's batch-sized GEMMs) stay on
#: cuBLAS: a launch-bound GEMM gains nothing from tensor cores.
MIN_ROWS = 4096

#: K steps (of BK = 32) accumulated on the tensor cores between fp32 adds.
PROMOTE_STEPS = 4

_TF32_ROUND = 0x1000        # half a TF32 ulp in the fp32 bit pattern
_TF32_MASK = -0x2000        # keeps sign, exponent and 10 mantissa bits


def tf32_split(w: Tensor) -> Tuple[Tensor, Tensor]:
    """(hi, lo): ``hi`` = w rounded to TF32 (to nearest, ties away; no
    gradient) and ``lo = w - hi`` (exact in fp32; it carries w's gradient)."""
    bits = w.detach().view(torch.int32)
    hi = ((bits + _TF32_ROUND) & _TF32_MASK).view(torch.float32)
    return hi, w - hi


@triton.jit
def _tf32_round(v):
    """v rounded to TF32, as fp32 (the integer rounding of :func:`tf32_split`)."""
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def _linear_kernel(x_ptr, wh_ptr, wl_ptr, b_ptr, y_ptr, M, N, K, sxm, sxk, swn, swk, sym,
                   HAS_BIAS: tl.constexpr, PROMOTE: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr):
    """y[m, n] = sum_k x[m, k] (wh + wl)[n, k] (+ b[n]) for one (BM, BN) tile;
    consecutive programs share an x tile (L2 reuse). wh, wl share strides."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BN)
    pm = pid // n_tiles
    pn = pid - pm * n_tiles
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # rows * row stride exceeds 2**31 at detection sizes: 64-bit row offsets
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * sxm
    w_cols = rn[None, :] * swn
    m_ok = rm[:, None] < M
    n_ok = rn[None, :] < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k1 in range(0, K, BK * PROMOTE):
        part = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(k1, tl.minimum(k1 + BK * PROMOTE, K), BK):
            kk = k0 + rk
            a = tl.load(x_rows + kk[None, :] * sxk, mask=m_ok & (kk[None, :] < K), other=0.0)
            w_mask = (kk[:, None] < K) & n_ok
            wh = tl.load(wh_ptr + w_cols + kk[:, None] * swk, mask=w_mask, other=0.0)
            wl = tl.load(wl_ptr + w_cols + kk[:, None] * swk, mask=w_mask, other=0.0)
            a_hi = _tf32_round(a)
            a_lo = _tf32_round(a - a_hi)
            # (wl stays in memory layout for the MMA: rounding it in registers
            # was measured up to 2x slower; the MMA truncates it, < 2**-21)
            part = tl.dot(a_lo, wh, part, input_precision='tf32')
            part = tl.dot(a_hi, wl, part, input_precision='tf32')
            part = tl.dot(a_hi, wh, part, input_precision='tf32')
        acc += part
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * sym + rn[None, :], acc, mask=m_ok & n_ok)


def _prune(configs, named_args, **kwargs):
    """Drop tiles much wider than N (tl.dot needs >= 16 per side)."""
    n = max(16, triton.next_power_of_2(named_args['N']))
    kept = [c for c in configs if c.kwargs['BN'] <= n]
    return kept or configs[:1]


# The tiles that won for the backbones' shapes on an H100 (BK = 32: the
# promotion interval is counted in its steps).
_CONFIGS = [triton.Config(dict(BM=bm, BN=bn, BK=32), num_warps=w, num_stages=s)
            for bm, bn, w, s in [(128, 64, 4, 4), (128, 128, 8, 3), (128, 64, 4, 3),
                                 (64, 64, 4, 4), (128, 128, 4, 3), (256, 64, 8, 3)]]
_linear_kernel_tuned = triton.autotune(
    _CONFIGS, key=['N', 'K'], prune_configs_by=dict(early_config_prune=_prune))(_linear_kernel)


def linear_triton(x: Tensor, w_hi: Tensor, w_lo: Tensor, bias: Optional[Tensor] = None
                  ) -> Tensor:
    """The Triton GEMM on a split weight (:func:`tf32_split`): x (..., K),
    weight (N, K), bias (N,) -> (..., N), contiguous float32."""
    n, k = w_hi.shape
    rows = x.reshape(-1, k)               # a view unless the leading dims cannot merge
    m = rows.shape[0]
    if w_hi.stride() != w_lo.stride():
        w_hi, w_lo = w_hi.contiguous(), w_lo.contiguous()
    y = x.new_empty((m, n))
    args = (rows, w_hi, w_lo, bias if bias is not None else w_hi, y, m, n, k, *rows.stride(),
            *w_hi.stride(), y.stride(0))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if _INTERPRET:
            # one small fixed tile (the interpreter runs programs one by
            # one); BK 16 with PROMOTE 2 still crosses promotions
            _linear_kernel[(triton.cdiv(m, 32) * triton.cdiv(n, 16),)](
                *args, HAS_BIAS=bias is not None, PROMOTE=2, BM=32, BN=16, BK=16)
        else:
            def grid(meta):
                return (triton.cdiv(m, meta['BM']) * triton.cdiv(n, meta['BN']),)
            _linear_kernel_tuned[grid](*args, HAS_BIAS=bias is not None, PROMOTE=PROMOTE_STEPS)
    return y.reshape(*x.shape[:-1], n)


#: (device, M bucket, N, K, has bias) -> whether the Triton GEMM was the faster
_FASTER: Dict[tuple, bool] = {}


def _prefer_triton(x: Tensor, w_hi: Tensor, w_lo: Tensor, bias: Optional[Tensor]) -> bool:
    """Time both GEMMs once per shape (the autotuner's way: median of a few
    runs, after a warm-up that also tunes the Triton tiles) and remember.
    Triton is kept only when at least 5% faster."""
    m = x.numel() // x.shape[-1]
    key = (x.device, triton.next_power_of_2(m), *w_hi.shape, bias is not None)
    if key not in _FASTER:
        weight = w_hi + w_lo
        ours = triton.testing.do_bench(lambda: linear_triton(x, w_hi, w_lo, bias), warmup=5,
                                       rep=20, return_mode='median')
        theirs = triton.testing.do_bench(lambda: F.linear(x, weight, bias), warmup=5, rep=20,
                                         return_mode='median')
        # a clear margin, so that near-ties do not flip from run to run
        _FASTER[key] = ours < 0.95 * theirs
    return _FASTER[key]


def _linear_tf32x3(x: Tensor, w_hi: Tensor, w_lo: Tensor, bias: Optional[Tensor]) -> Tensor:
    """float32 linear on a split weight: the Triton GEMM, or cuBLAS where
    that was measured faster for the shape (on the CPU: always Triton, the
    interpreter)."""
    if x.is_cuda and not _prefer_triton(x, w_hi, w_lo, bias):
        return F.linear(x, w_hi + w_lo, bias).contiguous()
    return linear_triton(x, w_hi, w_lo, bias)


_linear_tf32x3_op = torch.library.custom_op('mmgroupmamba::linear_tf32x3', _linear_tf32x3,
                                            mutates_args=())
linear_tf32x3 = op_or_body(_linear_tf32x3_op, _linear_tf32x3)


@_linear_tf32x3_op.register_fake
def _linear_fake(x, w_hi, w_lo, bias):
    return x.new_empty((*x.shape[:-1], w_hi.shape[0]))


def _setup_context(ctx, inputs, output):
    x, w_hi, w_lo, bias = inputs
    ctx.save_for_backward(x, w_hi, w_lo)
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, w_hi, w_lo = ctx.saved_tensors
    dy2 = dy.reshape(-1, dy.shape[-1])
    dx = dy @ (w_hi + w_lo)
    dw = dy2.t() @ x.reshape(-1, x.shape[-1])
    db = dy2.sum(0) if ctx.has_bias else None
    # the whole weight gradient flows through lo = w - hi (hi has none)
    return dx, None, dw, db


torch.library.register_autograd('mmgroupmamba::linear_tf32x3', _backward,
                                setup_context=_setup_context)


@register_flop_formula(torch.ops.mmgroupmamba.linear_tf32x3)
def _linear_flops(x_shape, w_hi_shape, w_lo_shape=None, bias_shape=None, *args, out_shape=None,
                  **kwargs) -> int:
    # as aten.mm: 2 FLOPs per multiply-accumulate (the split is not counted)
    rows = 1
    for s in x_shape[:-1]:
        rows *= s
    return 2 * rows * w_hi_shape[0] * w_hi_shape[1]


def _use_triton(x: Tensor, weight: Tensor, fp32_gemm: str) -> bool:
    """The dispatch rule of :func:`linear` (tests patch it to run the
    Triton path under the CPU interpreter)."""
    return (fp32_gemm == 'tf32x3' and x.is_cuda and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() // x.shape[-1] >= MIN_ROWS
            and not torch.is_autocast_enabled('cuda'))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           fp32_gemm: str = 'tf32x3') -> Tensor:
    """``F.linear(x, weight, bias)``; float32 CUDA GEMMs go through the 3xTF32
    op (see the module doc).

    Args:
        x: (..., K). weight: (N, K). bias: (N,) or None.
        fp32_gemm: 'tf32x3' or 'ieee' (see :data:`FP32_GEMM_MODES`).
    Returns:
        (..., N).
    """
    if fp32_gemm not in FP32_GEMM_MODES:
        raise ValueError(f'fp32_gemm: expected one of {FP32_GEMM_MODES}, got {fp32_gemm!r}')
    if weight.dim() != 2:
        raise ValueError(f'weight: expected (N, K), got {tuple(weight.shape)}')
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f'x: expected (..., K) with K = {weight.shape[1]} (in_features), '
                         f'got {tuple(x.shape)}')
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f'bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}')
    if _use_triton(x, weight, fp32_gemm):
        return linear_tf32x3(x, *tf32_split(weight), bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose float32 CUDA
    GEMM runs through :func:`linear`; ``fp32_gemm`` picks the algorithm."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 fp32_gemm: str = 'tf32x3'):
        super().__init__(in_features, out_features, bias)
        self.fp32_gemm = fp32_gemm

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.fp32_gemm)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, fp32_gemm={self.fp32_gemm!r}'


def set_fp32_gemm(module: nn.Module, fp32_gemm: str) -> nn.Module:
    """Set ``fp32_gemm`` on every sub-module that has it; returns ``module``."""
    if fp32_gemm not in FP32_GEMM_MODES:
        raise ValueError(f'fp32_gemm: expected one of {FP32_GEMM_MODES}, got {fp32_gemm!r}')
    for m in module.modules():
        if hasattr(m, 'fp32_gemm'):
            m.fp32_gemm = fp32_gemm
    return module


# ----------------------------------------------------------------------------
# Grouped projections: G independent (K -> N) linear maps on channel groups.
# ----------------------------------------------------------------------------
def _out_buffer(x: Tensor, n: int, group_major: bool) -> Tensor:
    """An empty (G, M, n) result for x (G, M, K): contiguous (each group's
    rows together) with ``group_major``, else the view of a contiguous
    (M, G, n) tensor (each row's groups together)."""
    g, m, _ = x.shape
    return x.new_empty(g, m, n) if group_major else x.new_empty(m, g, n).transpose(0, 1)


def _grouped_linear_bmm(x: Tensor, weights: List[Tensor], group_major: bool = False
                        ) -> List[Tensor]:
    """One cuBLAS batched GEMM per weight, on group-strided views.

    Args:
        x: (G, M, K), typically the view ``rows.transpose(0, 1)`` of (M, G, K)
            rows (strides (K, G*K, 1)).
        weights: each (G, K, n), any strides with one of the last two unit.
        group_major: store each result contiguous instead.
    Returns:
        per weight, (G, M, n): contiguous with ``group_major``, else with
        strides (n, G*n, 1), the view of a contiguous (M, G, n) tensor.

    cuBLAS reads and writes these views as they are (lda = G*K, ldc = G*n,
    batch strides K and n), so neither side is permuted into a copy. The
    function is kept to the bare calls: it runs once per projection on the
    host, where a compiled step of the smaller models is nearly as long as
    its GPU work.
    """
    return [torch.bmm(x, w, out=_out_buffer(x, w.shape[2], group_major)) for w in weights]


_grouped_linear_bmm_op = torch.library.custom_op('mmgroupmamba::grouped_linear_bmm',
                                                 _grouped_linear_bmm, mutates_args=())
grouped_linear_bmm = op_or_body(_grouped_linear_bmm_op, _grouped_linear_bmm)


@_grouped_linear_bmm_op.register_fake
def _grouped_linear_bmm_fake(x, weights, group_major=False):
    return [_out_buffer(x, w.shape[2], group_major) for w in weights]


@register_flop_formula(torch.ops.mmgroupmamba.grouped_linear_bmm)
def _grouped_linear_flops(x_shape, weight_shapes, *args, out_shape=None, **kwargs) -> int:
    g, m, k = x_shape
    return sum(2 * g * m * k * w[2] for w in weight_shapes)


def _use_bmm(x: Tensor, weight: Tensor) -> bool:
    """The dispatch rule of :func:`grouped_linear` (tests patch it)."""
    return fp32_cuda_inference(x, weight)


def grouped_linear(x: Tensor, weight: Tensor, sizes: Optional[Sequence[int]] = None,
                   group_major: bool = False) -> Union[Tensor, Tuple[Tensor, ...]]:
    """Group-wise linear map without bias: ``y[..., g, :] = x[..., g, :] @
    weight[g].T``, i.e. ``einsum('...gk,gnk->...gn', x, weight)``, optionally
    split along N as ``y.split(sizes, -1)``.

    Float32 CUDA inference (no autocast, no gradient) runs batched cuBLAS
    GEMMs on the group-strided views (:func:`grouped_linear_bmm`): one per
    part, each part contiguous. Compiled, the einsum made Inductor
    copy its input into (G, M, K) order and its output back, and a split part
    of in_proj's output was copied again before the depthwise conv; without
    those copies GroupMamba-B's fp32 inference step takes about 2 ms less
    device time on an H100 (docs/benchmarks.md). The GEMMs are the same
    SIMT fp32 ones, so the values are too. Everything else (training,
    autocast, the CPU) takes the einsum.

    Args:
        x: (..., G, K). weight: (G, N, K).
        sizes: None (return y) or the split of N (return a tuple of parts).
        group_major: store y as (G, ..., N) in memory, each group's map
            contiguous (the parts are views of it), on every path: one
            batched GEMM on the group-strided views. GroupMamba's SSM asks
            for it: the selective scan reads maps whose cache lines each
            belong to one group faster (see ``GroupedDirectionalSSM.forward``).
    """
    if weight.dim() != 3:
        raise ValueError(f'weight: expected (G, N, K), got {tuple(weight.shape)}')
    g, n, k = weight.shape
    if x.dim() < 2 or tuple(x.shape[-2:]) != (g, k):
        raise ValueError(f'x: expected (..., G, K) with G = {g}, K = {k} (weight\'s groups and '
                         f'inputs), got {tuple(x.shape)}')
    parts = [n] if sizes is None else [int(s) for s in sizes]
    if sum(parts) != n or min(parts) < 1:
        raise ValueError(f'sizes: expected positive parts summing to N = {n}, got {sizes}')
    bmm = _use_bmm(x, weight)
    if not (bmm or group_major):
        y = torch.einsum('...gk,gnk->...gn', x, weight)
        return y if sizes is None else y.split(parts, dim=-1)
    rows, w_t = x.reshape(-1, g, k).transpose(0, 1), weight.transpose(1, 2)  # (G, M, K), (G, K, N)
    if group_major:
        y = grouped_linear_bmm(rows, [w_t], True)[0] if bmm else torch.bmm(rows, w_t)
        y = y.transpose(0, 1).reshape(*x.shape[:-1], n)          # (G, M, N) contiguous underneath
        return y if sizes is None else y.split(parts, dim=-1)
    outs = grouped_linear_bmm(rows, list(w_t.split(parts, dim=2)))
    outs = [o.transpose(0, 1).reshape(*x.shape[:-1], p) for o, p in zip(outs, parts)]
    return outs[0] if sizes is None else tuple(outs)


__all__: List[str] = ['FP32_GEMM_MODES', 'MIN_ROWS', 'PROMOTE_STEPS', 'Linear', 'grouped_linear',
                      'grouped_linear_bmm', 'linear', 'linear_tf32x3', 'linear_triton',
                      'set_fp32_gemm', 'tf32_split']
