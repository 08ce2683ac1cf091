# Spatial-Mamba-S on ImageNet-1k: the T recipe with drop path 0.3 and MESA
# weight 1.5 (upstream: 84.6 top-1).
_base_ = './spatialmamba-tiny_8xb128_in1k.py'
model = dict(mesa_weight=1.5, backbone=dict(arch='small', drop_path_rate=0.3))
