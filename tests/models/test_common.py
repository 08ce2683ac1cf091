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


@pytest.mark.parametrize('activation', [None, 'gelu', 'silu'])
def test_depthwise_conv2d_is_conv_then_activation(kernel_device, activation):
    """``DepthwiseConv2d`` computes act(conv(x)) with nn.Conv2d's parameters
    and keys, on the CPU/cuDNN path (gradients on and off) and through the
    Triton kernel (interpreter; the dispatch rule patched to take it)."""
    from mmgroupmamba.models import common
    torch.manual_seed(0)
    conv = common.DepthwiseConv2d(8, activation=activation).to(kernel_device)
    assert isinstance(conv, nn.Conv2d) and sorted(conv.state_dict()) == ['bias', 'weight']
    x = torch.randn(2, 8, 6, 5, device=kernel_device).to(memory_format=torch.channels_last)
    want = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(),
                                      padding=1, groups=8)
    want = {None: want, 'gelu': torch.nn.functional.gelu(want),
            'silu': torch.nn.functional.silu(want)}[activation]
    out = conv(x)
    assert out.requires_grad
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x).double(), want, rtol=1e-5, atol=1e-6)
    calls = []
    real = common.depthwise_conv2d

    def spy(*args):
        calls.append(args[3])
        return real(*args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, '_triton_conv_applies', lambda x, w: True)
        mp.setattr(common, 'depthwise_conv2d', spy)
        with torch.no_grad():
            got = conv(x)
    assert calls == [activation]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_depthwise_conv2d_takes_the_kernel_for_cuda_fp32_inference_only():
    """The dispatch rule: the CPU and anything needing a gradient keep cuDNN;
    with a GPU, fp32 CUDA maps without gradient take the kernel, fp16 not."""
    from mmgroupmamba.models.common import _triton_conv_applies
    w = torch.randn(8, 1, 3, 3)
    assert not _triton_conv_applies(torch.randn(1, 8, 4, 4), w)
    if torch.cuda.is_available():
        x, w = torch.randn(1, 8, 4, 4, device='cuda'), w.cuda()
        with torch.no_grad():
            assert _triton_conv_applies(x, w)
            assert not _triton_conv_applies(x.half(), w.half())
        assert _triton_conv_applies(x, w)               # nothing requires a gradient
        assert not _triton_conv_applies(x, w.requires_grad_())


def test_depthwise_conv2d_rejects_an_unknown_activation():
    from mmgroupmamba.models.common import DepthwiseConv2d
    with pytest.raises(ValueError, match="activation must be one of .*'relu'"):
        DepthwiseConv2d(8, activation='relu')


def test_depthwise_conv2d_rejects_an_even_kernel():
    from mmgroupmamba.models.common import DepthwiseConv2d
    with pytest.raises(ValueError, match='kernel_size must be a positive odd integer'):
        DepthwiseConv2d(8, kernel_size=4)
