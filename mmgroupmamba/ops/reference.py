"""Pure-PyTorch selective scan: the numerical reference and the CPU path.

The recurrence (Mamba S6), per batch row ``b``, channel ``d`` and state ``n``::

    delta_t = softplus(delta_t + delta_bias)            (if delta_softplus)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t
    y_t     = y_t * silu(z_t)                           (if z is given)

With ``C=None`` the op returns the hidden states ``h_t`` themselves (float32,
float64 for float64 inputs) instead of ``y``: Spatial-Mamba fuses them over
the 2D neighbourhood before applying ``C`` (and ``D``) itself.

Instead of a Python loop over ``L`` steps (slow on CPU, and a deep autograd
graph) the sequence is cut into chunks of ``CHUNK`` steps. Inside a chunk the
state is a masked weighted sum ``h_t = sum_{s<=t} exp(S_t - S_s) dBu_s`` with
``S`` the in-chunk cumulative sum of ``delta*A``; the exponent is a
*difference* of cumulative sums, masked to ``-inf`` above the diagonal before
``exp``, so no decay is ever formed as ``exp(cumsum)`` followed by a division
(which overflows). Chunks are then chained by a short loop that carries the
state. Autograd differentiates this directly, so the reference has gradients
for every input and ``torch.autograd.gradcheck`` runs on it in float64.

Everything is computed in float32 (float64 for float64 inputs) and cast back to
the input dtype, like the kernels.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

#: In-chunk work grows with CHUNK (a CHUNK x CHUNK decay matrix per step),
#: the chunk-chaining loop with L / CHUNK: 8 was fastest on CPU for the
#: GroupMamba shapes (a T training step at 64x64: 1.15 s vs 3.4 s with 32).
CHUNK = 8

#: Scan directions of the 2D entry point. Positions are row-major flat indices
#: ``p = h * W + w`` of the map; step ``t`` of the sequence reads position
#: ``order[t]``.
#:   'lr': row-major, rows top to bottom, each left to right (p = t)
#:   'tb': column-major, columns left to right, each top to bottom
#:   'rl': the reverse of 'lr' (starts bottom-right, right to left)
#:   'bt': the reverse of 'tb' (starts bottom-right, bottom to top)
DIRECTIONS = ('lr', 'tb', 'rl', 'bt')


def direction_code(direction: Union[str, int]) -> int:
    """Map a direction name (or its index in :data:`DIRECTIONS`) to its index."""
    if isinstance(direction, int) and 0 <= direction < len(DIRECTIONS):
        return direction
    if isinstance(direction, str) and direction in DIRECTIONS:
        return DIRECTIONS.index(direction)
    raise ValueError(f'directions: unknown direction {direction!r}; expected one of '
                     f'{DIRECTIONS} (or their indices 0-3)')


def scan_order(direction: Union[str, int], height: int, width: int,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """Row-major positions visited by a scan, as a LongTensor of length H*W."""
    code = direction_code(direction)
    idx = torch.arange(height * width, device=device)
    if code in (1, 3):  # column-major: step t visits (h, w) = (t % H, t // H)
        idx = (idx % height) * width + idx // height
    if code in (2, 3):
        idx = idx.flip(0)
    return idx


def map_shape(u: torch.Tensor) -> Tuple[int, int, int, int]:
    """(batch, dim, H, W) of a map given as (batch, dim, H, W) or grouped,
    (batch, G, dim / G, H, W)."""
    if u.dim() == 5:
        return u.shape[0], u.shape[1] * u.shape[2], u.shape[3], u.shape[4]
    return tuple(u.shape)


def _expand_groups(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, dim, N, L), group g serving
    channels [g*dim/G, (g+1)*dim/G)."""
    if bc.dim() == 3:
        return bc.unsqueeze(1).expand(-1, dim, -1, -1)
    groups = bc.shape[1]
    return bc.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                       B: torch.Tensor, C: Optional[torch.Tensor],
                       D: Optional[torch.Tensor] = None,
                       z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None,
                       delta_softplus: bool = False,
                       return_last_state: bool = False,
                       out_dtype: Optional[torch.dtype] = None,
                       ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan over the last axis.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N).
        B, C: (batch, N, L) or grouped (batch, G, N, L) with dim % G == 0.
            ``C=None`` returns the hidden states (then D and z must be None).
        D, delta_bias: (dim,) or None.
        z: (batch, dim, L) or None; the output is gated by ``silu(z)``.
        out_dtype: dtype of y (default u's); the math runs in float32
            (float64 for float64 inputs) whatever the input dtypes.
    Returns:
        y (batch, dim, L) in ``out_dtype``, or with ``C=None`` the states
        (batch, dim, N, L) in float32 (float64 for float64 inputs); with
        ``return_last_state`` also the final state (batch, dim, N) in that
        state dtype.
    """
    if C is None and (D is not None or z is not None):
        raise ValueError('D, z: must be None when C is None (the states are returned before '
                         'the observation y = C h + D u and its gate)')
    out_dtype = u.dtype if out_dtype is None else out_dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    n_state = A.shape[1]
    u_, dt = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bx = _expand_groups(B.to(cdt), dim)  # (b, d, N, L)

    # Pad L to a multiple of the chunk; padded steps have delta = 0, which
    # leaves the state unchanged (decay 1, no input).
    n_chunks = -(-length // CHUNK)
    pad = n_chunks * CHUNK - length
    dA = dt[:, :, :, None] * A.to(cdt)[None, :, None, :]                       # (b, d, L, N)
    dBu = (dt * u_)[:, :, :, None] * Bx.transpose(2, 3)                         # (b, d, L, N)
    if pad:
        dA = F.pad(dA, (0, 0, 0, pad))
        dBu = F.pad(dBu, (0, 0, 0, pad))
    dA = dA.view(batch, dim, n_chunks, CHUNK, n_state)
    dBu = dBu.view(batch, dim, n_chunks, CHUNK, n_state)

    cum = dA.cumsum(dim=3)                                                      # S_t in chunk
    diff = cum[:, :, :, :, None, :] - cum[:, :, :, None, :, :]                  # S_t - S_s
    causal = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=u.device).tril()
    # Decays below exp(floor) are dropped to exactly 0: they are far below the
    # dtype's resolution, and as subnormals they make CPU arithmetic ~100x slower.
    floor = -60.0 if cdt == torch.float32 else -700.0
    diff = diff.masked_fill(~causal[:, :, None] | (diff < floor), float('-inf'))
    cum_decay = cum.masked_fill(cum < floor, float('-inf')).exp()                # exp(S_t)
    h_intra = (diff.exp() * dBu[:, :, :, None, :, :]).sum(dim=4)                # (b,d,c,T,N)

    # Chain the chunks: h_t = h_intra_t + exp(S_t) * h_(chunk start).
    carry = u_.new_zeros(batch, dim, n_state)
    states = []
    for c in range(n_chunks):
        h_c = h_intra[:, :, c] + cum_decay[:, :, c] * carry[:, :, None, :]
        states.append(h_c)
        carry = h_c[:, :, -1]
    h = torch.stack(states, dim=2).view(batch, dim, n_chunks * CHUNK, n_state)[:, :, :length]

    last = h[:, :, -1] if length > 0 else carry
    if C is None:
        states = h.transpose(2, 3)
        return (states, last) if return_last_state else states
    y = (h * _expand_groups(C.to(cdt), dim).transpose(2, 3)).sum(dim=-1)
    if D is not None:
        y = y + D.to(cdt)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(out_dtype)
    return (y, last) if return_last_state else y


def selective_scan_2d_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                          B: torch.Tensor, C: Optional[torch.Tensor],
                          directions: Sequence[Union[str, int]],
                          D: Optional[torch.Tensor] = None,
                          z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None,
                          delta_softplus: bool = False,
                          return_last_state: bool = False,
                          out_dtype: Optional[torch.dtype] = None):
    """Directional scan of a feature map, by explicit gather/scatter copies.

    Args:
        u, delta, z: (batch, dim, H, W), or grouped (batch, G, dim / G, H,
            W) (y then takes that shape; with C given).
        A: (dim, N); D, delta_bias: (dim,).
        B, C: (batch, G, N, H, W), group g drives channels [g*dim/G, (g+1)*dim/G).
            ``C=None``: return the hidden states.
        directions: G directions (see :data:`DIRECTIONS`), one per group.
        out_dtype: dtype of y (default u's).
    Returns:
        y (batch, dim, H, W) (or the states (batch, dim, N, H, W) when C is
        None) with every output written back at the pixel it was computed
        for; with ``return_last_state`` also (batch, dim, N).
    """
    map_shape = u.shape
    if u.dim() == 5:  # grouped maps: the same scan on (batch, dim, H, W) copies
        u, delta = u.flatten(1, 2), delta.flatten(1, 2)
        z = None if z is None else z.flatten(1, 2)
    batch, dim, height, width = u.shape
    groups = B.shape[1]
    per = dim // groups
    length = height * width
    orders = [scan_order(d, height, width, u.device) for d in directions]
    # Channel c is read in the order of its group.
    chan_order = torch.stack([orders[c // per] for c in range(dim)])             # (dim, L)
    grp_order = torch.stack(orders)                                              # (G, L)

    def seq(x, order):  # (b, k, H, W) -> (b, k, L) in scan order
        flat = x.reshape(x.shape[0], x.shape[1], length)
        return flat.gather(2, order.expand(x.shape[0], -1, -1))

    def seq_bc(x):  # (b, G, N, H, W) -> (b, G, N, L)
        flat = x.reshape(batch, groups, -1, length)
        idx = grp_order[None, :, None, :].expand(batch, -1, flat.shape[2], -1)
        return flat.gather(3, idx)

    out = selective_scan_ref(seq(u, chan_order), seq(delta, chan_order), A, seq_bc(B),
                             None if C is None else seq_bc(C),
                             D=D, z=None if z is None else seq(z, chan_order),
                             delta_bias=delta_bias, delta_softplus=delta_softplus,
                             return_last_state=return_last_state, out_dtype=out_dtype)
    y, last = (out if return_last_state else (out, None))
    inverse = chan_order.argsort(dim=1)                                          # pixel -> step
    if C is None:  # states (b, d, N, L)
        n_state = y.shape[2]
        y_map = y.gather(3, inverse[None, :, None, :].expand(batch, -1, n_state, -1)).view(
            batch, dim, n_state, height, width)
    else:
        y_map = y.gather(2, inverse.expand(batch, -1, -1)).view(map_shape)
    return (y_map, last) if return_last_state else y_map
