# Mask R-CNN + FPN on Spatial-Mamba-T on the bundled synthetic COCO set: the
# data, schedule and head settings of mask-rcnn_groupmamba-tiny_fpn_demo.py
# with the backbone swapped (random init, no download).
_base_ = './mask-rcnn_groupmamba-tiny_fpn_demo.py'

model = dict(
    backbone=dict(_delete_=True, type='mmgroupmamba.SpatialMamba', arch='tiny',
                  out_indices=(0, 1, 2, 3), drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]))
