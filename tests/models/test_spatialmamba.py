"""Spatial-Mamba: parameter counts, fidelity of the structure-aware SSM and
of the state fusion against plain upstream-style code written here, eval
after weight updates, backbone shapes/freezing/checkpointing, official
checkpoints, error messages and the OpenMMLab registrations."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_utils import randomize as randomize_model

from mmgroupmamba.models import SpatialMamba, SpatialMambaClassifier, create_model
from mmgroupmamba.models.spatialmamba import StateFusion, StructureAwareSSM

SMALL_ARCH = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))

# create_model (classifier with head, 1000 classes) / dense backbone (4 out norms, no head)
PARAMS = {'tiny': (26_748_862, 26_236_758), 'small': (43_074_280, 42_562_176),
          'base': (95_745_592, 94_977_936)}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def rel_err(a, b):
    """max |a - b| relative to max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def randomize(model, seed=0):
    """Non-trivial values everywhere; the fusion kernels and alpha (which
    init to ones) get their own scales."""
    return randomize_model(model, seed, rules=(
        (('alpha',), lambda r: 1.0 + 0.5 * r),
        (('kernel_3', 'kernel_3_1', 'kernel_3_2'), lambda r: r / 3.0),
    ))


# --------------------------------------------------------------------------
# Plain upstream-style reference (Spatial-Mamba classification/models).
# --------------------------------------------------------------------------
def ref_state_fusion(h, k3, k3_1, k3_2, alpha):
    """Upstream training path: three separately padded dilated convs."""
    dim = h.shape[1]
    h1 = F.conv2d(F.pad(h, (1, 1, 1, 1), mode='replicate'), k3, dilation=1, groups=dim)
    h2 = F.conv2d(F.pad(h, (3, 3, 3, 3), mode='replicate'), k3_1, dilation=3, groups=dim)
    h3 = F.conv2d(F.pad(h, (5, 5, 5, 5), mode='replicate'), k3_2, dilation=5, groups=dim)
    return alpha[0] * h1 + alpha[1] * h2 + alpha[2] * h3


def ref_merged_kernel(k3, k3_1, k3_2, alpha):
    """Upstream eval path: one 11x11 depthwise kernel."""
    w = torch.zeros(k3.shape[0], 1, 11, 11, dtype=k3.dtype)
    w[:, :, 4:7, 4:7] += alpha[0] * k3
    w[:, :, 2:9:3, 2:9:3] += alpha[1] * k3_1
    w[:, :, 0:11:5, 0:11:5] += alpha[2] * k3_2
    return w


def ref_ssm(m, x):
    """StructureAwareSSM written the upstream way with a sequential scan.
    x: (B, H, W, C) -> (B, H, W, C)."""
    xx, z = F.linear(x, m.in_proj.weight).chunk(2, dim=-1)
    z = F.silu(z)
    D = xx.shape[-1]
    xs = F.silu(F.conv2d(xx.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1,
                         groups=D))                                    # (B, D, H, W)
    b, _, H, W = xs.shape
    L = H * W
    u = xs.reshape(b, D, L)
    x_dbl = torch.einsum('cd,bdl->bcl', m.x_proj_weight, u)
    R, N = m.dt_rank, m.d_state
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=1)
    dts = torch.einsum('dr,brl->bdl', m.dt_projs_weight, dts)
    A = -torch.exp(m.A_logs)                                           # (D, N)
    delta = F.softplus(dts + m.dt_projs_bias[:, None])                 # (B, D, L)
    h = torch.zeros(b, D, N, dtype=x.dtype)
    hs = []
    for t in range(L):
        dt = delta[:, :, t, None]                                      # (B, D, 1)
        h = torch.exp(dt * A) * h + dt * Bs[:, None, :, t] * u[:, :, t, None]
        hs.append(h)
    hs = torch.stack(hs, dim=-1)                                       # (B, D, N, L)
    assert N == 1
    hmap = hs[:, :, 0].reshape(b, D, H, W)
    sf = m.state_fusion
    hf = ref_state_fusion(hmap, sf.kernel_3, sf.kernel_3_1, sf.kernel_3_2, sf.alpha)
    y = hf * Cs.reshape(b, 1, H, W) + xs * m.Ds.view(-1, 1, 1)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (D,), m.out_norm.weight, m.out_norm.bias,
                     m.out_norm.eps) * z
    return F.linear(y, m.out_proj.weight)


# --------------------------------------------------------------------------
@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_param_counts(variant):
    with torch.device('meta'):  # shapes only: fast
        model = create_model(f'spatialmamba_{variant}')
        dense = SpatialMamba(variant)
    assert _count(model) == PARAMS[variant][0]
    assert _count(dense) == PARAMS[variant][1]
    assert [n for n, _ in dense.named_children() if n.startswith('outnorm')] == \
        ['outnorm0', 'outnorm1', 'outnorm2', 'outnorm3']
    assert not hasattr(dense, 'head')


@pytest.mark.parametrize('hw', [(5, 7), (3, 1)])
def test_structure_aware_ssm_matches_upstream_style(hw):
    """float64, all parameters random (fusion kernels and alpha included):
    output, input gradient and parameter gradients equal the sequential
    upstream-style code run on the same parameters."""
    torch.manual_seed(0)
    m = randomize(StructureAwareSSM(24).double(), seed=3)   # d_inner 48, dt_rank 2
    assert m.dt_rank == 2 and m.d_state == 1
    x = torch.randn(2, *hw, 24, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = m(x1), ref_ssm(m, x2)
    assert got.dtype == torch.float64 and got.shape == x.shape
    assert rel_err(got, want) <= 1e-10
    names, params_ = zip(*m.named_parameters())
    w = torch.randn_like(want)
    g1 = torch.autograd.grad((got * w).sum(), (x1,) + params_)
    g2 = torch.autograd.grad((want * w).sum(), (x2,) + params_)
    assert rel_err(g1[0], g2[0]) <= 1e-10
    for name, a, b in zip(names, g1[1:], g2[1:]):
        assert b.abs().max() > 0, name
        assert rel_err(a, b) <= 1e-10, name
    # sensitivity: each fusion kernel matters
    for k in ('kernel_3', 'kernel_3_1', 'kernel_3_2'):
        with torch.no_grad():
            getattr(m.state_fusion, k)[:, :, 0, 0] += 0.5
            assert rel_err(m(x), want) > 1e-3, k
            getattr(m.state_fusion, k)[:, :, 0, 0] -= 0.5


def test_state_fusion_equals_upstream_merged_kernel_and_per_state():
    torch.manual_seed(0)
    D = 6
    sf = randomize(StateFusion(D).double(), seed=5)
    h = torch.randn(2, D, 9, 13, dtype=torch.float64)
    got = sf(h)
    merged = ref_merged_kernel(sf.kernel_3, sf.kernel_3_1, sf.kernel_3_2, sf.alpha)
    want_eval = F.conv2d(F.pad(h, (5, 5, 5, 5), mode='replicate'), merged, groups=D)
    want_train = ref_state_fusion(h, sf.kernel_3, sf.kernel_3_1, sf.kernel_3_2, sf.alpha)
    assert got.shape == h.shape
    assert rel_err(got, want_eval) <= 1e-12
    assert rel_err(got, want_train) <= 1e-12
    # maps smaller than the dilation (replicate padding = clamping)
    hs = torch.randn(1, D, 2, 3, dtype=torch.float64)
    want_small = F.conv2d(F.pad(hs, (5, 5, 5, 5), mode='replicate'), merged, groups=D)
    assert rel_err(sf(hs), want_small) <= 1e-12
    # states (B, D, N, H, W): the same kernels for every state index
    h5 = torch.randn(2, D, 2, 5, 7, dtype=torch.float64)
    out5 = sf(h5)
    assert out5.shape == h5.shape
    for n in range(2):
        assert rel_err(out5[:, :, n], sf(h5[:, :, n].contiguous())) <= 1e-12
    assert not torch.allclose(out5[:, :, 0], out5[:, :, 1])


def test_eval_follows_weight_updates():
    """Upstream caches the merged kernel at the first eval call; ours must
    use the current weights."""
    torch.manual_seed(0)
    model = randomize(SpatialMamba(SMALL_ARCH, drop_path_rate=0.0), seed=2).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        out1 = model(x)
        sf = model.layers[2].blocks[0].self_attention.state_fusion
        sf.kernel_3.mul_(-0.5).add_(torch.randn_like(sf.kernel_3))
        sf.alpha.add_(torch.tensor([0.5, -1.0, 2.0]))
        out2 = model(x)
    assert any(rel_err(a, b) > 1e-3 for a, b in zip(out2[2:], out1[2:]))
    assert torch.equal(out2[0], out1[0]) and torch.equal(out2[1], out1[1])  # earlier stages
    fresh = SpatialMamba(SMALL_ARCH, drop_path_rate=0.0)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        out3 = fresh(x)
    for a, b in zip(out2, out3):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('hw', [(64, 64), (65, 97), (33, 50)])
def test_backbone_shapes_any_size(hw):
    h, w = hw
    model = SpatialMamba(SMALL_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    want = [(1, c, math.ceil(h / 2 ** (i + 2)), math.ceil(w / 2 ** (i + 2)))
            for i, c in enumerate(SMALL_ARCH['embed_dims'])]
    assert [tuple(o.shape) for o in outs] == want
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


def test_out_indices():
    x = torch.randn(2, 3, 48, 40)
    torch.manual_seed(0)
    full = SpatialMamba(SMALL_ARCH).eval()
    model = SpatialMamba(SMALL_ARCH, out_indices=(1, 3)).eval()
    model.load_state_dict({k: v for k, v in full.state_dict().items()
                           if not k.startswith(('outnorm0', 'outnorm2'))})
    assert not hasattr(model, 'outnorm0') and hasattr(model, 'outnorm3')
    with torch.no_grad():
        outs, ref = model(x), full(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 6, 5), (2, 128, 2, 2)]
    torch.testing.assert_close(outs[0], ref[1])
    torch.testing.assert_close(outs[1], ref[3])
    neg = SpatialMamba(SMALL_ARCH, out_indices=(-2,)).eval()
    assert neg.out_indices == (2,)
    neg.load_state_dict({k: v for k, v in full.state_dict().items()
                         if not k.startswith(('outnorm0', 'outnorm1', 'outnorm3'))})
    with torch.no_grad():
        (o,) = neg(x)
    torch.testing.assert_close(o, ref[2])
    # every output is LayerNorm'ed over channels (weight 1 / bias 0 at init)
    assert o.mean(dim=1).abs().max() < 1e-4


def test_frozen_stages_and_norm_eval():
    model = SpatialMamba(SMALL_ARCH, frozen_stages=1)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed.', 'layers.0.'))
        assert p.requires_grad is not frozen, name
    assert not model.patch_embed.training and not model.layers[0].training
    assert not model.layers[0].downsample.conv[2].norm.training
    assert model.layers[1].training and model.layers[3].blocks[0].training
    assert model.patch_embed.conv1.norm.weight.requires_grad is False
    # frozen BN statistics do not move in train mode
    mean0 = model.patch_embed.conv1.norm.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert torch.equal(model.patch_embed.conv1.norm.running_mean, mean0)

    model = SpatialMamba(SMALL_ARCH, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.layers[1].blocks[0].training
    assert all(p.requires_grad for p in model.parameters())
    model = SpatialMamba(SMALL_ARCH).train()
    assert all(m.training for m in model.modules())


def test_with_cp_same_output_and_grads(monkeypatch):
    from mmgroupmamba.models import common
    calls = []
    real = common.cp.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(common.cp, 'checkpoint', counting)
    torch.manual_seed(0)
    plain = SpatialMamba(SMALL_ARCH, drop_path_rate=0.0).train()
    ckpt = SpatialMamba(SMALL_ARCH, drop_path_rate=0.0, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.layers[0].with_cp and not plain.layers[0].with_cp
    x = torch.randn(2, 3, 40, 24)
    res = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_()
        outs = model(xi)
        sum((o * o).mean() for o in outs).backward()
        res.append((outs, xi.grad, {k: p.grad for k, p in model.named_parameters()}))
        assert len(calls) == (4 if any(model.with_cp) else 0)  # one per block, only with_cp
    for a, b in zip(res[0][0], res[1][0]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-5, atol=1e-8)
    assert res[0][1].abs().max() > 0
    for k, g in res[0][2].items():
        torch.testing.assert_close(res[1][2][k], g, rtol=1e-5, atol=1e-7, msg=k)


# --------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------
def to_official(sd):
    """Our classifier keys -> upstream's classification keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith(('backbone.patch_embed.', 'backbone.layers.')):
            out[k[len('backbone.'):]] = v
        elif k.startswith('backbone.outnorm3.'):
            out['norm.' + k[len('backbone.outnorm3.'):]] = v
        elif k.startswith('head.fc.'):
            out['head.' + k[len('head.fc.'):]] = v
        else:
            raise AssertionError(f'unexpected classifier key {k}')
    return out


@pytest.fixture(scope='module')
def official():
    torch.manual_seed(0)
    src = randomize(SpatialMambaClassifier(SMALL_ARCH, num_classes=5), seed=7).eval()
    sd = to_official(src.state_dict())
    assert 'norm.weight' in sd and 'head.weight' in sd and 'layers.3.blocks.0.ln_1.weight' in sd
    return src, sd


def test_official_checkpoint_loads_into_classifier(official):
    src, sd = official
    model = SpatialMambaClassifier(SMALL_ARCH, num_classes=5)
    model.load_checkpoint({'model': sd})
    model.eval()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_official_checkpoint_loads_into_dense_backbone(official, tmp_path):
    src, sd = official
    bb = SpatialMamba(SMALL_ARCH)
    bb.load_pretrained({'model': sd})
    own = bb.state_dict()
    for k, v in sd.items():
        if k.startswith(('patch_embed.', 'layers.')):
            assert torch.equal(own[k], v), k
    assert torch.equal(own['outnorm3.weight'], sd['norm.weight'])
    assert torch.equal(own['outnorm3.bias'], sd['norm.bias'])
    # init_cfg Pretrained from a file
    path = tmp_path / 'official.pth'
    torch.save({'model': sd}, path)
    bb2 = SpatialMamba(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert not torch.equal(bb2.state_dict()['layers.1.blocks.0.cpe1.weight'],
                           sd['layers.1.blocks.0.cpe1.weight'])
    bb2.init_weights()
    for k, v in bb.state_dict().items():
        assert torch.equal(bb2.state_dict()[k], v), k
    # our own classifier checkpoint (mmengine style) through init_cfg too
    path2 = tmp_path / 'ours.pth'
    torch.save({'state_dict': src.state_dict()}, path2)
    bb3 = SpatialMamba(SMALL_ARCH, out_indices=(3,),
                       init_cfg=dict(type='Pretrained', checkpoint=str(path2)))
    bb3.init_weights()
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(bb3.state_dict()[k], v), k
    src.eval()
    bb3.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb3(x)[-1], src.backbone(x)[-1], rtol=0, atol=0)


def test_bad_checkpoints_name_the_keys(official):
    _, sd = official
    extra = dict(sd)
    extra['layers.0.blocks.0.bogus'] = torch.zeros(1)
    missing = dict(sd)
    missing.pop('layers.1.blocks.0.mlp.fc1.weight')
    with pytest.raises(RuntimeError,
                       match=r"unexpected keys: \['backbone.layers.0.blocks.0.bogus'\]"):
        SpatialMambaClassifier(SMALL_ARCH, num_classes=5).load_checkpoint({'model': extra})
    with pytest.raises(RuntimeError,
                       match=r"Missing keys: \['backbone.layers.1.blocks.0.mlp.fc1.weight'\]"):
        SpatialMambaClassifier(SMALL_ARCH, num_classes=5).load_checkpoint({'model': missing})
    with pytest.raises(RuntimeError, match=r"unexpected keys: \['layers.0.blocks.0.bogus'\]"):
        SpatialMamba(SMALL_ARCH).load_pretrained({'model': extra})
    with pytest.raises(RuntimeError, match=r"Missing keys: \['layers.1.blocks.0.mlp.fc1.weight'\]"):
        SpatialMamba(SMALL_ARCH).load_pretrained({'model': missing})
    # another architecture: a whole block missing
    with pytest.raises(RuntimeError, match=r"Missing keys: \['layers.2.blocks.1"):
        SpatialMamba(dict(SMALL_ARCH, depths=(1, 1, 2, 1))).load_pretrained({'model': sd})


# --------------------------------------------------------------------------
def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="arch: unknown architecture 'huge'"):
        SpatialMamba('huge')
    model = SpatialMamba(SMALL_ARCH)
    with pytest.raises(ValueError, match=r'x: expected an image batch of shape \(batch, 3, H, W\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match='x: expected an image batch'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='out_indices'):
        SpatialMamba(SMALL_ARCH, out_indices=(4,))
    with pytest.raises(ValueError, match='out_indices'):
        SpatialMamba(SMALL_ARCH, out_indices=(-5,))
    with pytest.raises(ValueError, match='frozen_stages'):
        SpatialMamba(SMALL_ARCH, frozen_stages=9)
    with pytest.raises(ValueError, match=r"valid names: \[.*'spatialmamba_tiny', "
                                         r"'spatialmamba_small', 'spatialmamba_base'\]"):
        create_model('spatialmamba_huge')
    sf = StateFusion(4)
    with pytest.raises(ValueError, match=r'h: expected 4 channels \(dim\), got 3'):
        sf(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match='h: expected'):
        sf(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match="arch\\['embed_dims'\\].*doubles"):
        SpatialMamba(dict(embed_dims=(16, 48, 96, 192), depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='arch: unknown keys'):
        SpatialMamba(dict(SMALL_ARCH, mlp_ratios=(4, 4, 4, 4)))


def test_registered_for_mmpretrain_mmdet_mmseg():
    import mmgroupmamba  # noqa: F401  (registers)
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    for registry in (MMPRETRAIN_MODELS, MMDET_MODELS, MMSEG_MODELS):
        assert registry.get('mmgroupmamba.SpatialMamba') is SpatialMamba
    model = MMDET_MODELS.build(dict(type='mmgroupmamba.SpatialMamba', arch=SMALL_ARCH,
                                    out_indices=(0, 2)))
    assert isinstance(model, SpatialMamba) and model.out_indices == (0, 2)


# Upstream key names and shapes, as read from the official code
# (classification/models/{spatialmamba,utils}.py; research notes section 3.10).
UPSTREAM_TINY = {
    'patch_embed.conv1.conv.weight': (32, 3, 3, 3),
    'patch_embed.conv1.norm.running_var': (32, ),
    'patch_embed.conv2.1.conv.weight': (32, 32, 3, 3),
    'patch_embed.conv3.0.conv.weight': (256, 32, 3, 3),
    'patch_embed.conv3.1.conv.weight': (64, 256, 1, 1),
    'layers.0.downsample.conv.0.conv.weight': (512, 64, 1, 1),
    'layers.0.downsample.conv.0.conv.bias': (512, ),
    'layers.0.downsample.conv.1.conv.weight': (512, 1, 3, 3),
    'layers.0.downsample.conv.2.conv.weight': (128, 512, 1, 1),
    'layers.0.downsample.conv.2.norm.weight': (128, ),
    'layers.0.blocks.0.cpe1.weight': (64, 1, 3, 3),
    'layers.0.blocks.0.self_attention.x_proj_weight': (6, 128),
    'layers.0.blocks.0.self_attention.dt_projs_weight': (128, 4),
    'layers.0.blocks.0.self_attention.dt_projs_bias': (128, ),
    'layers.0.blocks.0.self_attention.A_logs': (128, 1),
    'layers.0.blocks.0.self_attention.Ds': (128, ),
    'layers.0.blocks.0.self_attention.in_proj.weight': (256, 64),
    'layers.0.blocks.0.self_attention.conv2d.weight': (128, 1, 3, 3),
    'layers.0.blocks.0.self_attention.state_fusion.kernel_3_2': (128, 1, 3, 3),
    'layers.0.blocks.0.self_attention.state_fusion.alpha': (3, ),
    'layers.0.blocks.0.self_attention.out_norm.weight': (128, ),
    'layers.0.blocks.0.self_attention.out_proj.weight': (64, 128),
    'layers.0.blocks.0.mlp.fc1.weight': (256, 64),
    'layers.3.blocks.3.self_attention.x_proj_weight': (34, 1024),
    'outnorm3.weight': (512, ),
}


def test_upstream_key_names_and_shapes():
    with torch.device('meta'):
        sd = SpatialMamba('tiny').state_dict()
        base = SpatialMamba('base').state_dict()
    for key, shape in UPSTREAM_TINY.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith('layers.3.downsample') for k in sd)
    assert not any(k.endswith('_merge_weight') for k in sd)
    # B: dt_rank ceil(96 / 16) = 6 -> x_proj rows 6 + 2
    assert tuple(base['layers.0.blocks.0.self_attention.x_proj_weight'].shape) == (8, 192)


def test_state_fusion_keeps_only_the_states_and_one_padded_buffer_for_backward():
    """Memory: the backward needs the states and their padded copy (the
    three dilated windows are views of it); alpha sits in the kernels, so no
    map-sized product is kept. Under autocast the states are cast once (the
    windows are not each cast and kept), and the result is the same as
    casting each window."""
    fusion = StateFusion(8)
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    h = torch.randn(2, 8, 1, 12, 10, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fusion(h)
    padded = 2 * 8 * (12 + 10) * (10 + 10) * 4
    map_bytes = sorted(n for n in storages.values() if n > 8 * 9 * 4)  # ignore the kernels
    assert map_bytes == sorted([h.numel() * 4, padded]), map_bytes
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = fusion(h)
        hp = F.pad(h.reshape(2, 8, 12, 10), (5, ) * 4, mode='replicate')
        want = sum(a * F.conv2d(hp[:, :, 5 - d:17 + d, 5 - d:15 + d], k, dilation=d, groups=8)
                   for a, k, d in zip(fusion.alpha, fusion.kernels(), (1, 3, 5)))
    assert got.dtype == torch.bfloat16
    got, want = got.reshape(want.shape).float(), want.float()
    assert ((got - want).norm() / want.norm()).item() < 1e-2  # bf16 rounding only
