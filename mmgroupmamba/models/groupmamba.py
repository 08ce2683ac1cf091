"""GroupMamba (Shaker et al., 2024): a visual state-space backbone of Modulated
Group Mamba layers, on the shared directional selective-scan op.

Pure PyTorch (no OpenMMLab import). The network computes what the official
implementation (github.com/Amshaker/GroupMamba, ``classification/models``)
computes, with one structural difference: the four per-group VMamba ``SS2D``
operators of a layer are fused into :class:`GroupedDirectionalSSM`, whose
projections are grouped (block-diagonal) weights and whose four scans run in
one :func:`~mmgroupmamba.ops.selective_scan_2d` call that reads and writes the
feature map in place of the official flip/transpose copies (CrossScan /
CrossMerge). That op is also correct for H != W, where the official
column-major scans have a wrong backward.

Layout: activations between modules are channels-last maps ``(B, H, W, C)``;
the backbone returns ``(B, C, H, W)`` maps.

Official checkpoints load through :func:`convert_official_state_dict`; the
key mapping is documented there.
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan_2d
from ..ops.linear import Linear, grouped_linear, set_fp32_gemm
from .common import (DepthwiseConv2d, DropPath, StagedBackbone, at_least_fp32, conv_bn_relu,
                     drop_path_rates, init_linear_norm_, load_classifier_state, run_blocks)

__all__ = [
    'arch_settings', 'ConvStem', 'Downsample', 'GroupedLayerNorm', 'GroupedDirectionalSSM',
    'ChannelAffinityModulation', 'GroupMambaLayer', 'ConvFFN', 'DropPath', 'GroupMambaBlock',
    'GroupMambaStage', 'ClassTokenBlock', 'GroupMamba', 'GroupMambaClassTail',
    'DistillationLinearHead', 'GroupMambaClassifier', 'create_groupmamba',
    'convert_official_state_dict', 'is_official_state_dict', 'official_key_names',
    'MODEL_NAMES', 'DIRECTIONS_OFFICIAL',
]

#: Architectures of the paper (official ``groupmamba_{tiny,small,base}``).
#: ``stem_channels`` is the stem's hidden width, ``embed_dims`` the stage
#: widths (each divisible by 4: one channel group per scan direction),
#: ``depths`` the blocks per stage, ``mlp_ratios`` the FFN expansion.
arch_settings: Dict[str, Dict[str, Tuple[int, ...]]] = {
    'tiny': dict(stem_channels=32, embed_dims=(64, 128, 348, 448), depths=(3, 4, 9, 3),
                 mlp_ratios=(8, 8, 4, 4)),
    'small': dict(stem_channels=64, embed_dims=(64, 128, 348, 512), depths=(3, 4, 16, 3),
                  mlp_ratios=(8, 8, 4, 4)),
    'base': dict(stem_channels=64, embed_dims=(96, 192, 424, 512), depths=(3, 6, 21, 3),
                 mlp_ratios=(8, 8, 4, 4)),
}
_ARCH_KEYS = ('stem_channels', 'embed_dims', 'depths', 'mlp_ratios')

#: Scan direction of channel group k, in the official order: g1 row-major
#: (left to right), g2 column-major (top to bottom), g3 reversed row-major
#: (right to left), g4 reversed column-major (bottom to top).
DIRECTIONS_OFFICIAL = ('lr', 'tb', 'rl', 'bt')

#: Names accepted by :func:`create_model`.
MODEL_NAMES = ('groupmamba_tiny', 'groupmamba_small', 'groupmamba_base')

# LayerNorm epsilons of the official code: stem/downsample LN, the GML's
# shared LN and the SS2D out_norm use torch's default 1e-5; the block's FFN
# pre-norm, the stage norms and the class block's norms use 1e-6.
_EPS_DEFAULT = 1e-5
_EPS_STAGE = 1e-6


def resolve_arch(arch: Union[str, Mapping]) -> Dict[str, Tuple[int, ...]]:
    """Return a validated copy of an architecture: a name of
    :data:`arch_settings` or a dict with the keys ``stem_channels``,
    ``embed_dims``, ``depths``, ``mlp_ratios``."""
    if isinstance(arch, str):
        if arch not in arch_settings:
            raise ValueError(f'arch: unknown architecture {arch!r}; expected one of '
                             f'{sorted(arch_settings)} or a dict with keys {list(_ARCH_KEYS)}')
        arch = arch_settings[arch]
    if not isinstance(arch, Mapping):
        raise TypeError(f'arch: expected a name {sorted(arch_settings)} or a dict with keys '
                        f'{list(_ARCH_KEYS)}, got {type(arch).__name__}')
    missing = [k for k in _ARCH_KEYS if k not in arch]
    unknown = [k for k in arch if k not in _ARCH_KEYS]
    if missing or unknown:
        raise ValueError(f'arch: a custom architecture needs exactly the keys {list(_ARCH_KEYS)}; '
                         f'missing {missing}, unknown {unknown}')
    out = {'stem_channels': int(arch['stem_channels'])}
    for key in ('embed_dims', 'depths', 'mlp_ratios'):
        val = arch[key]
        if isinstance(val, int) or not all(isinstance(v, (int, float)) for v in val):
            raise ValueError(f"arch['{key}']: expected a sequence of numbers, got {val!r}")
        out[key] = tuple(val)
    n = len(out['embed_dims'])
    if n == 0 or len(out['depths']) != n or len(out['mlp_ratios']) != n:
        raise ValueError(f"arch: 'embed_dims', 'depths' and 'mlp_ratios' need the same non-zero "
                         f"length (one entry per stage), got {out['embed_dims']}, "
                         f"{out['depths']}, {out['mlp_ratios']}")
    for d in out['embed_dims']:
        if d % 4 or d < 16:
            raise ValueError(f"arch['embed_dims']: every stage width must be divisible by 4 "
                             f"(one channel group per scan direction) and at least 16 (the "
                             f"channel-affinity bottleneck is width // 16), "
                             f"got {out['embed_dims']}")
    if any(int(d) < 1 for d in out['depths']):
        raise ValueError(f"arch['depths']: every stage needs at least one block, "
                         f"got {out['depths']}")
    if out['stem_channels'] < 1:
        raise ValueError(f"arch['stem_channels']: expected a positive int, "
                         f"got {out['stem_channels']}")
    return out


# ----------------------------------------------------------------------------
# Initialisation (the official one: timm-style _init_weights + SS2D "v0").
# ----------------------------------------------------------------------------
def _init_conv(conv: nn.Conv2d) -> None:
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_generic(module: nn.Module) -> None:
    """Linear: trunc_normal(0.02), bias 0; LayerNorm: 1/0; Conv2d: normal(0,
    sqrt(2 / fan_out)), bias 0; BatchNorm: 1/0 and fresh running stats."""
    if init_linear_norm_(module):
        return
    if isinstance(module, nn.Conv2d):
        _init_conv(module)
    elif isinstance(module, nn.BatchNorm2d):
        module.reset_parameters()


def official_init_(module: nn.Module) -> None:
    """Apply the official initialisation to ``module`` and all submodules
    (fused SSM parameters included)."""
    for m in module.modules():
        _init_generic(m)
        if isinstance(m, GroupedDirectionalSSM):
            m.reset_ssm_parameters()
        elif isinstance(m, GroupMambaLayer):
            nn.init.ones_(m.skip_scale)


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------
class ConvStem(nn.Module):
    """Stem: 7x7/2 conv-BN-ReLU, two 3x3 conv-BN-ReLU, 3x3/2 conv (bias),
    LayerNorm (eps 1e-5). ``conv`` keeps the official Sequential indices
    (0, 3, 6 convs; 1, 4, 7 BatchNorms; the ReLUs at 2, 5, 8 hold no
    parameters): each triple runs through :func:`conv_bn_relu`, one cuDNN
    kernel in fp32 inference.

    Shapes: (B, in_channels, H, W) -> (B, ceil(H/4), ceil(W/4), out_channels).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int):
        super().__init__()
        layers: List[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden_channels, hidden_channels,
                                 kernel_size=7 if i == 0 else 3, stride=2 if i == 0 else 1,
                                 padding=3 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_channels, eps=_EPS_DEFAULT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last memory from the first conv on: cuDNN ran these convs
        # with NHWC kernels and converted NCHW maps around each one (2 ms of
        # B's fp32 step on an H100); the permute below is then a plain view.
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(0, len(self.conv), 3):
            x = conv_bn_relu(x, self.conv[i], self.conv[i + 1])
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """3x3/2 conv (pad 1, bias) + LayerNorm (eps 1e-5).

    Shapes: (B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_channels, eps=_EPS_DEFAULT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1))


class GroupedLayerNorm(nn.LayerNorm):
    """LayerNorm applied separately to each of ``groups`` contiguous channel
    groups (the four per-group SS2D ``out_norm`` s, fused). Weight and bias
    are (C,), group g's parameters at [g*C/G, (g+1)*C/G). Subclasses
    ``nn.LayerNorm`` so that optimiser rules for norms apply to it.

    Shapes: (..., C) -> (..., C).
    """

    def __init__(self, num_channels: int, groups: int, eps: float = _EPS_DEFAULT):
        super().__init__(num_channels, eps=eps)
        if num_channels % groups:
            raise ValueError(f'num_channels={num_channels} must be divisible by groups={groups}')
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        g = shape[-1] // self.groups
        y = F.layer_norm(x.reshape(*shape[:-1], self.groups, g), (g,), eps=self.eps)
        return torch.addcmul(self.bias, y.reshape(shape), self.weight)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, groups={self.groups}'


class GroupedDirectionalSSM(nn.Module):
    """The G = 4 per-group VMamba ``SS2D`` operators (d_state N, expand 1,
    3x3 depthwise conv, SiLU, z-gate, out LayerNorm) of a GroupMamba layer,
    fused into one module and one scan call.

    Channel group g = [g*c, (g+1)*c), c = C/G, scans in ``directions[g]``.
    With R = ceil(c/16) (the dt rank) the parameters are::

        in_proj_weight  (G, 2c, c)     per group rows [x | z], no bias
        conv2d          depthwise 3x3 over all C channels, bias
        x_proj_weight   (G, R+2N, c)   per group rows [dt (R) | B (N) | C (N)]
        dt_projs_weight (G, c, R)
        dt_projs_bias   (G, c)
        A_logs          (C, N)         A = -exp(A_logs)
        Ds              (C,)
        out_norm        GroupedLayerNorm(C, G), eps 1e-5
        out_proj_weight (G, c, c)      no bias

    i.e. every official per-group tensor stacked (Linear weights) or
    concatenated (the rest) along the first axis in group order.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, groups: int = 4, d_state: int = 1, d_conv: int = 3,
                 directions: Sequence[str] = DIRECTIONS_OFFICIAL):
        super().__init__()
        if dim % groups:
            raise ValueError(f'dim={dim} must be divisible by groups={groups}')
        if len(directions) != groups:
            raise ValueError(f'directions: expected {groups} entries, got {directions!r}')
        self.dim, self.groups, self.d_state = dim, groups, d_state
        self.group_dim = c = dim // groups
        self.dt_rank = math.ceil(c / 16)
        self.directions = tuple(directions)
        self.in_proj_weight = nn.Parameter(torch.empty(groups, 2 * c, c))
        self.conv2d = DepthwiseConv2d(dim, d_conv, activation='silu')
        self.x_proj_weight = nn.Parameter(torch.empty(groups, self.dt_rank + 2 * d_state, c))
        self.dt_projs_weight = nn.Parameter(torch.empty(groups, c, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(groups, c))
        self.A_logs = nn.Parameter(torch.empty(dim, d_state))
        self.Ds = nn.Parameter(torch.empty(dim))
        self.out_norm = GroupedLayerNorm(dim, groups)
        self.out_proj_weight = nn.Parameter(torch.empty(groups, c, c))
        self.reset_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1,
                             dt_init_floor: float = 1e-4) -> None:
        """The official SS2D "v0" init of the raw parameters (the conv and
        out_norm are handled by :func:`_init_generic`): in/out projections
        trunc_normal(0.02) (the official top-level init reaches them, they
        are nn.Linear there); x_proj U(+-1/sqrt(c)) (nn.Linear's default,
        which the official init never revisits); dt weight U(+-R^-0.5); dt
        bias = softplus^-1(exp(U(log dt_min, log dt_max)) clamped to
        dt_init_floor); A_logs = log(1..N); D = 1."""
        nn.init.trunc_normal_(self.in_proj_weight, std=0.02)
        nn.init.trunc_normal_(self.out_proj_weight, std=0.02)
        bound = self.group_dim ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        dt = torch.exp(torch.rand(self.groups, self.group_dim, device=self.dt_projs_bias.device)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand(self.dim, -1))
        self.Ds.fill_(1.0)

    def reset_parameters(self) -> None:
        _init_generic(self.conv2d)
        _init_generic(self.out_norm)
        self.reset_ssm_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, dim = x.shape
        G, c, R, N = self.groups, self.group_dim, self.dt_rank, self.d_state
        xs, z = grouped_linear(x.reshape(b, h, w, G, c), self.in_proj_weight, (c, c))
        xs = xs.reshape(b, h, w, dim).permute(0, 3, 1, 2)              # NCHW, channels-last memory
        xs = self.conv2d(xs).permute(0, 2, 3, 1).reshape(b, h, w, G, c)  # SiLU'd, a view
        # The projections write their outputs group by group ((G, b, h, w,
        # n) memory), so every cache line of delta, B and C
        # serves one scan direction: GroupMamba-T stage 1, fp32 on an H100,
        # scans in 148.3 / 290.1 us (forward / backward) against 167.6 / 330.9
        # with every map channels-last (docs/benchmarks.md). In training this
        # also drops the copies of delta and z into channels-last order.
        # (B and C each contiguous, x_proj's output stored (G, R + 2N, b, h,
        # w), scan no faster, and cuBLAS then runs x_proj as a slow
        # small-N GEMM.)
        x_dbl = grouped_linear(xs, self.x_proj_weight, group_major=True)
        dts, Bs, Cs = x_dbl.split([R, N, N], dim=-1)                 # (b,h,w,G,R|N|N) views
        delta = grouped_linear(dts, self.dt_projs_weight, group_major=True)  # (b,h,w,G,c)
        # The scan computes in float32 and returns float32 y (as upstream's
        # force_fp32); its map inputs stay in their (autocast) dtype: the
        # kernel upcasts on load, the same values without float32 copies.
        f32 = at_least_fp32
        y = selective_scan_2d(
            xs, delta, -torch.exp(f32(self.A_logs)), Bs, Cs, self.directions,
            D=f32(self.Ds), delta_bias=f32(self.dt_projs_bias.reshape(-1)),
            delta_softplus=True, channels_last=True,
            out_dtype=torch.promote_types(xs.dtype, torch.float32))  # (b,h,w,G,c), xs's layout
        y = self.out_norm(y.reshape(b, h, w, dim)).to(xs.dtype).reshape(b, h, w, G, c) * F.silu(z)
        out = grouped_linear(y, self.out_proj_weight)
        return out.reshape(b, h, w, dim)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, groups={self.groups}, d_state={self.d_state}, '
                f'dt_rank={self.dt_rank}, directions={self.directions}')


class ChannelAffinityModulation(nn.Module):
    """Squeeze-excitation channel affinity: mean over pixels -> fc1 (C ->
    C//16) -> ReLU -> fc2 -> sigmoid.

    Shapes: (B, H, W, C) -> (B, C) weights in (0, 1).
    """

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.fc1 = Linear(dim, dim // reduction)
        self.fc2 = Linear(dim // reduction, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(1, 2))))))


class GroupMambaLayer(nn.Module):
    """Modulated Group Mamba layer (official ``GroupMambaLayer``)::

        n = norm(x)                               # LN eps 1e-5
        y = ssm(n) * skip_scale * n               # 4 directional groups; a gate
        y = y * cam(n)                            # channel affinity from n
        out = proj(norm(y))                       # the same LN module again

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, d_state: int = 1, d_conv: int = 3, reduction: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=_EPS_DEFAULT)
        self.cam = ChannelAffinityModulation(dim, reduction)
        self.ssm = GroupedDirectionalSSM(dim, 4, d_state, d_conv, DIRECTIONS_OFFICIAL)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        affinity = self.cam(x)
        y = self.ssm(x) * self.skip_scale * x
        y = y * affinity[:, None, None, :]
        return self.proj(self.norm(y))


class ConvFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv (bias) -> GELU -> fc2 (official ``PVT2FFN``);
    ``with_dwconv=False`` gives fc1 -> GELU -> fc2 (official ``FFN``).

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, hidden_dim: int, with_dwconv: bool = True):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv2d(hidden_dim, activation='gelu') if with_dwconv else None
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.dwconv is None:
            return self.fc2(F.gelu(x))
        return self.fc2(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))  # conv + GELU


class GroupMambaBlock(nn.Module):
    """``x + DropPath(mixer(x))`` then ``x + DropPath(ffn(ffn_norm(x)))``
    (one DropPath module for both branches, as upstream). ``ffn_norm`` is
    LN eps 1e-6.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.mixer = GroupMambaLayer(dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=_EPS_STAGE)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(x))
        return x + self.drop_path(self.ffn(self.ffn_norm(x)))


class GroupMambaStage(nn.Module):
    """[downsample] -> blocks -> [norm]. Stage 0 has no downsample (the stem
    precedes it); ``norm`` (LN eps 1e-6) is the official ``norm{i+1}`` for
    stages 0..2 (on the main path) and, in the dense backbone, a new output
    norm for the last stage.

    Shapes: (B, H, W, C_in) -> (B, H', W', C).
    """

    def __init__(self, in_dim: Optional[int], dim: int, depth: int, mlp_ratio: float,
                 drop_paths: Sequence[float], with_norm: bool, with_cp: bool = False):
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if in_dim is not None else None
        self.blocks = nn.ModuleList(
            GroupMambaBlock(dim, mlp_ratio, drop_paths[j]) for j in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_EPS_STAGE) if with_norm else None
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        x = run_blocks(self.blocks, x, self.with_cp)
        if self.norm is not None:
            x = self.norm(x)
        return x


# ----------------------------------------------------------------------------
# Checkpoint handling.
# ----------------------------------------------------------------------------
_GML_GROUP_KEYS = ('in_proj.weight', 'conv2d.weight', 'conv2d.bias', 'x_proj_weight',
                   'dt_projs_weight', 'dt_projs_bias', 'A_logs', 'Ds', 'out_norm.weight',
                   'out_norm.bias', 'out_proj.weight')
# official per-group key -> (our key under ``ssm.``, 'stack' | 'cat')
_GROUP_MAP = {
    'in_proj.weight': ('in_proj_weight', 'stack'),
    'out_proj.weight': ('out_proj_weight', 'stack'),
    'conv2d.weight': ('conv2d.weight', 'cat'),
    'conv2d.bias': ('conv2d.bias', 'cat'),
    'x_proj_weight': ('x_proj_weight', 'cat'),
    'dt_projs_weight': ('dt_projs_weight', 'cat'),
    'dt_projs_bias': ('dt_projs_bias', 'cat'),
    'A_logs': ('A_logs', 'cat'),
    'Ds': ('Ds', 'cat'),
    'out_norm.weight': ('out_norm.weight', 'cat'),
    'out_norm.bias': ('out_norm.bias', 'cat'),
}
# official GML key (not per group) -> ours
_GML_MAP = {
    'norm.weight': 'norm.weight', 'norm.bias': 'norm.bias',
    'fc1.weight': 'cam.fc1.weight', 'fc1.bias': 'cam.fc1.bias',
    'fc2.weight': 'cam.fc2.weight', 'fc2.bias': 'cam.fc2.bias',
    'skip_scale': 'skip_scale', 'proj.weight': 'proj.weight', 'proj.bias': 'proj.bias',
}
_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
_WB = ('weight', 'bias')


def _gml_keys(prefix: str) -> List[str]:
    keys = [prefix + k for k in _GML_MAP]
    keys += [f'{prefix}mamba_g{k}.{n}' for k in range(1, 5) for n in _GML_GROUP_KEYS]
    return keys


def _official_layout(sd: Mapping[str, torch.Tensor]) -> Tuple[List[int], bool, bool, bool]:
    """Infer (depths, has_class_tail, has_head, has_dist_head) from official keys."""
    depths = []
    s = 1
    while f'patch_embed{s}.proj.weight' in sd:
        pat = re.compile(rf'^block{s}\.(\d+)\.')
        ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
        depths.append(max(ids) + 1 if ids else 0)
        s += 1
    tail = any(k.startswith(('post_network.', 'norm%d.' % len(depths))) for k in sd)
    return (depths, tail, any(k.startswith('head.') for k in sd),
            any(k.startswith('dist_head.') for k in sd))


def official_key_names(depths: Sequence[int], class_tail: bool = True, head: bool = True,
                       dist_head: bool = True) -> List[str]:
    """All state-dict keys of an official GroupMamba with these stage depths."""
    keys = [f'patch_embed1.conv.{i}.weight' for i in (0, 3, 6)]
    keys += [f'patch_embed1.conv.{i}.{n}' for i in (1, 4, 7) for n in _BN_KEYS]
    n_stages = len(depths)
    for s in range(1, n_stages + 1):
        keys += [f'patch_embed{s}.{m}.{n}' for m in ('proj', 'norm') for n in _WB]
        for j in range(depths[s - 1]):
            p = f'block{s}.{j}.'
            keys += [p + f'norm2.{n}' for n in _WB] + _gml_keys(p + 'attn.')
            keys += [p + f'mlp.{m}.{n}' for m in ('fc1', 'dwconv.dwconv', 'fc2') for n in _WB]
        if s < n_stages:
            keys += [f'norm{s}.{n}' for n in _WB]
    if class_tail:
        keys += [f'norm{n_stages}.{n}' for n in _WB]
        p = 'post_network.0.'
        keys += [p + f'{m}.{n}' for m in ('norm1', 'norm2', 'mlp.fc1', 'mlp.fc2') for n in _WB]
        keys += _gml_keys(p + 'attn.')
    if head:
        keys += [f'head.{n}' for n in _WB]
    if dist_head:
        keys += [f'dist_head.{n}' for n in _WB]
    return keys


def is_official_state_dict(sd: Mapping) -> bool:
    """True if ``sd`` uses the official GroupMamba key names."""
    return any(isinstance(k, str) and k.startswith(('patch_embed1.', 'block1.')) for k in sd)


def _convert_gml(sd: Mapping[str, torch.Tensor], src: str, dst: str,
                 out: Dict[str, torch.Tensor]) -> None:
    for k, v in _GML_MAP.items():
        out[dst + v] = sd[src + k]
    for k, (name, how) in _GROUP_MAP.items():
        parts = [sd[f'{src}mamba_g{g}.{k}'] for g in range(1, 5)]
        out[f'{dst}ssm.{name}'] = torch.stack(parts) if how == 'stack' else torch.cat(parts)


def convert_official_state_dict(sd: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Convert an official GroupMamba state dict (the flat dict of a released
    checkpoint, or its ``model`` / ``model_ema`` entry) into the keys of
    :class:`GroupMambaClassifier`.

    Mapping (s is the 1-based official stage, i = s - 1, j the block)::

        patch_embed1.{conv.*,proj,norm}     -> backbone.stem.{conv.*,proj,norm}
        patch_embed{s>1}.{proj,norm}        -> backbone.stages.i.downsample.{proj,norm}
        block{s}.{j}.norm2                  -> backbone.stages.i.blocks.j.ffn_norm
        block{s}.{j}.mlp.{fc1,fc2}          -> backbone.stages.i.blocks.j.ffn.{fc1,fc2}
        block{s}.{j}.mlp.dwconv.dwconv      -> backbone.stages.i.blocks.j.ffn.dwconv
        block{s}.{j}.attn.{norm,proj,skip_scale} -> ...blocks.j.mixer.{norm,proj,skip_scale}
        block{s}.{j}.attn.{fc1,fc2}         -> ...blocks.j.mixer.cam.{fc1,fc2}
        block{s}.{j}.attn.mamba_g{1..4}.*   -> ...blocks.j.mixer.ssm.*  (fused, below)
        norm{s} (s < last)                  -> backbone.stages.i.norm
        norm{last}                          -> neck.norm
        post_network.0.attn                 -> neck.block.mixer (same GML mapping)
        post_network.0.norm1 / norm2        -> neck.block.mixer_norm / ffn_norm
        post_network.0.mlp.{fc1,fc2}        -> neck.block.ffn.{fc1,fc2}
        head / dist_head                    -> head.fc / head.dist_fc

    The fused SSM takes the four groups' tensors in group order (g1..g4 =
    directions lr, tb, rl, bt): ``in_proj.weight`` [2c,c] and
    ``out_proj.weight`` [c,c] are stacked to (4, 2c, c) / (4, c, c); all
    others are concatenated along their first axis (``x_proj_weight``
    [1,R+2,c] -> (4,R+2,c), ``dt_projs_weight`` [1,c,R] -> (4,c,R),
    ``dt_projs_bias`` [1,c] -> (4,c), ``A_logs`` [c,1] -> (C,1), ``Ds``,
    ``conv2d.*``, ``out_norm.*`` -> C channels).

    A leading ``module.`` (DDP) is stripped. The class tail, ``head`` and
    ``dist_head`` are optional (converted when present).

    Raises:
        KeyError: official keys are missing, or keys are not official ones;
            the message lists them.
    """
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    if not is_official_state_dict(sd):
        raise KeyError('convert_official_state_dict: this is not an official GroupMamba state '
                       "dict (no 'patch_embed1.*' / 'block1.*' keys); first keys: "
                       f'{list(sd)[:5]}')
    depths, tail, head, dist_head = _official_layout(sd)
    expected = official_key_names(depths, tail, head, dist_head)
    exp_set = set(expected)
    missing = [k for k in expected if k not in sd]
    unknown = [k for k in sd if k not in exp_set]
    if missing or unknown:
        def show(ks):
            return ks if len(ks) <= 20 else ks[:20] + [f'... ({len(ks) - 20} more)']
        raise KeyError(f'convert_official_state_dict: the state dict does not match the official '
                       f'GroupMamba layout (stage depths {depths}); missing official keys: '
                       f'{show(missing)}; unknown keys: {show(unknown)}')
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for k in expected:
        if k.startswith('patch_embed1.'):
            out['backbone.stem.' + k[len('patch_embed1.'):]] = sd[k]
    n_stages = len(depths)
    for s in range(1, n_stages + 1):
        st = f'backbone.stages.{s - 1}.'
        if s > 1:
            for m in ('proj', 'norm'):
                for n in _WB:
                    out[f'{st}downsample.{m}.{n}'] = sd[f'patch_embed{s}.{m}.{n}']
        for j in range(depths[s - 1]):
            src, dst = f'block{s}.{j}.', f'{st}blocks.{j}.'
            _convert_gml(sd, src + 'attn.', dst + 'mixer.', out)
            for n in _WB:
                out[f'{dst}ffn_norm.{n}'] = sd[f'{src}norm2.{n}']
                out[f'{dst}ffn.fc1.{n}'] = sd[f'{src}mlp.fc1.{n}']
                out[f'{dst}ffn.dwconv.{n}'] = sd[f'{src}mlp.dwconv.dwconv.{n}']
                out[f'{dst}ffn.fc2.{n}'] = sd[f'{src}mlp.fc2.{n}']
        if s < n_stages:
            for n in _WB:
                out[f'{st}norm.{n}'] = sd[f'norm{s}.{n}']
    if tail:
        src = 'post_network.0.'
        _convert_gml(sd, src + 'attn.', 'neck.block.mixer.', out)
        for n in _WB:
            out[f'neck.block.mixer_norm.{n}'] = sd[f'{src}norm1.{n}']
            out[f'neck.block.ffn_norm.{n}'] = sd[f'{src}norm2.{n}']
            out[f'neck.block.ffn.fc1.{n}'] = sd[f'{src}mlp.fc1.{n}']
            out[f'neck.block.ffn.fc2.{n}'] = sd[f'{src}mlp.fc2.{n}']
            out[f'neck.norm.{n}'] = sd[f'norm{n_stages}.{n}']
    for n in _WB:
        if head:
            out[f'head.fc.{n}'] = sd[f'head.{n}']
        if dist_head:
            out[f'head.dist_fc.{n}'] = sd[f'dist_head.{n}']
    return out


def _to_classifier_keys(ckpt: Mapping) -> Dict[str, torch.Tensor]:
    """Unwrap a checkpoint (flat, or its ``state_dict`` / ``model`` /
    ``model_ema`` entry) and convert it to our classifier keys if it is
    official; ours are returned as they are (minus a ``module.`` prefix)."""
    from ..utils.checkpoint import extract_state_dict
    sd = extract_state_dict(ckpt)
    if is_official_state_dict(sd):
        return dict(convert_official_state_dict(sd))
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}


# ----------------------------------------------------------------------------
# Backbone.
# ----------------------------------------------------------------------------
class GroupMamba(StagedBackbone):
    """GroupMamba backbone for classification, detection and segmentation.

    Args:
        arch: 'tiny' | 'small' | 'base' (see :data:`arch_settings`) or a dict
            with keys ``stem_channels``, ``embed_dims``, ``depths``,
            ``mlp_ratios``.
        in_channels: input channels.
        out_indices: stages whose maps are returned (0-based; negative
            counts from the end). Stages after the last one are built (so
            that checkpoints load) but not run; their parameters get no
            gradients (DDP then needs find_unused_parameters).
        frozen_stages: -1 freezes nothing; 0 freezes the stem; k >= 1 the
            stem and stages 0..k-1 (eval mode, no gradients).
        norm_eval: keep the (stem) BatchNorms in eval mode while training.
        drop_path_rate: stochastic depth, linear from 0 over all blocks
            (0.05 in the official training script, for T, S and B).
        with_cp: activation checkpointing per block while training: a bool
            for all stages, or one bool per stage (e.g. ``(True, False,
            False, False)``: only the high-resolution stage 0, whose
            activations are the largest, recomputes its blocks).
        fp32_gemm: float32 GEMM algorithm of the Linear layers on CUDA
            outside autocast: 'tf32x3' (default; a Triton 3xTF32 GEMM on
            tensor cores with fp32 accuracy, where it is the faster) or
            'ieee' (always cuBLAS, PyTorch's default). See
            :mod:`mmgroupmamba.ops.linear`.
        out_norm: LayerNorm every returned map. Stages 0..n-2 always end in
            their official norm ``norm{i+1}`` (eps 1e-6, on the main path,
            pretrained), so their outputs are normed in any case; with
            ``out_norm=True`` the last stage gets a new LayerNorm
            ``stages.{n-1}.norm`` (eps 1e-6) when it is returned. It is
            not in classification checkpoints (the official ``norm4``
            norms the class token, not the map) and starts at 1/0.
        init_cfg: None (official random init) or ``dict(type='Pretrained',
            checkpoint=path, prefix=None)``: loads our checkpoints or
            official ones (auto-detected, converted); classification-only
            keys (class tail, heads) are dropped.

    Input: (B, in_channels, H, W), any H, W. Padding rule: every stride-2
    conv (the stem's 7x7, then 3x3s) zero-pads (k - 1) / 2 pixels on each
    side, so it maps a side s to floor((s - 1) / 2) + 1 = ceil(s / 2) (for
    even s the last bottom/right pad is never read). No other padding or
    cropping is done, and the scans run on the exact map, so results do not
    depend on any padding beyond the convolutions' own.
    Output: tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))) for i in
    out_indices (strides 4, 8, 16, 32), contiguous NCHW.
    """

    def __init__(self, arch: Union[str, Mapping] = 'tiny', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: float = 0.05,
                 with_cp: Union[bool, Sequence[bool]] = False, out_norm: bool = True,
                 init_cfg: Optional[Mapping] = None, fp32_gemm: str = 'tf32x3'):
        arch = resolve_arch(arch)
        dims, depths = arch['embed_dims'], arch['depths']
        super().__init__(len(dims), in_channels, out_indices, frozen_stages, norm_eval, with_cp,
                         init_cfg, fp32_gemm)
        self.arch = arch
        n = self.num_stages
        self.out_norm = out_norm
        self.embed_dims = dims

        self.stem = ConvStem(in_channels, self.arch['stem_channels'], dims[0])
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(n):
            last = i == n - 1
            self.stages.append(GroupMambaStage(
                None if i == 0 else dims[i - 1], dims[i], depths[i], self.arch['mlp_ratios'][i],
                dpr[cur:cur + depths[i]],
                with_norm=(not last) or (out_norm and i in self.out_indices),
                with_cp=self.with_cp[i]))
            cur += depths[i]
        set_fp32_gemm(self, fp32_gemm)
        official_init_(self)
        self._freeze_stages()

    # -- forward ------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)

    # -- train / freeze -----------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        stem = [self.stem] if self.frozen_stages >= 0 else []
        return stem + list(self.stages[:max(self.frozen_stages, 0)])

    # -- init ---------------------------------------------------------------
    def _last_norm_keys(self) -> List[str]:
        """Keys of the last stage's output norm: new in the dense backbone,
        so classification checkpoints cannot provide them."""
        return [f'stages.{self.num_stages - 1}.norm.{n}' for n in _WB]

    STATE_PREFIXES = ('stem.', 'stages.')

    def _random_init(self) -> None:
        official_init_(self)

    def _checkpoint_to_our_keys(self, ckpt: Mapping) -> Mapping[str, torch.Tensor]:
        return _to_classifier_keys(ckpt)

    def _optional_keys(self) -> List[str]:
        # a dense checkpoint's last-stage output norm is optional both ways
        return self._last_norm_keys()


# ----------------------------------------------------------------------------
# Classification tail, head, classifier.
# ----------------------------------------------------------------------------
class ClassTokenBlock(nn.Module):
    """Official ``ClassBlock`` on the mean token only::

        t = t + mixer_norm(mixer(t))      # GML on a 1x1 map, post-norm eps 1e-6
        t = t + ffn(ffn_norm(t))          # fc1 -> GELU -> fc2 (no dwconv), hidden ratio*C

    No drop path. Shapes: (B, C) -> (B, C).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mixer = GroupMambaLayer(dim)
        self.mixer_norm = nn.LayerNorm(dim, eps=_EPS_STAGE)
        self.ffn_norm = nn.LayerNorm(dim, eps=_EPS_STAGE)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), with_dwconv=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.mixer_norm(self.mixer(t[:, None, None, :])[:, 0, 0])
        return t + self.ffn(self.ffn_norm(t))


class GroupMambaClassTail(nn.Module):
    """Classification tail: mean over the last stage's pixels -> class-token
    block -> ``norm`` (the official ``norm4``, eps 1e-6).

    Input: (B, C, H, W) or a tuple whose last element is one.
    Output: (B, C) pooled feature.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.block = ClassTokenBlock(dim, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=_EPS_STAGE)
        official_init_(self)

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if isinstance(x, (tuple, list)):
            x = x[-1]
        return self.norm(self.block(x.mean(dim=(2, 3))))


class DistillationLinearHead(nn.Module):
    """``fc`` (and ``dist_fc``, DeiT-style hard-distillation head) on the
    pooled feature.

    Input: (B, C) (or a tuple ending in one). Output: logits (B, classes);
    in training with distillation the tuple (logits, dist_logits); in eval
    their average.
    """

    def __init__(self, in_channels: int, num_classes: int = 1000, distillation: bool = True):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes: expected a positive int, got {num_classes!r}')
        self.distillation = distillation
        self.fc = nn.Linear(in_channels, num_classes)
        self.dist_fc = nn.Linear(in_channels, num_classes) if distillation else None
        official_init_(self)

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(x, (tuple, list)):
            x = x[-1]
        logits = self.fc(x)
        if self.dist_fc is None:
            return logits
        dist = self.dist_fc(x)
        if self.training:
            return logits, dist
        return (logits + dist) / 2


class GroupMambaClassifier(nn.Module):
    """The full classification network: ``backbone`` (GroupMamba, last stage
    only, no extra output norm) -> ``neck`` (class tail) -> ``head``.

    Args:
        arch: see :class:`GroupMamba`.
        num_classes: classes of ``head.fc`` / ``head.dist_fc``.
        distillation: with the distillation head ``dist_fc``.
        drop_path_rate, with_cp, in_channels, fp32_gemm: passed to the backbone.

    Input (B, in_channels, H, W); output as :class:`DistillationLinearHead`.
    """

    def __init__(self, arch: Union[str, Mapping] = 'tiny', num_classes: int = 1000,
                 distillation: bool = True, drop_path_rate: float = 0.05,
                 with_cp: Union[bool, Sequence[bool]] = False, in_channels: int = 3,
                 fp32_gemm: str = 'tf32x3'):
        super().__init__()
        self.backbone = GroupMamba(arch, in_channels=in_channels, out_indices=(-1,),
                                   drop_path_rate=drop_path_rate, with_cp=with_cp,
                                   out_norm=False, fp32_gemm=fp32_gemm)
        dims = self.backbone.arch['embed_dims']
        self.neck = GroupMambaClassTail(dims[-1], self.backbone.arch['mlp_ratios'][-1])
        self.head = DistillationLinearHead(dims[-1], num_classes, distillation)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> pooled feature (B, C_last)."""
        return self.neck(self.backbone(x))

    def forward(self, x: torch.Tensor):
        return self.head(self.forward_features(x))

    def load_checkpoint(self, checkpoint: Union[str, Mapping], strict: bool = True) -> None:
        """Load ours or an official checkpoint (path or loaded dict)."""
        load_classifier_state(self, checkpoint, _to_classifier_keys, strict,
                              f'arch={self.backbone.arch}, num_classes/distillation of the head')


def create_groupmamba(name: str, num_classes: int = 1000, distillation: bool = True,
                      pretrained: Optional[Union[str, Mapping]] = None, **kwargs
                      ) -> GroupMambaClassifier:
    """Build the classification network ``groupmamba_{tiny,small,base}``.

    Args:
        name: one of :data:`MODEL_NAMES`.
        pretrained: optional checkpoint (path or loaded dict), ours or
            official; loaded strictly.
        **kwargs: ``drop_path_rate`` (default 0.05), ``with_cp``,
            ``in_channels``, ``fp32_gemm``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f'create_groupmamba: unknown model {name!r}; valid names: '
                         f'{list(MODEL_NAMES)}')
    model = GroupMambaClassifier(name.split('_', 1)[1], num_classes=num_classes,
                                 distillation=distillation, **kwargs)
    if pretrained is not None:
        model.load_checkpoint(pretrained, strict=True)
    return model
