# GroupMamba-T as the backbone of the dense-prediction configs (Mask R-CNN 1x
# and ms-3x, UperNet): one definition the task configs reference as
# `{{_base_.dense_backbone}}` next to their mmdet:: / mmseg:: recipe base.
# `_delete_=True` replaces the Swin backbone of those recipes entirely.
#
# drop_path_rate 0.2 (T), 0.3 (S), 0.5 (B): the paper gives none for dense
# tasks; these are the values VMamba and Spatial-Mamba use for their T/S/B
# Mask R-CNN and UperNet backbones (and Swin-T's 0.2 for detection).
#
# ImageNet-1k checkpoint: an official GroupMamba release file (e.g.
# groupmamba_tiny_ema.pth, converted on the fly) or one of our mmpretrain
# checkpoints (keys `backbone.*`, found automatically; EMA weights when the
# run used EMAHook). Any path works: `--cfg-options
# model.backbone.init_cfg.checkpoint=...`.
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

dense_backbone = dict(
    _delete_=True,
    type='mmgroupmamba.GroupMamba',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.2,
    frozen_stages=-1,
    norm_eval=False,
    with_cp=False,  # or one flag per stage: (True, False, False, False) recomputes stage 0
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/groupmamba_tiny_ema.pth'))
dense_channels = [64, 128, 348, 448]  # the four stage widths
