"""The fused conv + bias + ReLU op (mmgroupmamba.ops.conv): against
``relu(conv2d)`` in float64, its fake kernel under torch.compile, its FLOP
count and its errors. On the CPU the op is PyTorch's conv; with ``--gpu`` it
is cuDNN's fused kernel (TF32 off here, so that fp32 accuracy is checked)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mmgroupmamba.ops.conv import conv2d_bias_relu

CASES = [  # (x shape, weight shape, stride, padding, dilation, groups, channels-last x)
    ((2, 3, 19, 16), (8, 3, 7, 7), 2, 3, 1, 1, True),     # the GroupMamba stem's first conv
    ((2, 3, 19, 16), (8, 3, 7, 7), 2, 3, 1, 1, False),
    ((2, 8, 9, 10), (8, 8, 3, 3), 1, 1, 1, 1, True),
    ((1, 6, 9, 10), (4, 3, 3, 3), 2, 2, 2, 2, True),      # groups and dilation
]


@pytest.mark.parametrize('case', CASES)
def test_matches_relu_conv2d_in_float64(kernel_device, case, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    x_shape, w_shape, stride, padding, dilation, groups, channels_last = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen).to(kernel_device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(w_shape, generator=gen).to(kernel_device)
    bias = torch.randn(w_shape[0], generator=gen).to(kernel_device)
    got = conv2d_bias_relu(x, weight, bias, [stride] * 2, [padding] * 2, [dilation] * 2, groups)
    want = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), stride, padding,
                           dilation, groups))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got == 0).any() and (got > 0).any()                  # the ReLU is applied
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_traces_whole_under_torch_compile_and_counts_flops(kernel_device):
    x = torch.randn(2, 3, 12, 10, device=kernel_device)
    weight = torch.randn(4, 3, 3, 3, device=kernel_device)
    bias = torch.randn(4, device=kernel_device)
    args = (weight, bias, [2, 2], [1, 1], [1, 1], 1)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: conv2d_bias_relu(t, *args) + 1, backend='eager',
                             fullgraph=True)
    torch.testing.assert_close(compiled(x), conv2d_bias_relu(x, *args) + 1)
    with FlopCounterMode(display=False) as ours:
        conv2d_bias_relu(x, *args)
    with FlopCounterMode(display=False) as theirs:
        F.conv2d(x, weight, bias, 2, 1)
    assert ours.get_total_flops() == theirs.get_total_flops() > 0


@pytest.mark.parametrize('x_shape, w_shape, b_shape, match', [
    ((2, 3, 8, 8), (4, 2, 3, 3), (4,), r"weight: expected \(C_out, C / groups, kh, kw\) with C = 3"),
    ((2, 3, 8, 8), (4, 3, 3, 3), (3,), r'bias: expected shape \(4,\)'),
    ((3, 8, 8), (4, 3, 3, 3), (4,), r'x: expected \(B, C, H, W\)'),
])
def test_bad_arguments_name_the_parameter(x_shape, w_shape, b_shape, match):
    with pytest.raises(ValueError, match=match):
        conv2d_bias_relu(torch.randn(x_shape), torch.randn(w_shape), torch.randn(b_shape),
                         [1, 1], [1, 1], [1, 1], 1)
