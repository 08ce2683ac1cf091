"""Spatial-Mamba (Xiao et al., 2024, "Effective Visual State Space Models via
Structure-Aware State Fusion"): one unidirectional selective scan whose hidden
states are fused over the 2D neighbourhood before the observation equation.

Pure PyTorch (no OpenMMLab import), on the shared scan op in its states mode
(:func:`~mmgroupmamba.ops.selective_scan_2d` with ``C=None``). Module and
parameter names follow the official implementation
(github.com/EdwardChasel/Spatial-Mamba, ``classification/models``), so its
checkpoints load with a light key filter (:func:`convert_official_state_dict`).

Structure-aware state fusion (SASF), per channel d of the inner width::

    h~(p) = sum_{k in (1, 3, 5)} alpha_k sum_{(i, j) in {-1, 0, 1}^2} W_k[d, i, j] h(clamp(p + k (i, j)))
    y     = C h~ + D u

i.e. three 3x3 depthwise kernels at dilations 1, 3, 5 over replicate-padded
states. The official code runs that in training and, at eval, an equivalent
merged 11x11 kernel that it caches on the first eval call and never rebuilds
(stale after any later weight update). Here the three convolutions always run
on the current weights: there is no cache to go stale.

Layout: activations between blocks are channels-last ``(B, H, W, C)`` (as
upstream); the backbone returns ``(B, C, H, W)`` maps.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan_2d
from ..ops.linear import Linear, set_fp32_gemm
from .common import (DropPath, StagedBackbone, at_least_fp32, conv_bn_relu, drop_path_rates,
                     init_linear_norm_, load_classifier_state, run_blocks)

__all__ = [
    'arch_settings', 'ConvNormAct', 'SpatialMambaStem', 'SpatialMambaDownsample', 'StateFusion',
    'StructureAwareSSM', 'SpatialMambaMLP', 'SpatialMambaBlock', 'SpatialMambaStage',
    'SpatialMamba', 'SpatialMambaClassifier', 'create_spatialmamba', 'convert_official_state_dict',
    'is_official_state_dict', 'MODEL_NAMES',
]

#: Official variants (``configs/spatialmamba/*.yaml``): stage widths, blocks
#: per stage, and the drop-path rate of the official recipe.
arch_settings: Dict[str, Dict] = {
    'tiny': dict(embed_dims=(64, 128, 256, 512), depths=(2, 4, 8, 4), drop_path_rate=0.2),
    'small': dict(embed_dims=(64, 128, 256, 512), depths=(2, 4, 21, 5), drop_path_rate=0.3),
    'base': dict(embed_dims=(96, 192, 384, 768), depths=(2, 4, 21, 5), drop_path_rate=0.5),
}
MODEL_NAMES = ('spatialmamba_tiny', 'spatialmamba_small', 'spatialmamba_base')

#: Dilations of the three state-fusion kernels (``kernel_3``, ``kernel_3_1``,
#: ``kernel_3_2``).
FUSION_DILATIONS = (1, 3, 5)


def resolve_arch(arch: Union[str, Mapping]) -> Dict:
    """A name of :data:`arch_settings` or a dict with ``embed_dims`` and
    ``depths`` (and optionally ``drop_path_rate``), validated."""
    if isinstance(arch, str):
        if arch not in arch_settings:
            raise ValueError(f'arch: unknown architecture {arch!r}; expected one of '
                             f'{sorted(arch_settings)} or a dict with keys embed_dims, depths')
        arch = arch_settings[arch]
    if not isinstance(arch, Mapping) or not {'embed_dims', 'depths'} <= set(arch):
        raise ValueError(f'arch: expected a name {sorted(arch_settings)} or a dict with keys '
                         f"'embed_dims' and 'depths', got {arch!r}")
    unknown = set(arch) - {'embed_dims', 'depths', 'drop_path_rate'}
    if unknown:
        raise ValueError(f'arch: unknown keys {sorted(unknown)}; expected embed_dims, depths '
                         f'(and drop_path_rate)')
    dims, depths = tuple(int(d) for d in arch['embed_dims']), tuple(int(d) for d in arch['depths'])
    if not dims or len(dims) != len(depths):
        raise ValueError(f"arch: 'embed_dims' and 'depths' need the same non-zero length, got "
                         f'{dims} and {depths}')
    if dims[0] % 2 or any(d < 1 for d in dims + depths):
        raise ValueError(f"arch['embed_dims']: expected positive widths, the first even (the stem "
                         f'halves it), and positive depths; got {dims}, {depths}')
    return dict(embed_dims=dims, depths=depths,
                drop_path_rate=float(arch.get('drop_path_rate', 0.0)))


# ----------------------------------------------------------------------------
# Stem and downsampling (BatchNorm convolutions, as upstream).
# ----------------------------------------------------------------------------
class ConvNormAct(nn.Module):
    """conv -> [BatchNorm] -> [ReLU] (keys ``conv``, ``norm``). (B, C, H, W) in and out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True,
                 norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None and self.act is not None:
            return conv_bn_relu(x, self.conv, self.norm)   # one cuDNN kernel in fp32 inference
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class SpatialMambaStem(nn.Module):
    """Stride-4 stem: 3x3/2 conv-BN-ReLU to C/2, a residual pair of 3x3 convs,
    3x3/2 conv-BN-ReLU to 4C, 1x1 conv-BN to C.

    Shapes: (B, in_channels, H, W) -> (B, ceil(H/4), ceil(W/4), C).
    """

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        half = embed_dim // 2
        self.conv1 = ConvNormAct(in_channels, half, 3, 2, 1, bias=False)
        self.conv2 = nn.Sequential(ConvNormAct(half, half, 3, 1, 1, bias=False),
                                   ConvNormAct(half, half, 3, 1, 1, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvNormAct(half, embed_dim * 4, 3, 2, 1, bias=False),
                                   ConvNormAct(embed_dim * 4, embed_dim, 1, bias=False, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last from the first conv on, as GroupMamba's stem: cuDNN
        # runs these convs with NHWC kernels
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class SpatialMambaDownsample(nn.Module):
    """Inverted-bottleneck downsampling: 1x1 conv-ReLU to 8C, 3x3/2 depthwise
    conv-ReLU, 1x1 conv-BN to 2C (convs with bias).

    Shapes: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).
    """

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(
            ConvNormAct(dim, hidden, 1, norm=False),
            ConvNormAct(hidden, hidden, 3, 2, 1, groups=hidden, norm=False),
            ConvNormAct(hidden, 2 * dim, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------
# Structure-aware SSM.
# ----------------------------------------------------------------------------
class StateFusion(nn.Module):
    """Structure-aware state fusion: ``sum_k alpha[k] * dwconv3x3(h, W_k,
    dilation k)`` over replicate-padded states, k in (1, 3, 5).

    The states are padded once (by 5) and each dilated kernel reads its
    window of that buffer, which is the same as padding each by its own
    dilation. Nothing is cached: eval uses the current weights.

    Shapes: (B, dim, H, W) -> (B, dim, H, W); or states (B, dim, N, H, W)
    (the same kernels for every state index) -> same shape.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # all ones, as upstream (at init h~ ~ 27 h; out_norm absorbs the scale)
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.alpha = nn.Parameter(torch.ones(len(FUSION_DILATIONS)))

    def kernels(self) -> Tuple[torch.Tensor, ...]:
        return self.kernel_3, self.kernel_3_1, self.kernel_3_2

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = h.shape
        if h.dim() == 5:
            n_state = shape[2]
            h = h.reshape(shape[0], shape[1] * n_state, shape[3], shape[4])
        elif h.dim() == 4:
            n_state = 1
        else:
            raise ValueError(f'h: expected states (B, dim, H, W) or (B, dim, N, H, W), got '
                             f'{tuple(shape)}')
        if shape[1] != self.dim:
            raise ValueError(f'h: expected {self.dim} channels (dim), got {shape[1]}')
        device = h.device.type
        if torch.is_autocast_enabled(device):
            # Cast the (fp32) states once: autocast would cast each conv's
            # window of the padded buffer on its own, three copies kept for
            # the backward. Same values either way.
            h = h.to(torch.get_autocast_dtype(device))
        pad = max(FUSION_DILATIONS)
        hp = F.pad(h, (pad, pad, pad, pad), mode='replicate')
        height, width = h.shape[-2:]
        out = None
        for alpha, kernel, dil in zip(self.alpha, self.kernels(), FUSION_DILATIONS):
            off = pad - dil  # this dilation's own replicate padding inside the buffer
            window = hp[:, :, off:off + height + 2 * dil, off:off + width + 2 * dil]
            # alpha goes into the (tiny) kernel, not onto the map: no map-sized
            # product to keep for the backward
            weight = alpha * kernel
            if n_state > 1:
                weight = weight.repeat_interleave(n_state, dim=0)
            term = F.conv2d(window, weight, dilation=dil, groups=h.shape[1])
            out = term if out is None else out + term
        return out.reshape(shape)


class StructureAwareSSM(nn.Module):
    """The Spatial-Mamba mixer::

        x, z = in_proj(x).chunk(2)                     # C -> 2 x D (D = expand * C)
        u    = SiLU(dwconv3x3(x))                      # (B, D, H, W)
        dt, B, C = split(x_proj_weight @ u)            # ranks R, N, N
        h    = scan(u, dt_projs_weight @ dt, A, B)     # row-major, states (B, D, N, H, W)
        y    = C . StateFusion(h) + Ds u
        out  = out_proj(out_norm(y) * SiLU(z))

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, d_model: int, d_state: int = 1, d_conv: int = 3, expand: int = 2,
                 dt_rank: Union[int, str] = 'auto'):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == 'auto' else int(dt_rank)
        self.in_proj = Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.state_fusion = StateFusion(d_inner)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1,
                             dt_floor: float = 1e-4) -> None:
        """Mamba's init: x_proj as nn.Linear's default, dt_proj weights
        uniform(+-R^-0.5), dt bias = softplus^-1 of a log-uniform dt in
        [dt_min, dt_max], A = -(1..N), D = 1."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.x_proj_weight, a=math.sqrt(5))
            bound = self.dt_rank ** -0.5
            nn.init.uniform_(self.dt_projs_weight, -bound, bound)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_floor)
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1,
                                                     dtype=torch.float32)).expand_as(self.A_logs))
            self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))                      # (B, D, H, W)
        batch, dim, height, width = u.shape
        x_dbl = torch.matmul(self.x_proj_weight, u.reshape(batch, dim, -1))  # (B, R + 2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dts = torch.matmul(self.dt_projs_weight, dts).view(batch, dim, height, width)
        hs = selective_scan_2d(u, dts, -torch.exp(at_least_fp32(self.A_logs)),
                               Bs.reshape(batch, 1, self.d_state, height, width), None, ('lr',),
                               delta_bias=at_least_fp32(self.dt_projs_bias), delta_softplus=True)
        hs = self.state_fusion(hs)                                          # (B, D, N, H, W)
        Cs = Cs.reshape(batch, 1, self.d_state, height, width)
        y = (hs * Cs).sum(dim=2) + u * self.Ds.view(-1, 1, 1)
        y = self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return f'd_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, ' \
               f'dt_rank={self.dt_rank}'


class SpatialMambaMLP(nn.Module):
    """fc1 -> GELU -> fc2 (keys ``fc1``, ``fc2``). (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpatialMambaBlock(nn.Module):
    """``x + cpe1(x)``, ``x + DropPath(SSM(ln_1(x)))``, ``x + cpe2(x)``,
    ``x + DropPath(mlp(ln_2(x)))``; cpe = 3x3 depthwise conv with bias,
    LayerNorms eps 1e-5. Shapes: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0,
                 d_state: int = 1):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = StructureAwareSSM(dim, d_state=d_state)
        self.drop_path = DropPath(drop_path)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = SpatialMambaMLP(dim, int(dim * mlp_ratio))

    @staticmethod
    def _cpe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._cpe(self.cpe1, x)
        x = x + self.drop_path(self.self_attention(self.ln_1(x)))
        x = x + self._cpe(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class SpatialMambaStage(nn.Module):
    """Blocks, then (except for the last stage) the downsampling to the next
    stage, as upstream's ``layers.{i}``.

    Shapes: (B, H, W, C) -> the stage output (B, H, W, C) and the next
    stage's input (B, H/2, W/2, 2C) or None.
    """

    def __init__(self, dim: int, depth: int, drop_paths: Sequence[float], mlp_ratio: float,
                 d_state: int, downsample: bool, with_cp: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(SpatialMambaBlock(dim, drop_paths[j], mlp_ratio, d_state)
                                    for j in range(depth))
        self.downsample = SpatialMambaDownsample(dim) if downsample else None
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor, with_downsample: bool = True
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = run_blocks(self.blocks, x, self.with_cp)
        nxt = self.downsample(x) if with_downsample and self.downsample is not None else None
        return x, nxt


def official_init_(module: nn.Module) -> None:
    """Upstream's init: Linear trunc_normal(0.02) with zero bias, LayerNorm
    1/0, the SSM's own parameters as Mamba; convs and BatchNorms keep
    PyTorch's defaults (upstream does not touch them)."""
    for m in module.modules():
        if init_linear_norm_(m):
            continue
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
        elif isinstance(m, StructureAwareSSM):
            m.reset_ssm_parameters()
        elif isinstance(m, StateFusion):
            for p in m.parameters():
                nn.init.ones_(p)


# ----------------------------------------------------------------------------
# Official checkpoints.
# ----------------------------------------------------------------------------
def is_official_state_dict(sd: Mapping) -> bool:
    """Upstream classification state dicts have top-level ``patch_embed.*``
    and ``layers.*`` keys and a ``norm``/``head`` tail."""
    return any(k.startswith('patch_embed.') for k in sd) and any(
        k.startswith('layers.') for k in sd)


def convert_official_state_dict(sd: Mapping[str, torch.Tensor], num_stages: int = 4
                                ) -> 'OrderedDict[str, torch.Tensor]':
    """Upstream classification keys -> :class:`SpatialMambaClassifier` keys
    (also mmpretrain's ``ImageClassifier`` with our backbone, GAP neck and
    ``LinearClsHead``): ``patch_embed.*``/``layers.*`` -> ``backbone.*``, the
    token norm ``norm.*`` -> ``backbone.outnorm{n-1}.*`` (the same LayerNorm on
    the last map, before pooling), ``head.*`` -> ``head.fc.*``; upstream
    backbone keys ``outnorm{i}.*`` keep their name under ``backbone.``; the
    eval-only ``_merge_weight`` buffers (never in upstream's state dicts,
    but harmless) are dropped."""
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for k, v in sd.items():
        if k.endswith('_merge_weight'):
            continue
        if k.startswith(('patch_embed.', 'layers.', 'outnorm')):
            out['backbone.' + k] = v
        elif k.startswith('norm.'):
            out[f'backbone.outnorm{num_stages - 1}.' + k[len('norm.'):]] = v
        elif k.startswith('head.'):
            out['head.fc.' + k[len('head.'):]] = v
        else:
            raise KeyError(f'convert_official_state_dict: unknown Spatial-Mamba key {k!r}')
    return out


def _to_our_keys(ckpt: Mapping) -> Dict[str, torch.Tensor]:
    from ..utils.checkpoint import extract_state_dict
    sd = extract_state_dict(ckpt)
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    return dict(convert_official_state_dict(sd)) if is_official_state_dict(sd) else sd


# ----------------------------------------------------------------------------
# Backbone and classifier.
# ----------------------------------------------------------------------------
class SpatialMamba(StagedBackbone):
    """Spatial-Mamba backbone for classification, detection and segmentation.

    Args:
        arch: 'tiny' | 'small' | 'base' (see :data:`arch_settings`) or a dict
            with ``embed_dims`` and ``depths``.
        in_channels: input channels.
        out_indices: stages whose maps are returned (negative from the end);
            each gets a LayerNorm ``outnorm{i}`` (upstream's names). Stages
            after the last one are built (checkpoints load) but not run.
        frozen_stages: -1 none; 0 the stem; k >= 1 the stem and stages
            0..k-1 (with their downsampling), in eval mode, no gradients.
        norm_eval: keep the BatchNorms (stem, downsampling) in eval mode.
        drop_path_rate: stochastic depth, linear from 0 over all blocks; None
            takes the official recipe's rate of the arch (0.2 / 0.3 / 0.5).
        d_state: SSM state size (1 in every official model).
        with_cp: activation checkpointing per block: a bool for all
            stages, or one bool per stage.
        fp32_gemm: float32 GEMM algorithm of the Linear layers on CUDA
            outside autocast: 'tf32x3' (default) or 'ieee' (see
            :mod:`mmgroupmamba.ops.linear`).
        init_cfg: None (upstream's random init) or ``dict(type='Pretrained',
            checkpoint=path, prefix=None)``: our checkpoints or upstream ones
            (classification or dense, auto-detected); output norms the
            checkpoint lacks keep their fresh init.

    Input (B, in_channels, H, W), any H, W (every stride-2 conv maps a side s
    to ceil(s / 2)). Output: tuple of (B, C_i, H_i, W_i) at strides 4, 8, 16,
    32, contiguous NCHW.
    """

    def __init__(self, arch: Union[str, Mapping] = 'tiny', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: Optional[float] = None,
                 d_state: int = 1, with_cp: Union[bool, Sequence[bool]] = False,
                 init_cfg: Optional[Mapping] = None, fp32_gemm: str = 'tf32x3'):
        arch = resolve_arch(arch)
        dims, depths = arch['embed_dims'], arch['depths']
        super().__init__(len(dims), in_channels, out_indices, frozen_stages, norm_eval, with_cp,
                         init_cfg, fp32_gemm)
        if not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f'd_state: expected a positive int, got {d_state!r}')
        self.arch = arch
        self.embed_dims = dims
        rate = arch['drop_path_rate'] if drop_path_rate is None else drop_path_rate
        dpr = drop_path_rates(rate, depths)
        self.patch_embed = SpatialMambaStem(in_channels, dims[0])
        self.layers = nn.ModuleList()
        cur = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i + 1 < len(dims) and dims[i + 1] != 2 * dim:
                raise ValueError(f"arch['embed_dims']: each stage doubles the width (the "
                                 f'downsampling maps C to 2C), got {dims}')
            self.layers.append(SpatialMambaStage(dim, depth, dpr[cur:cur + depth], 4.0, d_state,
                                                 downsample=i + 1 < len(dims),
                                                 with_cp=self.with_cp[i]))
            cur += depth
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', nn.LayerNorm(dims[i]))
        set_fp32_gemm(self, fp32_gemm)
        official_init_(self)
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        last = self.out_indices[-1]
        for i, layer in enumerate(self.layers):
            out, x = layer(x, with_downsample=i < last)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(out).permute(0, 3, 1, 2).contiguous())
            if i == last:
                break
        return tuple(outs)

    def _frozen_modules(self) -> List[nn.Module]:
        stem = [self.patch_embed] if self.frozen_stages >= 0 else []
        return stem + list(self.layers[:max(self.frozen_stages, 0)])

    STATE_PREFIXES = ('patch_embed.', 'layers.', 'outnorm')

    def _random_init(self) -> None:
        official_init_(self)

    def _checkpoint_to_our_keys(self, ckpt: Mapping) -> Mapping[str, torch.Tensor]:
        return _to_our_keys(ckpt)

    def _optional_keys(self) -> List[str]:
        # output norms: new in a dense backbone (outnorm0-2), absent elsewhere
        return [f'outnorm{i}.{n}' for i in range(self.num_stages) for n in ('weight', 'bias')]


class SpatialMambaClassifier(nn.Module):
    """Classification network: backbone (last stage, ``outnorm3`` = upstream's
    token ``norm``) -> global average pool -> ``head.fc``. The keys are those
    of mmpretrain's ``ImageClassifier`` with this backbone, a GAP neck and a
    ``LinearClsHead``.

    Shapes: (B, in_channels, H, W) -> logits (B, num_classes).
    """

    def __init__(self, arch: Union[str, Mapping] = 'tiny', num_classes: int = 1000,
                 drop_path_rate: Optional[float] = None,
                 with_cp: Union[bool, Sequence[bool]] = False,
                 in_channels: int = 3, fp32_gemm: str = 'tf32x3'):
        super().__init__()
        self.backbone = SpatialMamba(arch, in_channels=in_channels, out_indices=(-1,),
                                     drop_path_rate=drop_path_rate, with_cp=with_cp,
                                     fp32_gemm=fp32_gemm)
        self.head = nn.Module()
        self.head.fc = nn.Linear(self.backbone.embed_dims[-1], num_classes)
        official_init_(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> pooled feature (B, C_last)."""
        return self.backbone(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.forward_features(x))

    def load_checkpoint(self, checkpoint: Union[str, Mapping], strict: bool = True) -> None:
        """Load ours or an upstream classification checkpoint."""
        load_classifier_state(self, checkpoint, _to_our_keys, strict,
                              f'arch={self.backbone.arch}, num_classes of the head')


def create_spatialmamba(name: str, num_classes: int = 1000,
                        pretrained: Optional[Union[str, Mapping]] = None, **kwargs
                        ) -> SpatialMambaClassifier:
    """Build ``spatialmamba_{tiny,small,base}`` (optionally loading a
    checkpoint strictly: ours or upstream's)."""
    if name not in MODEL_NAMES:
        raise ValueError(f'create_spatialmamba: unknown model {name!r}; valid names: '
                         f'{list(MODEL_NAMES)}')
    model = SpatialMambaClassifier(name.split('_', 1)[1], num_classes=num_classes, **kwargs)
    if pretrained is not None:
        model.load_checkpoint(pretrained, strict=True)
    return model
