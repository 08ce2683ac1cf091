# Mask R-CNN + FPN on Spatial-Mamba-B, COCO 1x (upstream: 50.4 / 45.1).
_base_ = './mask-rcnn_spatialmamba-tiny_fpn_1x_coco.py'
pretrained = 'checkpoints/spatialmamba_base.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.5,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
