# Mask R-CNN + FPN on Spatial-Mamba-T, COCO 3x with multi-scale training:
# Swin-T's ms-crop-3x recipe (36 epochs, milestones [27, 33]) with the
# backbone swapped, as upstream's *_tiny_3x.py (upstream: 49.3 / 43.6).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

pretrained = 'checkpoints/spatialmamba_tiny.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmgroupmamba.SpatialMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
