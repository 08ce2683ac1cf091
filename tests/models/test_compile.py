"""Both backbones trace whole under torch.compile (the scan is a custom op
with a fake kernel): ``fullgraph=True`` fails on any graph break. The
compiled forward and backward equal eager. CPU, small archs, the
``aot_eager`` backend (Inductor's code generation is what the GPU benchmark
times; tracing is what can break)."""
import pytest
import torch

from mmgroupmamba.models import GroupMamba, SpatialMamba

ARCHS = {
    'groupmamba': (GroupMamba, dict(stem_channels=8, embed_dims=(16, 32, 48, 64),
                                    depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))),
    'spatialmamba': (SpatialMamba, dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))),
}


def _model_input_compiled(family: str, train: bool, device: str = 'cpu'):
    """(small backbone in train/eval mode, an input, the model compiled whole)."""
    torch._dynamo.reset()
    cls, arch = ARCHS[family]
    torch.manual_seed(0)
    model = cls(arch, drop_path_rate=0.0).train(train).to(device)
    x = torch.randn(2, 3, 40, 56, device=device)
    return model, x, torch.compile(model, fullgraph=True, backend='aot_eager')


@pytest.mark.parametrize('family', sorted(ARCHS))
def test_backbone_compiles_fullgraph_and_matches_eager(family):
    model, x, compiled = _model_input_compiled(family, train=True)

    def run(fn):
        outs = fn(x)
        loss = sum((o * o).mean() for o in outs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return outs, grads

    want_outs, want_grads = run(model)
    got_outs, got_grads = run(compiled)
    assert [o.shape for o in got_outs] == [o.shape for o in want_outs]
    for a, b in zip(got_outs, want_outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('family', sorted(ARCHS))
def test_backbone_compiled_inference_matches_eager(family, kernel_device):
    """Compiled fp32 inference (gradients off) traces whole and computes the
    eager function; with ``--gpu`` on CUDA, where the dispatch rules take the
    inference kernels (fused stem conv, grouped batched GEMMs, the depthwise
    kernel, the Triton scan)."""
    model, x, compiled = _model_input_compiled(family, train=False, device=kernel_device)
    with torch.no_grad():
        want, got = model(x), compiled(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('family', sorted(ARCHS))
def test_fast_inference_paths_trace_whole(family, monkeypatch):
    """The fp32 CUDA inference paths of the stem (fused conv-BN-ReLU) and of
    GroupMamba's grouped projections (batched GEMMs), with their rules
    patched on so that the CPU takes them, trace whole through their fake
    kernels and equal eager (the depthwise-conv kernel's tracing is tested
    with the op)."""
    from mmgroupmamba.models import common
    from mmgroupmamba.ops import linear as lin
    monkeypatch.setattr(common, '_fused_conv_bn_applies', lambda x, conv, bn: True)
    monkeypatch.setattr(lin, '_use_bmm', lambda x, w: True)
    model, x, compiled = _model_input_compiled(family, train=False)
    with torch.no_grad():
        want, got = model(x), compiled(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
