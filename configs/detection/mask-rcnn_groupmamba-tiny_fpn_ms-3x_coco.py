# Mask R-CNN + FPN on GroupMamba-T, COCO 3x with multi-scale training: Swin-T's
# ms-crop-3x recipe (DETR-style short side 480-800 / resize-crop-resize,
# 36 epochs, milestones [27, 33], AdamW lr 1e-4 wd 0.05), backbone swapped.
# Not reported in the GroupMamba paper (VMamba / Spatial-Mamba report 3x).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

pretrained = 'checkpoints/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmgroupmamba.GroupMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 348, 448]))
