# Mask R-CNN + FPN on GroupMamba-B, COCO 1x. Same recipe as the T config;
# drop_path 0.5 as VMamba-B / Spatial-Mamba-B. Not reported in the paper.
_base_ = './mask-rcnn_groupmamba-tiny_fpn_1x_coco.py'

pretrained = 'checkpoints/groupmamba_base_ema.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 424, 512]))
