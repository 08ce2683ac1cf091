"""Fidelity of our GroupMamba against an independent, deliberately plain
"official-style" implementation written here from the description of the
official code (per-group SS2D with explicit CrossScan flips/transposes, a
sequential scan loop, the official module/key names). Its state dict goes
through ``convert_official_state_dict`` into ours; outputs and gradients must
agree. The plain implementation differentiates its flips/transposes with
autograd, so its gradients are right for H != W (unlike upstream's
hand-written CrossScan backward).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_utils import randomize

from mmgroupmamba.models import GroupMamba, GroupMambaClassifier, convert_official_state_dict
from mmgroupmamba.models.groupmamba import GroupedDirectionalSSM

SMALL_ARCH = dict(stem_channels=8, embed_dims=(16, 32, 72, 136), depths=(1, 2, 1, 1),  # dt_rank 1,1,2,3
                  mlp_ratios=(2, 2, 2, 2))
TINY_ARCH = dict(stem_channels=32, embed_dims=(64, 128, 348, 448), depths=(3, 4, 9, 3),
                 mlp_ratios=(8, 8, 4, 4))


# --------------------------------------------------------------------------
# Plain official-style reference (official key names).
# --------------------------------------------------------------------------
def seq_scan(u, dt, A, Bm, Cm, D, dt_bias):
    """Sequential S6 scan. u, dt: (b, d, L); A: (d, N); Bm, Cm: (b, N, L);
    D, dt_bias: (d,). h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
    y_t = C_t . h_t + D u_t, with dt = softplus(dt + dt_bias)."""
    dt = F.softplus(dt + dt_bias[:, None])
    decay = torch.exp(dt[..., None] * A[:, None, :])                  # (b, d, L, N)
    inp = (dt * u)[..., None] * Bm.transpose(1, 2)[:, None]           # (b, d, L, N)
    h = torch.zeros_like(decay[:, :, 0])
    hs = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + inp[:, :, t]
        hs.append(h)
    hs = torch.stack(hs, dim=2)                                       # (b, d, L, N)
    return (hs * Cm.transpose(1, 2)[:, None]).sum(-1) + D[:, None] * u


def cross_scan(x, k):
    """(b, d, H, W) -> (b, d, L) in the order of official group k (1..4)."""
    seq = x.flatten(2) if k in (1, 3) else x.transpose(2, 3).flatten(2)
    return seq.flip(-1) if k in (3, 4) else seq


def cross_merge(y, k, H, W):
    """Inverse of cross_scan: (b, d, L) -> (b, d, H, W)."""
    if k in (3, 4):
        y = y.flip(-1)
    if k in (1, 3):
        return y.reshape(y.shape[0], -1, H, W)
    return y.reshape(y.shape[0], -1, W, H).transpose(2, 3)


class RefSS2D(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.k = k
        R = math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, 3, padding=1, groups=d, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(1, R + 2, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, d, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, d))
        self.A_logs = nn.Parameter(torch.empty(d, 1))
        self.Ds = nn.Parameter(torch.empty(d))
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):  # (b, H, W, d)
        b, H, W, d = x.shape
        xx, z = self.in_proj(x).chunk(2, dim=-1)
        z = F.silu(z)
        xx = F.silu(self.conv2d(xx.permute(0, 3, 1, 2)))
        xs = cross_scan(xx, self.k)
        x_dbl = torch.einsum('bdl,cd->bcl', xs, self.x_proj_weight[0])
        R = self.dt_projs_weight.shape[2]
        dts, Bm, Cm = x_dbl[:, :R], x_dbl[:, R:R + 1], x_dbl[:, R + 1:]
        dts = torch.einsum('brl,dr->bdl', dts, self.dt_projs_weight[0])
        ys = seq_scan(xs, dts, -torch.exp(self.A_logs), Bm, Cm, self.Ds, self.dt_projs_bias[0])
        y = cross_merge(ys, self.k, H, W).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * z)


class RefGML(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.fc1 = nn.Linear(C, C // 16)
        self.fc2 = nn.Linear(C // 16, C)
        self.norm = nn.LayerNorm(C)
        for k in range(1, 5):
            setattr(self, f'mamba_g{k}', RefSS2D(C // 4, k))
        self.proj = nn.Linear(C, C)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x, H, W):  # tokens (b, H*W, C)
        b, n, C = x.shape
        x = self.norm(x)
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=1)))))
        xm = x.reshape(b, H, W, C)
        parts = xm.chunk(4, dim=-1)
        y = torch.cat([getattr(self, f'mamba_g{k + 1}')(parts[k]) for k in range(4)], -1)
        y = (y * self.skip_scale * xm).reshape(b, n, C) * w[:, None, :]
        return self.proj(self.norm(y))


class RefDW(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dwconv = nn.Conv2d(h, h, 3, 1, 1, groups=h)

    def forward(self, x, H, W):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, H, W)).flatten(2).transpose(1, 2)


class RefFFN(nn.Module):
    def __init__(self, C, h, dw):
        super().__init__()
        self.fc1 = nn.Linear(C, h)
        if dw:
            self.dwconv = RefDW(h)
        self.fc2 = nn.Linear(h, C)

    def forward(self, x, H, W):
        x = self.fc1(x)
        if hasattr(self, 'dwconv'):
            x = self.dwconv(x, H, W)
        return self.fc2(F.gelu(x))


class RefBlock(nn.Module):
    def __init__(self, C, r):
        super().__init__()
        self.norm2 = nn.LayerNorm(C, eps=1e-6)
        self.attn = RefGML(C)
        self.mlp = RefFFN(C, int(C * r), True)

    def forward(self, x, H, W):
        x = x + self.attn(x, H, W)
        return x + self.mlp(self.norm2(x), H, W)


class RefClassBlock(nn.Module):
    def __init__(self, C, r):
        super().__init__()
        self.norm1 = nn.LayerNorm(C, eps=1e-6)
        self.norm2 = nn.LayerNorm(C, eps=1e-6)
        self.attn = RefGML(C)
        self.mlp = RefFFN(C, int(C * r), False)

    def forward(self, x):
        c = x[:, :1]
        c = c + self.norm1(self.attn(c, 1, 1))
        return c + self.mlp(self.norm2(c), 1, 1)


class RefStem(nn.Module):
    def __init__(self, hid, C):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hid, 7, 2, 3, bias=False), nn.BatchNorm2d(hid), nn.ReLU(),
            nn.Conv2d(hid, hid, 3, 1, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU(),
            nn.Conv2d(hid, hid, 3, 1, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU())
        self.proj = nn.Conv2d(hid, C, 3, 2, 1)
        self.norm = nn.LayerNorm(C)

    def forward(self, x):
        x = self.proj(self.conv(x))
        H, W = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class RefDown(nn.Module):
    def __init__(self, Ci, Co):
        super().__init__()
        self.proj = nn.Conv2d(Ci, Co, 3, 2, 1)
        self.norm = nn.LayerNorm(Co)

    def forward(self, x):
        x = self.proj(x)
        H, W = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class RefGroupMamba(nn.Module):
    def __init__(self, arch, num_classes=10):
        super().__init__()
        dims, depths, ratios = arch['embed_dims'], arch['depths'], arch['mlp_ratios']
        self.n = len(dims)
        for i in range(self.n):
            setattr(self, f'patch_embed{i + 1}', RefStem(arch['stem_channels'], dims[0]) if i == 0
                    else RefDown(dims[i - 1], dims[i]))
            setattr(self, f'block{i + 1}', nn.ModuleList(RefBlock(dims[i], ratios[i])
                                                         for _ in range(depths[i])))
            setattr(self, f'norm{i + 1}', nn.LayerNorm(dims[i], eps=1e-6))
        self.post_network = nn.ModuleList([RefClassBlock(dims[-1], ratios[-1])])
        self.head = nn.Linear(dims[-1], num_classes)
        self.dist_head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        b = x.shape[0]
        for i in range(self.n):
            x, H, W = getattr(self, f'patch_embed{i + 1}')(x)
            for blk in getattr(self, f'block{i + 1}'):
                x = blk(x, H, W)
            if i < self.n - 1:
                x = getattr(self, f'norm{i + 1}')(x).reshape(b, H, W, -1).permute(0, 3, 1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = getattr(self, f'norm{self.n}')(self.post_network[0](x)[:, 0])
        a, d = self.head(x), self.dist_head(x)
        return (a, d) if self.training else (a + d) / 2


def rel_err(a, b):
    """max |a - b| relative to max |b| (0 when both are all zeros)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_pair():
    """The official-style Tiny with random weights and ours loaded from its
    converted state dict (strictly)."""
    torch.manual_seed(0)
    ref = randomize(RefGroupMamba(TINY_ARCH, num_classes=1000)).eval()
    ours = GroupMambaClassifier('tiny', num_classes=1000).eval()
    ours.load_state_dict(convert_official_state_dict(ref.state_dict()), strict=True)
    return ref, ours


@pytest.mark.parametrize('size', [(32, 48)])
def test_tiny_logits_match_official_style(tiny_pair, size):
    """Eval logits (mean of both heads) of the real Tiny architecture; the
    input is small because the reference scan is a Python loop."""
    ref, ours = tiny_pair
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (2, 1000)
    assert rel_err(got, want) <= 1e-4


@pytest.fixture
def flush_denormal():
    """float64 scans on CPU produce subnormal numbers (exp of large negative
    decay sums), which make x86 arithmetic ~15x slower; flush them to zero.
    The flag is per thread, so the test runs on this (single) thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def test_train_mode_grads_match_on_non_square_input(flush_denormal):
    """Whole network in float64, train mode (BN batch statistics, both
    heads), H != W at every stage (32x56 -> 8x14, 4x7, 2x4, 1x2): outputs
    and every parameter gradient equal the reference's."""
    torch.manual_seed(0)
    ref = randomize(RefGroupMamba(SMALL_ARCH), seed=1).double().train()
    ours = GroupMambaClassifier(SMALL_ARCH, num_classes=10, drop_path_rate=0.0).double().train()
    ours.load_state_dict(convert_official_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 56, dtype=torch.float64)
    w = torch.randn(2, 10, dtype=torch.float64)
    (ra, rd), (oa, od) = ref(x), ours(x)
    assert rel_err(oa, ra) <= 1e-9 and rel_err(od, rd) <= 1e-9
    ((ra * w).sum() + (rd * w).sum() ** 2).backward()
    ((oa * w).sum() + (od * w).sum() ** 2).backward()
    grads = {k: p.grad for k, p in ref.named_parameters()}
    grads.update(ref.named_buffers())   # the buffers only complete the key set
    ref_grads = convert_official_state_dict(grads)
    for k, p in ours.named_parameters():
        assert p.grad is not None, k
        assert rel_err(p.grad, ref_grads[k]) <= 1e-8, k


@pytest.mark.parametrize('hw', [(5, 7), (7, 4), (1, 6), (1, 1)])
def test_fused_ssm_forward_backward_vs_per_group(hw):
    """The fused 4-group op vs four independent per-group SS2Ds on
    non-square maps: output, input gradient, every weight gradient."""
    torch.manual_seed(0)
    C = 40
    groups = [randomize(RefSS2D(C // 4, k), seed=k) for k in range(1, 5)]
    fused = GroupedDirectionalSSM(C)
    sd = {}
    for k, g in enumerate(groups, 1):
        sd.update({f'attn.mamba_g{k}.{n}': t for n, t in g.state_dict().items()})
    from mmgroupmamba.models.groupmamba import _convert_gml, _GML_MAP
    sd.update({'attn.' + k: torch.zeros(1) for k in _GML_MAP})  # unused, fill the mapping
    out = {}
    _convert_gml(sd, 'attn.', '', out)
    fused.load_state_dict({k[len('ssm.'):]: v for k, v in out.items() if k.startswith('ssm.')},
                          strict=True)
    x = torch.randn(2, *hw, C)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = torch.cat([g(p) for g, p in zip(groups, xr.chunk(4, dim=-1))], dim=-1)
    got = fused(xf)
    assert rel_err(got, want) <= 1e-5
    gy = torch.randn_like(want)
    (want * gy).sum().backward()
    (got * gy).sum().backward()
    assert rel_err(xf.grad, xr.grad) <= 1e-4
    gsd = {}
    for k, g in enumerate(groups, 1):
        gsd.update({f'attn.mamba_g{k}.{n}': p.grad for n, p in g.named_parameters()})
    gsd.update({'attn.' + k: torch.zeros(1) for k in _GML_MAP})
    gout = {}
    _convert_gml(gsd, 'attn.', '', gout)
    for n, p in fused.named_parameters():
        assert rel_err(p.grad, gout['ssm.' + n]) <= 1e-4, n


@pytest.mark.parametrize('use_bmm', [False, True])
def test_fused_ssm_gives_the_scan_group_major_inputs(monkeypatch, use_bmm):
    """The layer hands the scan views of the projections' outputs (no
    copies): u channels-last (the conv's output); delta, B and C stored group
    by group, delta as (G, b, h, w, c), B and C as columns of x_proj's (G, b,
    h, w, R + 2N) output. On the einsum path and on the batched-GEMM op's
    (forced here: its rule needs CUDA)."""
    import mmgroupmamba.models.groupmamba as gm
    from mmgroupmamba.ops import linear as lin
    monkeypatch.setattr(lin, '_use_bmm', lambda x, w: use_bmm)
    seen = []
    real = gm.selective_scan_2d
    monkeypatch.setattr(gm, 'selective_scan_2d',
                        lambda *a, **k: seen.append(a[:5]) or real(*a, **k))
    b, h, w, C, G = 2, 5, 7, 72, 4
    c, m, k = C // G, b * h * w, 4                # dt_rank 2, d_state 1: 4 columns of x_proj
    layer = GroupedDirectionalSSM(C)
    with torch.no_grad():
        layer(torch.randn(b, h, w, C))
    (u, delta, _, B, Cm), = seen
    assert u.shape == delta.shape == (b, h, w, G, c)
    assert u.stride() == (h * w * C, w * C, C, c, 1)
    assert delta.stride() == (h * w * c, w * c, c, m * c, 1)
    for t in (B, Cm):
        assert t.shape == (b, h, w, G, 1) and t.stride()[:4] == (h * w * k, w * k, k, m * k)
    assert Cm.storage_offset() - B.storage_offset() == 1 and B.storage_offset() % k == 2


def test_pretrained_official_checkpoint_into_backbone(tmp_path):
    """init_cfg Pretrained with an official checkpoint (wrapped in 'model'):
    converted, class tail and heads dropped, the new stage-4 output norm
    left at its init; stage outputs equal the reference's stage maps."""
    ref = randomize(RefGroupMamba(SMALL_ARCH), seed=3).eval()
    path = tmp_path / 'official.pth'
    torch.save({'model': ref.state_dict(), 'epoch': 300}, path)
    bb = GroupMamba(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    bb.init_weights()
    conv = convert_official_state_dict(ref.state_dict())
    own = bb.state_dict()
    for k, v in own.items():
        if k.startswith('stages.3.norm.'):
            want = torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v)
            assert torch.equal(v, want)
        else:
            assert torch.equal(v, conv['backbone.' + k]), k
    # stage maps 0..2 are the reference's normed stage outputs
    x = torch.randn(1, 3, 48, 80)
    feats = {}
    hooks = [getattr(ref, f'norm{i}').register_forward_hook(
        lambda m, a, o, i=i: feats.__setitem__(i - 1, o)) for i in (1, 2, 3)]
    with torch.no_grad():
        ref(x)
        outs = bb(x)
    for h in hooks:
        h.remove()
    for i in range(3):
        b, c, hh, ww = outs[i].shape
        assert rel_err(outs[i], feats[i].reshape(b, hh, ww, c).permute(0, 3, 1, 2)) <= 1e-4


def _load_tool(name):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_convert_tool_round_trip(tmp_path, capsys):
    """tools/convert_official_checkpoint.py: official (flat and model_ema)
    -> ours; the classifier built from the result gives the reference's
    logits; --backbone-only feeds the dense backbone."""
    from mmgroupmamba.models import GroupMambaClassifier
    ref = randomize(RefGroupMamba(SMALL_ARCH), seed=5).eval()
    src, dst = tmp_path / 'official.pth', tmp_path / 'ours.pth'
    torch.save({'model_ema': ref.state_dict()}, src)
    tool = _load_tool('convert_official_checkpoint')
    tool.main([str(src), str(dst)])
    assert 'load verified' in capsys.readouterr().out
    ours = GroupMambaClassifier(SMALL_ARCH, num_classes=10).eval()
    ours.load_checkpoint(str(dst))
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) <= 1e-4
    with pytest.raises(SystemExit, match='--variant tiny'):
        tool.main([str(src), str(dst), '--variant', 'tiny'])
    bb_path = tmp_path / 'bb.pth'
    tool.main([str(src), str(bb_path), '--backbone-only'])
    sd = torch.load(bb_path, weights_only=True)['state_dict']
    assert sd and all(k.startswith('backbone.') for k in sd)
    GroupMamba(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(bb_path))).init_weights()


def test_get_flops_tool_tiny():
    """Shapes-only count (meta device) of Tiny at 224^2: exact params and the
    fvcore-style total next to the analytic count of the official code
    (4.70 G; the paper says 4.5 G)."""
    from mmgroupmamba.models import create_model
    tool = _load_tool('get_flops')
    with torch.device('meta'):
        model = create_model('groupmamba_tiny').eval()
    r = tool.count(model, (224, 224), 'meta')
    assert r['params'] == 23_361_917
    assert 4.60e9 < r['macs_mm'] < 4.70e9
    assert abs(r['fvcore'] - 4.70e9) < 0.02e9
