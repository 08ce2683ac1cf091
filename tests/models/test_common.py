"""Pieces shared by both backbones (mmgroupmamba.models.common)."""
import pytest
import torch
import torch.nn as nn

from mmgroupmamba.models import GroupMamba, SpatialMamba


@pytest.mark.parametrize('cls', [GroupMamba, SpatialMamba])
def test_default_init_of_linear_and_layernorm(cls):
    """Both official codebases init Linear weights trunc_normal(std 0.02) with
    zero bias and LayerNorm to 1 / 0 (``init_linear_norm_``); a random init
    must keep that (the SSM's own parameters are tested per model)."""
    torch.manual_seed(0)
    model = cls('tiny')
    model.init_weights()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert linears and norms
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 5e-4 and abs(weights.mean().item()) < 5e-4
    assert all(torch.all(m.bias == 0) for m in linears if m.bias is not None)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


@pytest.mark.parametrize('k', [1, 3, 5])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('with_bias', [False, True])
def test_depthwise_conv2d_shifted_equals_conv2d(k, channels_last, with_bias):
    """The shifted-sum form is the zero-padded "same" depthwise convolution
    (float64, non-square map, a map smaller than the kernel)."""
    from mmgroupmamba.models.common import depthwise_conv2d_shifted
    torch.manual_seed(0)
    for shape in [(2, 6, 5, 7), (1, 3, 1, 2)]:
        x = torch.randn(shape, dtype=torch.float64)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        weight = torch.randn(shape[1], 1, k, k, dtype=torch.float64)
        bias = torch.randn(shape[1], dtype=torch.float64) if with_bias else None
        want = torch.nn.functional.conv2d(x, weight, bias, padding=k // 2, groups=shape[1])
        got = depthwise_conv2d_shifted(x, weight, bias)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _traced_ops(module, x, grad: bool):
    """Names of the calls in the FX graph torch.compile traces for
    ``module(x)`` (with gradients on or off), and the compiled output."""
    names = []

    def backend(gm, example_inputs):
        names.extend(str(n.target) for n in gm.graph.nodes if n.op == 'call_function')
        return gm.forward

    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        out = torch.compile(module, backend=backend, fullgraph=True)(x)
    return names, out


def test_depthwise_conv2d_takes_the_shifted_sum_only_in_compiled_fp32_inference():
    from mmgroupmamba.models.common import DepthwiseConv2d
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        conv = DepthwiseConv2d(8).to(dtype)
        x = torch.randn(2, 8, 6, 5, dtype=dtype).to(memory_format=torch.channels_last)
        want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1, groups=8)
        for grad in (False, True):
            names, out = _traced_ops(conv, x, grad)
            shifted = not grad and dtype == torch.float32
            assert any('conv2d' in n for n in names) != shifted, (dtype, grad, names)
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    # eagerly it is nn.Conv2d (the same parameters and keys)
    assert isinstance(conv, nn.Conv2d) and sorted(conv.state_dict()) == ['bias', 'weight']
    with torch.no_grad():
        torch.testing.assert_close(conv(x), want)


def test_depthwise_conv2d_rejects_an_even_kernel():
    from mmgroupmamba.models.common import DepthwiseConv2d
    with pytest.raises(ValueError, match='kernel_size must be a positive odd integer'):
        DepthwiseConv2d(8, kernel_size=4)
