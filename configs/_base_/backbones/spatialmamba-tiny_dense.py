# Spatial-Mamba-T as the backbone of the dense-prediction configs (Mask R-CNN
# 1x and ms-3x, UperNet), referenced as `{{_base_.dense_backbone}}`.
# `_delete_=True` replaces the Swin backbone of the recipes entirely. Upstream
# inherits Swin's backbone dict without it, so Swin's init_cfg and keyword
# arguments are silently dropped there, and ships `pretrained=""`; here the
# ImageNet checkpoint is loaded strictly through init_cfg: an upstream release
# file (its 'model' entry, converted on the fly) or one of ours.
# drop_path_rate 0.2 / 0.3 / 0.5 for T / S / B, as upstream.
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

dense_backbone = dict(
    _delete_=True,
    type='mmgroupmamba.SpatialMamba',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.2,
    frozen_stages=-1,
    norm_eval=False,
    with_cp=False,  # or one flag per stage: (True, False, False, False) recomputes stage 0
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatialmamba_tiny.pth'))
dense_channels = [64, 128, 256, 512]  # the four stage widths
