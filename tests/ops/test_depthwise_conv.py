"""The depthwise conv + activation kernel (mmgroupmamba.ops.depthwise_conv2d):
against ``F.conv2d`` in float64, its errors, and its torch.compile/FLOP
registration. Under the interpreter on the CPU, compiled with ``--gpu``."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mmgroupmamba.ops import depthwise_conv2d

ACT = {None: lambda t: t, 'gelu': F.gelu, 'silu': F.silu}


def _reference(x, weight, bias, activation):
    k = weight.shape[-1]
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(),
                 padding=k // 2, groups=x.shape[1])
    return ACT[activation](y)


@pytest.mark.parametrize('k, activation', [(1, 'gelu'), (3, None), (3, 'gelu'), (3, 'silu'),
                                           (5, 'silu')])
def test_matches_conv2d(kernel_device, k, activation):
    """Non-square maps, a map smaller than the kernel, channel counts that
    are not a multiple of the channel tile, channels-last and contiguous
    inputs, with and without bias."""
    torch.manual_seed(k)
    for i, shape in enumerate([(2, 6, 5, 7), (1, 3, 1, 2), (1, 37, 5, 6)]):
        x = torch.randn(shape, device=kernel_device)
        if i != 1:
            x = x.to(memory_format=torch.channels_last)
        weight = torch.randn(shape[1], 1, k, k, device=kernel_device)
        bias = torch.randn(shape[1], device=kernel_device) if i != 2 else None
        got = depthwise_conv2d(x, weight, bias, activation)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.double(), _reference(x, weight, bias, activation),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_maps_keep_their_dtype(kernel_device, dtype):
    """Half-precision maps: the output has the map's dtype and is within the
    dtype's rounding of the float64 result (this tolerance would not tell
    fp16 from fp32 accumulation over 9 taps)."""
    torch.manual_seed(0)
    x = torch.randn(1, 40, 4, 9, device=kernel_device).to(dtype).to(
        memory_format=torch.channels_last)
    weight = torch.randn(40, 1, 3, 3, device=kernel_device).to(dtype)
    bias = torch.randn(40, device=kernel_device).to(dtype)
    got = depthwise_conv2d(x, weight, bias, 'gelu')
    assert got.dtype == dtype
    want = _reference(x, weight, bias, 'gelu')
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize('args, match', [
    (((2, 6, 5, 7), (6, 1, 4, 4), None, None), r'weight: expected \(C, 1, k, k\).*k odd'),
    (((2, 6, 5, 7), (5, 1, 3, 3), None, None), r'weight: expected .*C = 6'),
    (((2, 6, 5, 7), (6, 1, 3, 3), (5,), None), r'bias: expected shape \(6,\)'),
    (((2, 6, 5, 7), (6, 1, 3, 3), None, 'relu'), r"activation: expected one of .*'relu'"),
    (((6, 5, 7), (6, 1, 3, 3), None, None), r'x: expected \(B, C, H, W\)'),
])
def test_bad_arguments_name_the_parameter(args, match):
    x_shape, w_shape, b_shape, activation = args
    bias = torch.randn(b_shape) if b_shape else None
    with pytest.raises(ValueError, match=match):
        depthwise_conv2d(torch.randn(x_shape), torch.randn(w_shape), bias, activation)


def test_traces_whole_under_torch_compile_and_counts_flops(kernel_device):
    """The custom op's fake kernel lets torch.compile trace it (fullgraph);
    the FLOP counter sees 2 * B*C*H*W * k*k."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5, device=kernel_device).to(memory_format=torch.channels_last)
    weight = torch.randn(8, 1, 3, 3, device=kernel_device)
    bias = torch.randn(8, device=kernel_device)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: depthwise_conv2d(t, weight, bias, 'silu') * 2,
                             backend='eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), depthwise_conv2d(x, weight, bias, 'silu') * 2)
    with FlopCounterMode(display=False) as counter:
        depthwise_conv2d(x, weight, bias, None)
    assert counter.get_total_flops() == 2 * x.numel() * 9
