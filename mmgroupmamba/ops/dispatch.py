"""The one condition under which the backbones take their float32 inference
kernels (the depthwise-conv kernel, the fused stem conv, the grouped batched
GEMMs): each rule adds its own checks to :func:`fp32_cuda_inference`."""
import torch
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


__all__ = ['fp32_cuda_inference']
