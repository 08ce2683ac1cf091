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


def _conv_bn(conv_bias: bool, affine: bool = True, groups: int = 1):
    """A conv and an eval-mode BatchNorm with non-trivial statistics."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=conv_bias, groups=groups)
    bn = nn.BatchNorm2d(6, affine=affine)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return conv, bn.eval()


@pytest.mark.parametrize('conv_bias, affine, groups', [(False, True, 1), (True, True, 2),
                                                       (True, False, 1)])
def test_fold_batchnorm_is_conv_then_bn(conv_bias, affine, groups):
    from mmgroupmamba.models.common import fold_batchnorm
    conv, bn = _conv_bn(conv_bias, affine, groups)
    conv, bn = conv.double(), bn.double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    weight, bias = fold_batchnorm(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias, 2, 1, 1, groups),
                                   bn(conv(x)), rtol=1e-10, atol=1e-10)


def test_conv_bn_relu_fused_path_equals_the_modules(monkeypatch):
    """With the rule patched to take it, ``conv_bn_relu`` calls the fused op
    on the folded weights and equals relu(bn(conv(x))); unpatched on the CPU
    it runs the modules (gradients flow)."""
    from mmgroupmamba.models import common
    conv, bn = _conv_bn(False)
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        want = torch.relu(bn(conv(x)))
    out = common.conv_bn_relu(x, conv, bn)
    assert out.requires_grad
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    calls = []
    real = common.conv2d_bias_relu
    monkeypatch.setattr(common, 'conv2d_bias_relu', lambda *a: calls.append(a[3:]) or real(*a))
    monkeypatch.setattr(common, '_fused_conv_bn_applies', lambda x, conv, bn: True)
    with torch.no_grad():
        got = common.conv_bn_relu(x, conv, bn)
    assert calls == [([2, 2], [1, 1], [1, 1], 1)]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_conv_bn_relu_fuses_for_cuda_fp32_inference_only():
    """The rule: the CPU, a training-mode BN (batch statistics) and anything
    needing a gradient run the modules; with a GPU, fp32 eval maps without
    gradient take the fused kernel, not under autocast."""
    from mmgroupmamba.models.common import _fused_conv_bn_applies
    conv, bn = _conv_bn(False)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert not _fused_conv_bn_applies(x, conv, bn)
    if torch.cuda.is_available():
        x, conv, bn = x.cuda(), conv.cuda(), bn.cuda()
        assert not _fused_conv_bn_applies(x, conv, bn)              # conv.weight needs a grad
        with torch.no_grad():
            assert _fused_conv_bn_applies(x, conv, bn)
            assert not _fused_conv_bn_applies(x, conv, bn.train())
            bn.eval()
            with torch.autocast('cuda', dtype=torch.float16):
                assert not _fused_conv_bn_applies(x, conv, bn)


@pytest.mark.parametrize('cls', [GroupMamba, SpatialMamba])
def test_fast_inference_paths_equal_the_plain_ones(cls, kernel_device, monkeypatch):
    """The restructured inference of a backbone (stem conv-BN-ReLU folded
    into one op, GroupMamba's grouped projections as batched GEMMs on
    group-strided views) against the plain modules (einsum, conv -> BN ->
    ReLU), with non-trivial BN statistics. The rules are patched on, so the
    CPU runs the same code as a GPU."""
    from mmgroupmamba.models import common
    from mmgroupmamba.ops import linear as lin
    torch.manual_seed(0)
    small = (dict(stem_channels=8, embed_dims=(16, 32), depths=(1, 1), mlp_ratios=(2, 2))
             if cls is GroupMamba else dict(embed_dims=(16, 32), depths=(1, 1)))
    model = cls(small, out_indices=(0, 1), fp32_gemm='ieee').eval().to(kernel_device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 24, 20, device=kernel_device)
    with torch.no_grad():
        want = model(x)
        calls = {'conv': 0, 'bmm': 0}
        real_conv, real_bmm = common.conv2d_bias_relu, lin.grouped_linear_bmm

        def conv_spy(*a):
            calls['conv'] += 1
            return real_conv(*a)

        def bmm_spy(*a):
            calls['bmm'] += 1
            return real_bmm(*a)
        monkeypatch.setattr(common, 'conv2d_bias_relu', conv_spy)
        monkeypatch.setattr(lin, 'grouped_linear_bmm', bmm_spy)
        monkeypatch.setattr(common, '_fused_conv_bn_applies', lambda x, conv, bn: True)
        monkeypatch.setattr(lin, '_use_bmm', lambda x, w: True)
        got = model(x)
    # GroupMamba: 3 stem convs, 4 projections per block; Spatial-Mamba: 3 stem convs
    assert calls == ({'conv': 3, 'bmm': 8} if cls is GroupMamba else {'conv': 3, 'bmm': 0})
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fp32_cuda_inference_rule():
    """The condition every inference kernel's rule shares: the CPU, a
    non-float32 parameter and any tensor needing a gradient rule it out; on a
    GPU so does autocast."""
    from mmgroupmamba.ops.dispatch import fp32_cuda_inference
    x, w = torch.randn(2, 3), torch.randn(3)
    with torch.no_grad():
        assert not fp32_cuda_inference(x, w)
    if torch.cuda.is_available():
        x, w = x.cuda(), w.cuda()
        assert fp32_cuda_inference(x, w)                 # nothing requires a gradient
        assert not fp32_cuda_inference(x, w.double())
        assert not fp32_cuda_inference(x, w.clone().requires_grad_())
        with torch.no_grad():
            assert fp32_cuda_inference(x, w.clone().requires_grad_())
            with torch.autocast('cuda', dtype=torch.float16):
                assert not fp32_cuda_inference(x, w)
