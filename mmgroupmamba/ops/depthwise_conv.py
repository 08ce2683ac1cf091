"""Depthwise k x k convolution + activation as one Triton kernel (inference).

GroupMamba's FFN is ``fc1 -> 3x3 depthwise conv (bias) -> GELU -> fc2`` on
channels-last maps of 512-1792 channels. Its conv + GELU was 17 ms of
GroupMamba-B's 108 ms compiled fp32 inference step on an H100, at about 43%
of the copy bandwidth (docs/benchmarks.md): cuDNN's depthwise kernel and the
activation are two passes, and Inductor's fused shifted sum reads each input
element 9 times from tiles that are one-dimensional, so a tile holds none of
its vertical neighbours (our reading of the 43%; cache traffic was not
profiled).

Here a program owns a spatial tile of ``TH x TW`` pixels times ``TC``
channels of one image. The ``k * k`` shifted loads of the tile overlap (they
are the tile's own pixels plus a halo), so they can be served by the caches
rather than memory, and the output is written once, with the bias and the
activation applied in registers. (Cache hit rates were not profiled; with
its tile the kernel reaches 69-83% of the copy bandwidth on the 28x28 and
56x56 fp32 maps.) Accumulation is in fp32 for every input dtype; the output
has the input's dtype.

No autograd: it serves inference (``torch.no_grad``/``inference_mode``) only;
:class:`~mmgroupmamba.models.common.DepthwiseConv2d` keeps cuDNN whenever a
gradient is needed. It is a custom op (``mmgroupmamba::depthwise_conv2d``)
with a fake kernel, so ``torch.compile`` traces it without a graph break;
plain eager calls run its body without the op's dispatch
(:func:`~mmgroupmamba.ops.dispatch.op_or_body`).
"""
import contextlib
import math
import os
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .dispatch import op_or_body

_INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'

#: Activations the kernel applies to its output (None: the conv alone).
ACTIVATIONS = (None, 'gelu', 'silu')
_ACT_CODE = {None: 0, 'gelu': 1, 'silu': 2}


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, H, W, C, sxb, sxc, sxh, sxw, syb, syh, syw,
                   K: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, TC: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr):
    pid_s = tl.program_id(0)
    n_tw = tl.cdiv(W, TW)
    th = pid_s // n_tw
    tw = pid_s - th * n_tw
    b = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, TH * TW)
    hh = th * TH + p // TW                                   # [P] output pixel rows
    ww = tw * TW + p % TW
    c = tl.program_id(1) * TC + tl.arange(0, TC)             # [TC]
    cm = c < C
    x_b = x_ptr + b * sxb + c[None, :] * sxc
    acc = tl.zeros([TH * TW, TC], dtype=tl.float32)
    for i in tl.static_range(K):
        hi = hh + (i - K // 2)
        for j in tl.static_range(K):
            wj = ww + (j - K // 2)
            m = (hi >= 0) & (hi < H) & (wj >= 0) & (wj < W)
            xv = tl.load(x_b + (hi * sxh + wj * sxw)[:, None], mask=m[:, None] & cm[None, :],
                         other=0.0)
            wv = tl.load(w_ptr + c * (K * K) + (i * K + j), mask=cm, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:    # GELU, exact (erf) form as F.gelu's default
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    elif ACT == 2:  # SiLU
        acc = acc / (1.0 + tl.exp(-acc))
    om = ((hh < H) & (ww < W))[:, None] & cm[None, :]
    tl.store(y_ptr + b * syb + (hh * syh + ww * syw)[:, None] + c[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=om)


#: Benchmark hook: keys 'TH', 'TW', 'TC', 'num_warps' override :func:`_tile`.
TILE_OVERRIDE: Dict[str, int] = {}


def _tile(channels: int) -> Tuple[int, int, int, int]:
    """(TH, TW, TC, warps). 4 x 8 pixels x 64 channels on 4 warps on a GPU:
    the best of a sweep on an H100 for the large fp32 maps, which dominate
    (docs/benchmarks.md); small tiles in the interpreter, which runs
    programs one by one."""
    if _INTERPRET:
        th, tw, tc, warps = 2, 4, 4, 1
    else:
        th, tw, tc, warps = 4, 8, min(64, triton.next_power_of_2(channels)), 4
    ov = TILE_OVERRIDE
    return ov.get('TH', th), ov.get('TW', tw), ov.get('TC', tc), ov.get('num_warps', warps)


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str]) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation: expected one of {ACTIVATIONS}, got {activation!r}')
    if x.dim() != 4:
        raise ValueError(f'x: expected (B, C, H, W), got {tuple(x.shape)}')
    c = x.shape[1]
    k = weight.shape[-1]
    if weight.shape != (c, 1, k, k) or k % 2 == 0:
        raise ValueError(f'weight: expected (C, 1, k, k) with C = {c} (x\'s channels) and k '
                         f'odd, got {tuple(weight.shape)}')
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f'bias: expected shape ({c},), got {tuple(bias.shape)}')
    return k


def _depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                      activation: Optional[str] = None) -> Tensor:
    """``act(F.conv2d(x, weight, bias, padding=k // 2, groups=C))`` by the
    Triton kernel (stride 1, "same" zero padding, k odd).

    Args:
        x: (B, C, H, W), any strides (coalesced when the channels are the
            innermost axis, i.e. channels-last memory).
        weight: (C, 1, k, k). bias: (C,) or None.
        activation: None, 'gelu' (exact) or 'silu'.
    Returns:
        (B, C, H, W) in x's dtype, channels-last memory.
    """
    k = _check(x, weight, bias, activation)
    bsz, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    weight = weight.contiguous()
    th, tw, tc, warps = _tile(c)
    grid = (triton.cdiv(h, th) * triton.cdiv(w, tw), triton.cdiv(c, tc), bsz)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _dwconv_kernel[grid](x, weight, bias if bias is not None else weight, y, h, w, c,
                             *x.stride(), y.stride(0), y.stride(2), y.stride(3), K=k, TH=th,
                             TW=tw, TC=tc, HAS_BIAS=bias is not None,
                             ACT=_ACT_CODE[activation], num_warps=warps)
    return y


_depthwise_conv2d_op = torch.library.custom_op('mmgroupmamba::depthwise_conv2d',
                                               _depthwise_conv2d, mutates_args=())
depthwise_conv2d = op_or_body(_depthwise_conv2d_op, _depthwise_conv2d)


@_depthwise_conv2d_op.register_fake
def _depthwise_conv2d_fake(x, weight, bias=None, activation=None):
    _check(x, weight, bias, activation)
    return torch.empty_like(x, memory_format=torch.channels_last)


@register_flop_formula(torch.ops.mmgroupmamba.depthwise_conv2d)
def _depthwise_conv2d_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    # 2 FLOPs per multiply-accumulate, as aten's convolution (the activation
    # is not counted)
    return 2 * math.prod(x_shape) * weight_shape[-1] * weight_shape[-2]


__all__ = ['ACTIVATIONS', 'depthwise_conv2d']
