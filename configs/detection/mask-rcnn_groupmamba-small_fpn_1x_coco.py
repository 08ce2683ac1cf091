# Mask R-CNN + FPN on GroupMamba-S, COCO 1x. Same recipe as the T config;
# drop_path 0.3 as VMamba-S / Spatial-Mamba-S. Not reported in the paper.
_base_ = './mask-rcnn_groupmamba-tiny_fpn_1x_coco.py'

pretrained = 'checkpoints/groupmamba_small_ema.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 348, 512]))
