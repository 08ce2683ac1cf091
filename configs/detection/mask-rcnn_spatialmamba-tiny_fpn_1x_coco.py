# Mask R-CNN + FPN on Spatial-Mamba-T, COCO 1x: upstream's
# detection/configs/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_tiny.py, i.e.
# the Swin-T 1x recipe (AdamW lr 1e-4, wd 0.05, no decay on `norm` keys,
# MultiStepLR [8, 11], 1333x800, batch 8 x 2) with the backbone swapped.
# Upstream: 47.6 box AP / 42.9 mask AP, 46M params, 261 GFLOPs.
# Unlike upstream (which inherits Swin's backbone dict without _delete_, so
# Swin's init_cfg and kwargs are silently dropped, and ships `pretrained=""`),
# the ImageNet checkpoint here is loaded strictly through init_cfg: an upstream
# release file (its 'model' entry, converted on the fly) or one of ours.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

pretrained = 'checkpoints/spatialmamba_tiny.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmgroupmamba.SpatialMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
