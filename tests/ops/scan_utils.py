"""Input builders, comparison helpers, a pass-through mode and a loader of
the scan tools shared by the ops tests."""
import importlib.util
import os
import types
from typing import Dict, Optional, Sequence

import torch

from mmgroupmamba.ops import selective_scan_2d
from mmgroupmamba.ops.reference import selective_scan_2d_ref

GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool(name: str) -> types.ModuleType:
    """A script of tools/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PassThroughMode(torch.overrides.TorchFunctionMode):
    """A torch-function mode that changes nothing: with one active the
    package must call its custom ops as ops (what a tracer would need)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def make_inputs(batch: int, dim: int, groups: int, n_state: int, height: int, width: int,
                with_D: bool = True, with_z: bool = True, with_bias: bool = True,
                dtype: torch.dtype = torch.float32, device: str = 'cpu',
                layout: str = 'contiguous', seed: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    """Random scan inputs (leaf tensors requiring grad) in the given layout.

    layout: 'contiguous'; 'channels_last' (u, delta, z channels_last, B/C
    with the state axis innermost); 'strided' (every map a strided slice of a
    larger buffer, B/C permuted views); 'grouped' (u, delta, z grouped maps
    (batch, G, dim / G, H, W), views of a (G, batch, H, W, dim / G) buffer:
    each group's map contiguous; B/C as 'channels_last').
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def as_map(x):
        if layout == 'channels_last':
            return x.contiguous(memory_format=torch.channels_last)
        if layout == 'grouped':
            b, d, h, w = x.shape
            buf = x.reshape(b, groups, d // groups, h, w).permute(1, 0, 3, 4, 2).contiguous()
            return buf.permute(1, 0, 4, 2, 3)
        if layout == 'strided':
            big = torch.zeros(x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3] + 3, dtype=dtype)
            big[:, ::2, :, 1:1 + x.shape[3]] = x
            return big[:, ::2, :, 1:1 + x.shape[3]]
        return x

    def as_bc(x):
        if layout in ('channels_last', 'strided', 'grouped'):
            return x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
        return x

    shape = (batch, dim, height, width)
    bc = (batch, groups, n_state, height, width)
    t = {
        'u': as_map(rnd(*shape)),
        'delta': as_map(rnd(*shape, scale=0.5)),
        'A': -(torch.rand(dim, n_state, generator=gen) + 0.2),
        'B': as_bc(rnd(*bc)),
        'C': as_bc(rnd(*bc)),
        'D': torch.randn(dim, generator=gen) if with_D else None,
        'z': as_map(rnd(*shape)) if with_z else None,
        'delta_bias': torch.randn(dim, generator=gen) * 0.3 if with_bias else None,
    }
    out = {}
    for k, v in t.items():
        out[k] = None if v is None else v.to(device).detach().requires_grad_(True)
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-3) -> float:
    """||a - b|| / max(||b||, floor): relative, absolute where b is ~0 (e.g.
    dA at L = 1, where the state before the only step is zero)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(floor)).item()


def run_scan(inp: Dict[str, Optional[torch.Tensor]], directions: Sequence[str], softplus: bool,
             backend: Optional[str], reference64: bool = False, seed: int = 1,
             states: bool = False, out_dtype: Optional[torch.dtype] = None,
             dy_like_y: bool = False):
    """Forward + backward with random output gradients.

    Returns (y, last, {name: grad}); with ``reference64`` it runs the
    reference on float64 copies of the inputs (the ground truth). With
    ``states`` the op runs without C, D and z and y is the hidden states.
    The output gradient is contiguous, or with ``dy_like_y`` laid out like y
    (the same values): the kernels pick their tile order from the maps'
    strides, the gradient's included.
    """
    if states:
        inp = {k: (None if k in ('C', 'D', 'z') else v) for k, v in inp.items()}
    if reference64:
        ins = {k: None if v is None else v.detach().double().cpu().requires_grad_(True)
               for k, v in inp.items()}
        y, last = selective_scan_2d_ref(ins['u'], ins['delta'], ins['A'], ins['B'], ins['C'],
                                        directions, D=ins['D'], z=ins['z'],
                                        delta_bias=ins['delta_bias'], delta_softplus=softplus,
                                        return_last_state=True)
    else:
        ins = inp
        for v in ins.values():
            if v is not None:
                v.grad = None
        y, last = selective_scan_2d(ins['u'], ins['delta'], ins['A'], ins['B'], ins['C'],
                                    directions, D=ins['D'], z=ins['z'],
                                    delta_bias=ins['delta_bias'], delta_softplus=softplus,
                                    return_last_state=True, backend=backend,
                                    out_dtype=out_dtype)
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen).to(y)
    if dy_like_y:
        dy = torch.empty_like(y).copy_(dy)
    dlast = torch.randn(last.shape, generator=gen).to(last)
    ((y * dy).sum() + (last * dlast).sum()).backward()
    grads = {k: v.grad for k, v in ins.items() if v is not None}
    return y.detach(), last.detach(), grads
