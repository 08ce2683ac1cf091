# Spatial-Mamba-B on ImageNet-1k: the T recipe with drop path 0.5 and MESA
# weight 2.0 (upstream: 85.3 top-1).
_base_ = './spatialmamba-tiny_8xb128_in1k.py'
model = dict(mesa_weight=2.0, backbone=dict(arch='base', drop_path_rate=0.5),
             head=dict(in_channels=768))
