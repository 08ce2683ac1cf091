# Mask R-CNN + FPN on Spatial-Mamba-T, COCO 3x with multi-scale training:
# Swin-T's ms-crop-3x recipe (36 epochs, milestones [27, 33]) with the
# backbone swapped, as upstream's *_tiny_3x.py (upstream: 49.3 / 43.6).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../_base_/backbones/spatialmamba-tiny_dense.py',
]
model = dict(backbone={{_base_.dense_backbone}}, neck=dict(in_channels={{_base_.dense_channels}}))
