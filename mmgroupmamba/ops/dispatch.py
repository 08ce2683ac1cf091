"""When the backbones take their own kernels, and how a custom op is called.

:func:`fp32_cuda_inference` is the one condition under which the backbones
take their float32 inference kernels (the depthwise-conv kernel, the fused
stem conv, the grouped batched GEMMs): each rule adds its own checks to it.

:func:`plain_eager` and :func:`op_or_body`: every kernel of the package is a
``torch.library`` custom op, so that ``torch.compile``, ``FlopCounterMode``
and fake tensors see one node. A custom op's call passes the dispatcher and
Python wrappers (10-120 us of host time measured for the scan's forward on
the H100 machine); where nothing needs the op (plain eager calls) the op's
own body is called instead (docs/benchmarks.md, "Host cost of a scan call").
"""
import functools
from typing import Callable

import torch
import torch.fx
from torch import Tensor


def fp32_cuda_inference(x: Tensor, *params: Tensor) -> bool:
    """``x`` is a float32 CUDA tensor outside autocast, ``params`` are float32,
    and none of them needs a gradient (``no_grad``/``inference_mode``, or
    nothing requires one). Under autocast the plain modules run, so that
    their outputs keep autocast's dtype."""
    return (x.is_cuda and x.dtype == torch.float32
            and all(p.dtype == torch.float32 for p in params)
            and not torch.is_autocast_enabled('cuda')
            and not (torch.is_grad_enabled()
                     and (x.requires_grad or any(p.requires_grad for p in params))))


# fx's symbolic tracing (newer torch names it apart from export, whose
# is_fx_tracing also logs a warning)
_fx_tracing = getattr(torch.fx._symbolic_trace, 'is_fx_symbolic_tracing',
                      torch.fx._symbolic_trace.is_fx_tracing)


def plain_eager() -> bool:
    """Whether nothing needs to see the package's custom ops as ops: no
    ``torch.compile``, ``torch.jit.trace`` or ``torch.fx.symbolic_trace``
    tracing, no TorchDispatchMode (``FlopCounterMode``, fake tensors), no
    TorchFunctionMode, no functorch transform (vmap, grad)."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not _fx_tracing()
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active())


def _needs_grad(args, kwargs) -> bool:
    if not torch.is_grad_enabled():
        return False
    for a in (*args, *kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, Tensor) and t.requires_grad:
                return True
    return False


def op_or_body(op: Callable, body: Callable) -> Callable:
    """A function with ``body``'s signature that calls ``body`` (the custom
    op ``op``'s implementation) in :func:`plain_eager` calls that need no
    gradient, else ``op`` (whose autograd, fake kernel and FLOP formula then
    apply)."""
    @functools.wraps(body)
    def call(*args, **kwargs):
        if plain_eager() and not _needs_grad(args, kwargs):
            return body(*args, **kwargs)
        return op(*args, **kwargs)
    return call


__all__ = ['fp32_cuda_inference', 'op_or_body', 'plain_eager']
