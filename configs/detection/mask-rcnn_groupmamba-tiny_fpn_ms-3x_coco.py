# Mask R-CNN + FPN on GroupMamba-T, COCO 3x with multi-scale training: Swin-T's
# ms-crop-3x recipe (DETR-style short side 480-800 / resize-crop-resize,
# 36 epochs, milestones [27, 33], AdamW lr 1e-4 wd 0.05), backbone swapped.
# Not reported in the GroupMamba paper (VMamba / Spatial-Mamba report 3x).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../_base_/backbones/groupmamba-tiny_dense.py',
]
model = dict(backbone={{_base_.dense_backbone}}, neck=dict(in_channels={{_base_.dense_channels}}))
