"""The shared selective-scan op (Triton on CUDA, PyTorch reference elsewhere)
and the backbones' inference kernels (depthwise conv, fused conv + bias +
ReLU, fp32 GEMM)."""
from .conv import conv2d_bias_relu
from .depthwise_conv import depthwise_conv2d
from .reference import DIRECTIONS, scan_order, selective_scan_2d_ref, selective_scan_ref
from .library import selective_scan_flops
from .selective_scan import BACKENDS, selective_scan, selective_scan_2d

__all__ = ['DIRECTIONS', 'BACKENDS', 'conv2d_bias_relu', 'depthwise_conv2d', 'scan_order',
           'selective_scan', 'selective_scan_2d', 'selective_scan_flops', 'selective_scan_ref',
           'selective_scan_2d_ref']
