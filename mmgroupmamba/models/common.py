"""Pieces shared by the backbones (GroupMamba, Spatial-Mamba): stochastic
depth, the depthwise convolution, the stems' conv-BN-ReLU, argument checks,
the stage-freezing / ``norm_eval`` train mode, and strict pretrained loading
with a readable key report.

Pure PyTorch (no OpenMMLab import).
"""
from typing import Callable, Collection, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ..ops.conv import conv2d_bias_relu
from ..ops.depthwise_conv import ACTIVATIONS, depthwise_conv2d
from ..ops.dispatch import fp32_cuda_inference
from ..ops.linear import FP32_GEMM_MODES


class DropPath(nn.Module):
    """Stochastic depth per sample (as timm's ``DropPath``, rescaled by
    1 / keep probability). Input any shape with the batch first."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


def _triton_conv_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The dispatch rule of :class:`DepthwiseConv2d`'s Triton kernel: float32
    CUDA maps when no gradient is needed (tests patch it to run the kernel
    under the CPU interpreter)."""
    return fp32_cuda_inference(x, weight)


class DepthwiseConv2d(nn.Conv2d):
    """3x3 (any odd k) stride-1 depthwise convolution with "same" zero
    padding, then an optional activation: an ``nn.Conv2d`` (same parameters
    and state-dict keys) that computes ``activation(conv(x))``.

    Float32 CUDA inference (no gradient needed, eager or compiled) runs conv,
    bias and activation as one Triton kernel
    (:func:`mmgroupmamba.ops.depthwise_conv2d`), which reads the map once
    and writes it once; cuDNN's depthwise kernel plus the activation were two
    passes at about half the copy bandwidth on an H100 (docs/benchmarks.md).
    Every other case keeps cuDNN (then the activation): training, which needs
    the weight gradient, the CPU, autocast (whose conv output is half), and
    fp16/bf16 maps, where the kernel did not beat cuDNN.

    Args:
        activation: None, 'gelu' (exact) or 'silu'.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = True,
                 activation: Optional[str] = None):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'DepthwiseConv2d: kernel_size must be a positive odd integer '
                             f'("same" padding), got {kernel_size}')
        if activation not in ACTIVATIONS:
            raise ValueError(f'DepthwiseConv2d: activation must be one of {ACTIVATIONS}, '
                             f'got {activation!r}')
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _triton_conv_applies(x, self.weight):
            return depthwise_conv2d(x, self.weight, self.bias, self.activation)
        y = super().forward(x)
        if self.activation == 'gelu':
            return F.gelu(y)
        if self.activation == 'silu':
            return F.silu(y)
        return y

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, activation={self.activation!r}'


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the one convolution that computes ``bn(conv(x))``
    with ``bn``'s running statistics (eval mode): the output channel o is
    scaled by s_o = gamma_o / sqrt(var_o + eps) and shifted by
    beta_o - mean_o * s_o (plus s_o times the conv's own bias)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def _fused_conv_bn_applies(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """The dispatch rule of :func:`conv_bn_relu`: float32 CUDA inference
    with ``bn`` using running statistics (tests patch it to take the fused
    path on the CPU)."""
    return (not bn.training and bn.running_var is not None
            and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)
            and fp32_cuda_inference(x, *conv.parameters(), *bn.parameters()))


def conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(bn(conv(x)))``. In float32 CUDA inference with ``bn`` in eval
    mode, ``bn`` is folded into the convolution (:func:`fold_batchnorm`) and
    cuDNN runs conv + bias + ReLU as one kernel
    (:func:`mmgroupmamba.ops.conv.conv2d_bias_relu`, channels-last output);
    everything else (training, autocast, the CPU) runs the three modules.

    Shapes: (B, C_in, H, W) -> (B, C_out, H', W').
    """
    if _fused_conv_bn_applies(x, conv, bn):
        weight, bias = fold_batchnorm(conv, bn)
        return conv2d_bias_relu(x, weight, bias, list(conv.stride), list(conv.padding),
                                list(conv.dilation), conv.groups)
    return F.relu(bn(conv(x)))


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32, float64 kept: the scan's SSM parameters (A, D,
    delta bias) stay exact in a float64 model."""
    return t if t.dtype == torch.float64 else t.float()


def init_linear_norm_(m: nn.Module) -> bool:
    """timm's ``_init_weights`` for Linear (trunc_normal std 0.02, bias 0)
    and LayerNorm (1 / 0), the part both official codebases share. Returns
    whether ``m`` was one of them."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    else:
        return False
    return True


def drop_path_rates(rate: float, depths: Sequence[int]) -> List[float]:
    """Linear 0 -> ``rate`` over all blocks (as ``torch.linspace``)."""
    total = sum(depths)
    return [rate * j / (total - 1) if total > 1 else 0.0 for j in range(total)]


def short_keys(keys: Iterable[str], n: int = 20) -> List[str]:
    keys = list(keys)
    return keys if len(keys) <= n else keys[:n] + [f'... ({len(keys) - n} more)']


def load_checkpoint_file(path: str) -> Mapping:
    from ..utils.checkpoint import safe_load
    return safe_load(path, map_location='cpu')


class StagedBackbone(nn.Module):
    """Base of the hierarchical backbones: validates and stores the options
    every backbone takes, and keeps frozen stages and (with ``norm_eval``)
    BatchNorms in eval mode through ``train()``.

    Subclasses build their modules, then call :meth:`_freeze_stages`, and
    implement :meth:`_frozen_modules`.
    """

    def __init__(self, num_stages: int, in_channels: int, out_indices: Union[int, Sequence[int]],
                 frozen_stages: int, norm_eval: bool, with_cp: Union[bool, Sequence[bool]],
                 init_cfg: Optional[Mapping], fp32_gemm: str = 'tf32x3'):
        super().__init__()
        n = num_stages
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        idx = []
        for i in out_indices:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f'out_indices: expected stage indices in [{-n}, {n}), got '
                                 f'{tuple(out_indices)}')
            idx.append(i % n)
        if not idx:
            raise ValueError('out_indices: expected at least one stage index')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= n:
            raise ValueError(f'frozen_stages: expected an int in [-1, {n}], got {frozen_stages!r}')
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels: expected a positive int, got {in_channels!r}')
        if init_cfg is not None and not isinstance(init_cfg, Mapping):
            raise TypeError(f'init_cfg: expected None or a dict, got {type(init_cfg).__name__}')
        if isinstance(with_cp, bool):
            with_cp = (with_cp,) * n
        elif (isinstance(with_cp, (str, bytes)) or not isinstance(with_cp, Sequence)
              or len(with_cp) != n or not all(isinstance(f, bool) for f in with_cp)):
            raise ValueError(f'with_cp: expected a bool or one bool per stage ({n} stages), '
                             f'got {with_cp!r}')
        if fp32_gemm not in FP32_GEMM_MODES:
            raise ValueError(f'fp32_gemm: expected one of {FP32_GEMM_MODES}, got {fp32_gemm!r}')
        self.num_stages = n
        #: float32 GEMM algorithm of the Linear layers (mmgroupmamba.ops.linear)
        self.fp32_gemm = fp32_gemm
        self.out_indices: Tuple[int, ...] = tuple(sorted(set(idx)))
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        #: activation checkpointing, one flag per stage
        self.with_cp: Tuple[bool, ...] = tuple(with_cp)
        self.init_cfg = dict(init_cfg) if init_cfg is not None else None

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'x: expected an image batch of shape (batch, {self.in_channels}, H, W) '
                             f'(in_channels={self.in_channels}), got {got}')

    def _frozen_modules(self) -> List[nn.Module]:
        """The stem when ``frozen_stages >= 0`` plus stages ``0..frozen_stages-1``."""
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'StagedBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- init / pretrained weights, the subclass hooks ---------------------
    #: key prefixes of the backbone's own state (others, e.g. heads, are dropped)
    STATE_PREFIXES: Tuple[str, ...] = ()

    def _random_init(self) -> None:
        """The official random initialisation."""
        raise NotImplementedError

    def _checkpoint_to_our_keys(self, ckpt: Mapping) -> Mapping[str, torch.Tensor]:
        """Unwrap a loaded checkpoint and map foreign (official) keys to ours."""
        raise NotImplementedError

    def _optional_keys(self) -> List[str]:
        """Own keys a checkpoint may lack (new output norms); checkpoint keys
        in this list are dropped when this backbone lacks them."""
        return []

    def init_weights(self) -> None:
        """Official random init, or load ``init_cfg``'s checkpoint
        (``type='Pretrained'``). mmengine calls this on children that have it."""
        cfg = self._pretrained_cfg()
        if cfg is None:
            self._random_init()
        else:
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))

    def load_pretrained(self, checkpoint: Union[str, Mapping], prefix: Optional[str] = None
                        ) -> None:
        """Load a checkpoint (path or loaded dict): ours (a backbone state
        dict, or a model one whose backbone keys start with ``prefix``,
        default ``'backbone.'``) or an official one (auto-converted).

        Raises:
            RuntimeError: missing or unexpected keys (other than
                :meth:`_optional_keys`), or shape mismatches.
        """
        ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
        self._load_backbone_state(
            self._checkpoint_to_our_keys(ckpt),
            checkpoint if isinstance(checkpoint, str) else 'state dict', prefix,
            self.STATE_PREFIXES, self._optional_keys(), f'arch={getattr(self, "arch", None)}')

    def _pretrained_cfg(self) -> Optional[Mapping]:
        """``init_cfg`` if it asks for a checkpoint, None for a random init;
        raises on anything else."""
        cfg = self.init_cfg
        if cfg is None:
            return None
        if cfg.get('type') != 'Pretrained':
            raise ValueError(f"init_cfg: only type='Pretrained' is supported (or None for the "
                             f'official random init), got {cfg!r}')
        if 'checkpoint' not in cfg:
            raise ValueError(f"init_cfg: type='Pretrained' needs a 'checkpoint' path, got {cfg!r}")
        return cfg

    def _load_backbone_state(self, sd: Mapping[str, torch.Tensor], source: str,
                             prefix: Optional[str], own_prefixes: Tuple[str, ...],
                             optional: Collection[str], describe: str) -> None:
        """Strictly load ``sd`` (already in our key names) into this backbone.

        Args:
            sd: a backbone state dict, or a model one whose backbone keys start
                with ``prefix`` (default: ``'backbone.'`` if any key has it).
            own_prefixes: keys outside these (heads, class tails) are dropped.
            optional: own keys the checkpoint may lack (new output norms),
                and checkpoint keys dropped if this backbone lacks them.
            describe: the architecture, for the error message.
        Raises:
            RuntimeError: any other missing or unexpected key.
        """
        name = type(self).__name__
        if prefix is None:
            prefix = 'backbone.' if any(k.startswith('backbone.') for k in sd) else ''
        if prefix:
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if not sd:
                raise RuntimeError(f'{name}.load_pretrained: no key of {source!r} starts with '
                                   f'prefix {prefix!r}')
        sd = {k: v for k, v in sd.items() if k.startswith(own_prefixes)}
        own = self.state_dict()
        sd = {k: v for k, v in sd.items() if k in own or k not in optional}
        missing = [k for k in own if k not in sd and k not in optional]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            raise RuntimeError(
                f'{name}.load_pretrained({source!r}): the checkpoint does not fit {describe}. '
                f'Missing keys: {short_keys(missing)}; unexpected keys: {short_keys(unexpected)}')
        self.load_state_dict(sd, strict=False)


def load_classifier_state(model: nn.Module, checkpoint: Union[str, Mapping],
                          to_our_keys: Callable[[Mapping], Mapping[str, torch.Tensor]],
                          strict: bool, describe: str) -> None:
    """Load a classification checkpoint (path or loaded dict, mapped to our
    keys by ``to_our_keys``) into ``model``; with ``strict`` any missing or
    unexpected key raises a RuntimeError listing them."""
    ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd = to_our_keys(ckpt)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        raise RuntimeError(f'{type(model).__name__}.load_checkpoint: the checkpoint does not fit '
                           f'this model ({describe}). Missing keys: {short_keys(missing)}; '
                           f'unexpected keys: {short_keys(unexpected)}')
    model.load_state_dict(sd, strict=strict)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    """Run ``blocks`` in order, with activation checkpointing per block when
    ``with_cp`` and a gradient is needed."""
    for blk in blocks:
        if with_cp and x.requires_grad:
            x = cp.checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x
