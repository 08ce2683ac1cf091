"""The selective scan as PyTorch custom ops (``torch.ops.mmgroupmamba``).

Two ops, so that autograd, ``torch.compile`` (fake kernels, no graph breaks)
and ``FlopCounterMode`` all see one opaque node per scan:

* ``mmgroupmamba::selective_scan_2d_fwd(u, delta, A, B, C?, D?, z?, delta_bias?,
  directions, delta_softplus, use_triton, out_dtype?) -> (y, last_state, ckpt)``
* ``mmgroupmamba::selective_scan_2d_bwd(dy, dlast?, u, delta, A, B, C?, D?, z?,
  delta_bias?, ckpt, directions, delta_softplus, use_triton) -> 8 gradients``

``y`` is in ``out_dtype`` (default u's), shaped and laid out like u: the maps
(u, delta, z, y) are (batch, dim, H, W) or grouped (batch, G, dim / G, H, W).
Without C, ``y`` is the hidden states (batch, dim, N, H, W) in float32 and
``dy`` their gradient.

``use_triton`` picks the Triton kernels (CUDA, or CPU under
``TRITON_INTERPRET=1``) or the PyTorch reference; ``ckpt`` holds the
chunk-start states the Triton backward recomputes from (empty for the
reference, whose backward re-runs autograd on the reference).

Plain eager calls of the Triton kernels run the two ops' bodies from
:class:`EagerScan` instead, without the custom ops' dispatch (host time, see
there); whatever traces, counts or transforms the call still gets the ops
(:func:`eager_fast_path`).

FLOPs follow the fvcore/VMamba convention (``flops_selective_scan_fn``):
``9 * batch * L * dim * N`` for the recurrence plus ``batch * dim * L`` for
each of the D skip and the z gate, counted as multiply-accumulates the way
fvcore counts them; the backward op is counted as twice the forward. The
states mode (no C) counts ``7 * batch * L * dim * N``, as Spatial-Mamba's
``selective_scan_state_flop_jit`` does.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula

from . import triton_scan
from .dispatch import plain_eager
from .reference import map_shape, selective_scan_2d_ref


def _absent(like: Tensor) -> Tensor:
    """Placeholder for the gradient of an absent optional input."""
    return like.new_empty((0,))


def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Optional[Tensor],
              D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
              directions: List[int], delta_softplus: bool, use_triton: bool,
              out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Directional scan forward; shapes as in :func:`selective_scan_2d`."""
    if use_triton and u.numel() > 0:
        return triton_scan.selective_scan_2d_fwd_triton(u, delta, A, B, C, directions, D, z,
                                                        delta_bias, delta_softplus, out_dtype)
    y, last = selective_scan_2d_ref(u, delta, A, B, C, directions, D=D, z=z,
                                    delta_bias=delta_bias, delta_softplus=delta_softplus,
                                    return_last_state=True, out_dtype=out_dtype)
    sdt = _state_dtype(u, use_triton)
    out = (torch.empty_like(u, dtype=out_dtype) if C is not None
           else u.new_empty(y.shape, dtype=sdt))
    out.copy_(y)
    return out, last.to(sdt), u.new_empty((0,), dtype=torch.float32)


selective_scan_2d_fwd = torch.library.custom_op('mmgroupmamba::selective_scan_2d_fwd',
                                                _scan_fwd, mutates_args=())


def _state_dtype(u: Tensor, use_triton: bool) -> torch.dtype:
    return torch.float64 if (u.dtype == torch.float64 and not use_triton) else torch.float32


@selective_scan_2d_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, directions, delta_softplus, use_triton,
              out_dtype=None):
    batch, dim = map_shape(u)[:2]
    n_state = B.shape[2]
    ckpt = (u.new_empty(triton_scan.ckpt_shape(u, B, directions), dtype=torch.float32)
            if use_triton and u.numel() > 0 else u.new_empty((0,), dtype=torch.float32))
    sdt = _state_dtype(u, use_triton)
    y = (torch.empty_like(u, dtype=out_dtype) if C is not None
         else u.new_empty((batch, dim, n_state) + tuple(u.shape[2:]), dtype=sdt))
    return y, u.new_empty((batch, dim, n_state), dtype=sdt), ckpt


def _scan_bwd(dy: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor,
              B: Tensor, C: Optional[Tensor], D: Optional[Tensor], z: Optional[Tensor],
              delta_bias: Optional[Tensor], ckpt: Tensor, directions: List[int],
              delta_softplus: bool, use_triton: bool) -> List[Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); an absent
    optional input gets an empty tensor."""
    if use_triton and u.numel() > 0:
        grads = triton_scan.selective_scan_2d_bwd_triton(dy, dlast, u, delta, A, B, C, directions,
                                                         ckpt, D, z, delta_bias, delta_softplus)
    else:
        # torch.func.vjp, not torch.autograd: autograd is below us in the
        # dispatcher here, the functorch transform still differentiates.
        ins = (u, delta, A, B, C, D, z, delta_bias)
        idx = [i for i, t in enumerate(ins) if t is not None]

        def ref(*present):
            full = list(ins)
            for i, t in zip(idx, present):
                full[i] = t
            return selective_scan_2d_ref(*full[:5], directions, D=full[5], z=full[6],
                                         delta_bias=full[7], delta_softplus=delta_softplus,
                                         return_last_state=True, out_dtype=dy.dtype)
        (y, last), vjp = torch.func.vjp(ref, *[ins[i] for i in idx])
        dl = torch.zeros_like(last) if dlast is None else dlast.to(last.dtype)
        got = vjp((dy.to(y.dtype), dl))
        grads = [None] * len(ins)
        for i, g in zip(idx, got):
            grads[i] = g
    return [_absent(u) if g is None else g.contiguous() if not use_triton else g for g in grads]


selective_scan_2d_bwd = torch.library.custom_op('mmgroupmamba::selective_scan_2d_bwd',
                                                _scan_bwd, mutates_args=())


@selective_scan_2d_bwd.register_fake
def _bwd_fake(dy, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, directions,
              delta_softplus, use_triton):
    like = (u, delta, A, B, C, D, z, delta_bias)
    # Triton: map-shaped gradients keep their input's layout, per-channel
    # ones are fresh reductions; the reference returns contiguous tensors.
    keep = (True, True, False, True, True, False, True, False) if use_triton else (False,) * 8
    return [_absent(u) if t is None else torch.empty_like(t) if k
            else t.new_empty(t.shape) for t, k in zip(like, keep)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, directions, delta_softplus, use_triton, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.y_dtype = output[0].dtype
    ctx.directions = directions
    ctx.delta_softplus = delta_softplus
    ctx.use_triton = use_triton


def _grads(ctx, dy, dlast, bwd):
    """The inputs' gradients by ``bwd`` (the backward op, or its body)."""
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    if dy is None:
        dy = (torch.zeros_like(u, dtype=ctx.y_dtype) if C is not None
              else u.new_zeros((u.shape[0], u.shape[1], B.shape[2]) + tuple(u.shape[2:]),
                               dtype=_state_dtype(u, ctx.use_triton)))
    grads = bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, ctx.directions,
                ctx.delta_softplus, ctx.use_triton)
    present = (u, delta, A, B, C, D, z, delta_bias)
    out = [g if t is not None else None for g, t in zip(grads, present)]
    return (*out, None, None, None, None)


def _backward(ctx, dy, dlast, dckpt):
    return _grads(ctx, dy, dlast, selective_scan_2d_bwd)


torch.library.register_autograd('mmgroupmamba::selective_scan_2d_fwd', _backward,
                                setup_context=_setup_context)


class EagerScan(torch.autograd.Function):
    """The forward op's autograd, without the custom ops' dispatch: the same
    bodies (``_scan_fwd``, ``_scan_bwd``) called directly.

    A ``torch.library.custom_op`` call goes through the dispatcher, the op's
    Python autograd wrapper and its implementation wrapper. On the H100
    machine a forward + backward of GroupMamba's scan took 1.8-2.6 ms of host
    time through the ops, 10-23% more than through this path, against 30-60
    us of kernels (``tools/benchmark_scan_host.py``, docs/benchmarks.md): in
    eager training the host sets the pace. The entry points
    take this path only where nothing needs to see the op
    (:func:`eager_fast_path`); torch.compile, ``FlopCounterMode``, fake tensors
    and the functorch transforms get the custom op. Not twice
    differentiable, like the op.

    ``EagerScan.apply(u, delta, A, B, C, D, z, delta_bias, directions,
    delta_softplus, use_triton, out_dtype)`` -> (y, last_state, ckpt).
    """

    @staticmethod
    def forward(*args):
        return _scan_fwd(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])
        # Unused outputs' gradients stay None (the custom op's autograd fills
        # them with zeros): no zero dlast to allocate and for the kernel to read.
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast, dckpt):
        return _grads(ctx, dy, dlast, _scan_bwd)


def eager_fast_path(use_triton: bool) -> bool:
    """Whether a scan may run as :class:`EagerScan`: the Triton kernels
    (the reference's host time does not matter) in a plain eager call, one
    that no tracer, mode or transform must see (:func:`.dispatch.plain_eager`)."""
    return use_triton and plain_eager()


def selective_scan_flops(batch: int, dim: int, length: int, n_state: int,
                         with_D: bool = True, with_z: bool = False, with_C: bool = True) -> int:
    """FLOPs of one selective scan, fvcore/VMamba convention (see module doc).

    Args:
        batch, dim, length, n_state: sizes (dim = all channels of the call,
            length = H * W for the 2D op).
        with_D, with_z: whether the skip term and the gate are present.
        with_C: False for the states mode (no observation inside the op).
    """
    flops = (9 if with_C else 7) * batch * length * dim * n_state
    if with_D:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


def _flops_from_shapes(u_shape, B_shape, C_shape, D_shape, z_shape) -> int:
    batch, dim = u_shape[0], u_shape[1]
    length = 1
    for s in u_shape[2:]:
        length *= s
    return selective_scan_flops(batch, dim, length, B_shape[2], D_shape is not None,
                                z_shape is not None, C_shape is not None)


@register_flop_formula(torch.ops.mmgroupmamba.selective_scan_2d_fwd)
def _fwd_flop_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape=None,
                      z_shape=None, delta_bias_shape=None, *args, out_shape=None, **kwargs) -> int:
    return _flops_from_shapes(u_shape, B_shape, C_shape, D_shape, z_shape)


@register_flop_formula(torch.ops.mmgroupmamba.selective_scan_2d_bwd)
def _bwd_flop_formula(dy_shape, dlast_shape, u_shape, delta_shape, A_shape, B_shape, C_shape,
                      D_shape=None, z_shape=None, *args, out_shape=None, **kwargs) -> int:
    return 2 * _flops_from_shapes(u_shape, B_shape, C_shape, D_shape, z_shape)
