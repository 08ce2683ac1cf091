# Mask R-CNN + FPN on Spatial-Mamba-T, COCO 1x: upstream's
# detection/configs/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_tiny.py, i.e.
# the Swin-T 1x recipe (AdamW lr 1e-4, wd 0.05, no decay on `norm` keys,
# MultiStepLR [8, 11], 1333x800, batch 8 x 2) with the backbone swapped.
# Upstream: 47.6 box AP / 42.9 mask AP, 46M params, 261 GFLOPs. The backbone
# (and how its ImageNet checkpoint loads) is in the _base_ backbone file.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    '../_base_/backbones/spatialmamba-tiny_dense.py',
]
model = dict(backbone={{_base_.dense_backbone}}, neck=dict(in_channels={{_base_.dense_channels}}))
