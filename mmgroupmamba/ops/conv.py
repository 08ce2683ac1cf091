"""Convolution + bias + ReLU in one cuDNN call, for the stems' BatchNorm
convolutions in inference.

With its running statistics a BatchNorm after a convolution is an affine map
per output channel, so conv -> BN -> ReLU is one convolution with a scaled
weight and a bias, then ReLU (the folding is
:func:`mmgroupmamba.models.common.fold_batchnorm`). cuDNN applies that bias
and ReLU in the convolution's epilogue (``aten::cudnn_convolution_relu``);
unfused, compiled, they were one more pass over each conv output: 0.82 ms of
GroupMamba-B's fp32 inference step on an H100, whose stem writes three
64 x 112 x 112 maps per image (docs/benchmarks.md).

aten's op has no fake (meta) kernel, so ``torch.compile`` cannot trace it;
:func:`conv2d_bias_relu` wraps it as a custom op with one (plain eager calls
run the op's body without its dispatch, see
:func:`~mmgroupmamba.ops.dispatch.op_or_body`). Off CUDA (or with cuDNN
disabled) the op is ``relu(conv2d(...))``.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .dispatch import op_or_body


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f'x: expected (B, C, H, W), got {tuple(x.shape)}')
    if weight.dim() != 4 or weight.shape[1] * groups != x.shape[1]:
        raise ValueError(f'weight: expected (C_out, C / groups, kh, kw) with C = {x.shape[1]} '
                         f"(x's channels) and groups = {groups}, got {tuple(weight.shape)}")
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f'bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}')


def _conv2d_bias_relu(x: Tensor, weight: Tensor, bias: Tensor, stride: List[int],
                      padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """``relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))``,
    on CUDA as one cuDNN call.

    Args:
        x: (B, C, H, W). weight: (C_out, C / groups, kh, kw). bias: (C_out,).
        stride, padding, dilation: two ints each (zero padding).
    Returns:
        (B, C_out, H_out, W_out), channels-last memory.
    """
    _check(x, weight, bias, groups)
    if x.is_cuda and torch.backends.cudnn.enabled:
        # a channels-last weight makes cuDNN pick its NHWC kernels
        y = torch.cudnn_convolution_relu(x, weight.contiguous(memory_format=torch.channels_last),
                                         bias, stride, padding, dilation, groups)
    else:
        y = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    return y.contiguous(memory_format=torch.channels_last)


_conv2d_bias_relu_op = torch.library.custom_op('mmgroupmamba::conv2d_bias_relu',
                                               _conv2d_bias_relu, mutates_args=())
conv2d_bias_relu = op_or_body(_conv2d_bias_relu_op, _conv2d_bias_relu)


@_conv2d_bias_relu_op.register_fake
def _conv2d_bias_relu_fake(x, weight, bias, stride, padding, dilation, groups):
    _check(x, weight, bias, groups)
    kh, kw = weight.shape[-2:]
    h = _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    w = _out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    return x.new_empty(x.shape[0], weight.shape[0], h, w).contiguous(
        memory_format=torch.channels_last)


@register_flop_formula(torch.ops.mmgroupmamba.conv2d_bias_relu)
def _conv2d_bias_relu_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # as aten's convolution (bias and ReLU not counted)
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


__all__ = ['conv2d_bias_relu']
