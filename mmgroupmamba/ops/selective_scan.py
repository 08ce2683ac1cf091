"""Public selective-scan entry points: argument checks and backend dispatch.

``selective_scan`` has the contract of mamba_ssm's ``selective_scan_fn``
(plus ``C=None``, which returns the hidden states, as Spatial-Mamba's
``selective_scan_cuda_oflex_rh`` does);
``selective_scan_2d`` scans a feature map with one direction per channel
group, reading and writing the map in its own layout (no flipped or transposed
copies). ``selective_scan`` is the 2D op on a 1 x L map.

Backends: ``'reference'`` (pure PyTorch, :mod:`.reference`) and ``'triton'``
(:mod:`.triton_scan`). ``backend=None`` picks Triton for CUDA tensors and the
reference otherwise. Both run behind the custom op
``torch.ops.mmgroupmamba.selective_scan_2d_fwd`` (:mod:`.library`); plain
eager calls of the Triton kernels run its body without the op's dispatch
(``library.EagerScan``).
"""
import os
from typing import Optional, Sequence, Tuple, Union

import torch

from . import library  # (also registers torch.ops.mmgroupmamba.*)
from .reference import DIRECTIONS, direction_code, map_shape

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ('reference', 'triton')


def _check_map_args(u, delta, A, B, C, D, z, delta_bias, directions, check_finite):
    """Validate the 2D op's arguments (logical shapes, channels-first view;
    the maps u, delta, z as (batch, dim, H, W) or grouped (batch, G, dim / G,
    H, W)).

    Raises ValueError/TypeError naming the offending argument and the
    expected form.
    """
    if not isinstance(u, torch.Tensor) or u.dim() not in (4, 5):
        raise ValueError(f'u: expected a (batch, dim, H, W) or (batch, G, dim / G, H, W) tensor, '
                         f'got {tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}')
    if u.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'u: expected a floating dtype {_FLOAT_DTYPES}, got {u.dtype}')
    grouped = u.dim() == 5
    batch, dim, height, width = map_shape(u)
    if not isinstance(B, torch.Tensor):
        raise ValueError('B: required, a tensor of shape (batch, G, N, H, W)')
    if C is None and (D is not None or z is not None):
        raise ValueError('D, z: must be None when C is None (the hidden states are returned '
                         'before the observation y = C h + D u and its gate)')
    if B.dim() != 5:
        raise ValueError(f'B: expected (batch, G, N, H, W), got {tuple(B.shape)}')
    groups, n_state = B.shape[1], B.shape[2]
    if len(directions) != groups:
        raise ValueError(f'directions: expected one direction per group of B/C (G={groups}), '
                         f'got {len(directions)}')
    for d in directions:
        direction_code(d)
    if groups == 0 or dim % groups:
        raise ValueError(f'B: the number of groups G={groups} must divide dim={dim} (u.shape[1])')
    if grouped and u.shape[1] != groups:
        raise ValueError(f'u: a grouped map (batch, G, dim / G, H, W) needs G = {groups} (B\'s '
                         f'groups), got u {tuple(u.shape)}')
    if grouped and C is None:
        raise ValueError('u: grouped maps (batch, G, dim / G, H, W) need C (the states mode '
                         'takes (batch, dim, H, W) maps)')
    expected = {
        'delta': (u.shape, delta),
        'z': (u.shape, z),
        'A': ((dim, n_state), A),
        'B': ((batch, groups, n_state, height, width), B),
        'C': ((batch, groups, n_state, height, width), C),
        'D': ((dim,), D),
        'delta_bias': ((dim,), delta_bias),
    }
    for name, (shape, t) in expected.items():
        if t is None:
            if name in ('delta', 'A'):
                raise ValueError(f'{name}: required, expected shape {tuple(shape)}')
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name}: expected a tensor of shape {tuple(shape)}, got {type(t).__name__}')
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f'{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'{name}: expected a floating dtype, got {t.dtype}')
        if t.device != u.device:
            raise ValueError(f'{name}: expected a tensor on {u.device} (the device of u), got {t.device}')
        if check_finite and not bool(torch.isfinite(t).all()):
            raise ValueError(f'{name}: contains NaN or Inf (check_finite=True)')
    # fp16/bf16/fp32 maps may mix (each is upcast on load, the math is
    # float32); float64 selects the float64 reference math, so all or none.
    maps = [u.dtype, delta.dtype] + ([] if z is None else [z.dtype])
    if torch.float64 in maps and len(set(maps)) > 1:
        raise TypeError('delta, z: expected float64 for all of u, delta, z or for none, got '
                        f'u {u.dtype}, delta {delta.dtype}'
                        + ('' if z is None else f', z {z.dtype}'))
    if check_finite and not bool(torch.isfinite(u).all()):
        raise ValueError('u: contains NaN or Inf (check_finite=True)')


def _pick_backend(backend: Optional[str], device: torch.device) -> str:
    if backend is None:
        return 'triton' if device.type == 'cuda' else 'reference'
    if backend not in BACKENDS:
        raise ValueError(f'backend: expected one of {BACKENDS} or None, got {backend!r}')
    return backend


def selective_scan_2d(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                      B: torch.Tensor, C: Optional[torch.Tensor],
                      directions: Sequence[Union[str, int]],
                      D: Optional[torch.Tensor] = None,
                      z: Optional[torch.Tensor] = None,
                      delta_bias: Optional[torch.Tensor] = None,
                      delta_softplus: bool = False,
                      return_last_state: bool = False,
                      channels_last: bool = False,
                      backend: Optional[str] = None,
                      check_finite: bool = False,
                      out_dtype: Optional[torch.dtype] = None,
                      ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan of a feature map, one scan direction per channel group.

    Args:
        u, delta, z: (batch, dim, H, W), or (batch, H, W, dim) with
            ``channels_last=True``. Any strides. Or grouped maps: (batch, G,
            dim / G, H, W), or (batch, H, W, G, dim / G) with
            ``channels_last``, whose groups may lie anywhere in memory: with
            each group's map contiguous (a (G, batch, H, W, dim / G) buffer)
            every cache line belongs to one scan direction: GroupMamba-T's
            stage 1 (four groups, four directions) then runs its forward in
            a fifth less time and its backward in a seventh less than from
            one (batch, H, W, dim) buffer (docs/benchmarks.md).
        A: (dim, N). D, delta_bias: (dim,).
        B, C: (batch, G, N, H, W), or (batch, H, W, G, N) with
            ``channels_last=True``; group g drives channels
            [g*dim/G, (g+1)*dim/G) and scans in ``directions[g]``.
            ``C=None`` returns the hidden states instead of y (D and z must
            then be None).
        directions: G entries of :data:`DIRECTIONS` ('lr', 'tb', 'rl', 'bt').
        check_finite: raise if any input holds NaN/Inf (costs a sync).
        out_dtype: dtype of y (default u's). The state and the arithmetic are
            float32 whatever the inputs, so fp16/bf16 inputs with
            ``out_dtype=torch.float32`` give exactly what upcasting them
            first would, without float32 copies (or their memory for the
            backward). Not allowed with ``C=None`` (the states are float32).
    Returns:
        y in u's shape and layout and ``out_dtype``, or with ``C=None`` the states
        (batch, dim, N, H, W) (``channels_last``: (batch, H, W, dim, N)) in
        float32; with ``return_last_state`` also the final state
        (batch, dim, N) in float32.
    """
    if channels_last:
        if u.dim() not in (4, 5) or B.dim() != 5:
            raise ValueError('u, B: with channels_last=True expected u (batch, H, W, dim) or '
                             '(batch, H, W, G, dim / G) and B, C (batch, H, W, G, N), got u '
                             f'{tuple(u.shape)}, B {tuple(B.shape)}')
        for name, t in (('delta', delta), ('z', z)):
            if isinstance(t, torch.Tensor) and t.dim() != u.dim():
                raise ValueError(f'{name}: expected the shape of u {tuple(u.shape)}, got '
                                 f'{tuple(t.shape)}')
        to_first_bc = (lambda t: None if t is None else t.permute(0, 3, 4, 1, 2))
        to_first = (to_first_bc if u.dim() == 5
                    else (lambda t: None if t is None else t.permute(0, 3, 1, 2)))
        out = selective_scan_2d(to_first(u), to_first(delta), A, to_first_bc(B), to_first_bc(C),
                                directions, D=D, z=to_first(z), delta_bias=delta_bias,
                                delta_softplus=delta_softplus,
                                return_last_state=return_last_state, backend=backend,
                                check_finite=check_finite, out_dtype=out_dtype)
        back = ((lambda t: t.permute(0, 2, 3, 1)) if C is not None and u.dim() == 4
                else (lambda t: t.permute(0, 3, 4, 1, 2)))
        return (back(out[0]), out[1]) if return_last_state else back(out)
    _check_map_args(u, delta, A, B, C, D, z, delta_bias, directions, check_finite)
    if out_dtype is not None and (C is None or out_dtype not in _FLOAT_DTYPES):
        raise ValueError(f'out_dtype: expected None or one of {_FLOAT_DTYPES} (and C given: the '
                         f'states mode always returns float32), got {out_dtype!r}'
                         + (' with C=None' if C is None else ''))
    codes = [direction_code(d) for d in directions]
    use_triton = _pick_backend(backend, u.device) == 'triton'
    if use_triton and not u.is_cuda and os.environ.get('TRITON_INTERPRET', '0') != '1':
        raise ValueError(f'backend: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), '
                         f'got u on {u.device}')
    # One custom op for both backends: autograd, torch.compile and the FLOP
    # counter see the same node whichever implementation runs. Plain eager
    # calls of the kernels skip its dispatch (the same bodies, see EagerScan).
    op = (library.EagerScan.apply if library.eager_fast_path(use_triton)
          else torch.ops.mmgroupmamba.selective_scan_2d_fwd)
    y, last, _ = op(u, delta, A, B, C, D, z, delta_bias, codes, bool(delta_softplus), use_triton,
                    out_dtype)
    return (y, last) if return_last_state else y


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                   B: torch.Tensor, C: Optional[torch.Tensor],
                   D: Optional[torch.Tensor] = None,
                   z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = False,
                   return_last_state: bool = False,
                   backend: Optional[str] = None,
                   check_finite: bool = False,
                   out_dtype: Optional[torch.dtype] = None,
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Drop-in for mamba_ssm's ``selective_scan_fn``.

    Args:
        u, delta, z: (batch, dim, L). A: (dim, N). D, delta_bias: (dim,).
        B, C: (batch, N, L) or grouped (batch, G, N, L), dim % G == 0.
            ``C=None`` returns the hidden states (D and z must be None).
        out_dtype: as in :func:`selective_scan_2d`.
    Returns:
        y (batch, dim, L) in ``out_dtype`` (default u's), or with ``C=None`` the states
        (batch, dim, N, L) in float32 (and the last state (batch, dim, N)).
    """
    for name, t in (('u', u), ('delta', delta)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f'{name}: expected a (batch, dim, L) tensor, got '
                             f'{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}')
    for name, t in (('B', B), ('C', C)):
        if name == 'C' and t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() not in (3, 4):
            raise ValueError(f'{name}: expected (batch, N, L) or (batch, G, N, L), got '
                             f'{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}')
    if C is not None and B.dim() != C.dim():
        raise ValueError(f'B, C: expected the same form, got B {tuple(B.shape)} and C {tuple(C.shape)}')
    grouped = (lambda t: None if t is None else t.unsqueeze(1) if t.dim() == 3 else t)
    B, C = grouped(B), grouped(C)
    as_map = (lambda t: None if t is None else t.unsqueeze(2))  # (b, k, L) -> (b, k, 1, L)
    out = selective_scan_2d(as_map(u), as_map(delta), A, B.unsqueeze(3),
                            None if C is None else C.unsqueeze(3),
                            ('lr',) * B.shape[1], D=D, z=as_map(z), delta_bias=delta_bias,
                            delta_softplus=delta_softplus, return_last_state=return_last_state,
                            backend=backend, check_finite=check_finite, out_dtype=out_dtype)
    squeeze = 2 if C is not None else 3  # the map's H = 1 axis
    if return_last_state:
        return out[0].squeeze(squeeze), out[1]
    return out.squeeze(squeeze)


__all__ = ['selective_scan', 'selective_scan_2d', 'DIRECTIONS', 'BACKENDS']
