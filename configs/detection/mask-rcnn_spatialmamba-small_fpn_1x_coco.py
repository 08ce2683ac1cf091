# Mask R-CNN + FPN on Spatial-Mamba-S, COCO 1x (upstream: 49.2 / 44.0).
_base_ = './mask-rcnn_spatialmamba-tiny_fpn_1x_coco.py'
pretrained = 'checkpoints/spatialmamba_small.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
