# Mask R-CNN + FPN on Spatial-Mamba-S, COCO 3x multi-scale (upstream: 50.5 / 44.6).
_base_ = './mask-rcnn_spatialmamba-tiny_fpn_ms-3x_coco.py'
pretrained = 'checkpoints/spatialmamba_small.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
