# UperNet on GroupMamba-T, ADE20K, 512x512 crops, 160k iterations: the Swin-T
# recipe the paper follows, with the backbone swapped. Paper: 48.6 mIoU
# single-scale / 49.2 multi-scale, 49M params, 955 GFLOPs at 512x2048.
#
# Inherited from the Swin-T config: AdamW lr 6e-5, betas (0.9, 0.999), wd
# 0.01, no decay on `norm` parameters, linear warm-up 1500 iterations then
# poly (power 1) to 160k, batch 16 (8 GPUs x 2), UPerHead (channels 512, pool
# scales 1/2/3/6) + auxiliary FCNHead on stage 3 (weight 0.4), SyncBN heads,
# whole-image test at short side 512.
#
# Multi-scale + flip evaluation is inherited too (mmseg's ADE20K
# `tta_pipeline`, ratios 0.5-1.75 x flip, and `tta_model=SegTTAModel`):
#   python tools/test.py <this config> <checkpoint> --tta
#
# drop_path_rate 0.2 (T), 0.3 (S), 0.5 (B), as VMamba / Spatial-Mamba UperNet
# (the paper gives none for dense tasks).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

# ImageNet-1k checkpoint: official GroupMamba release file or one of our
# mmpretrain checkpoints (see configs/detection/mask-rcnn_groupmamba-tiny_fpn_1x_coco.py).
pretrained = 'checkpoints/groupmamba_tiny_ema.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmgroupmamba.GroupMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 348, 448], num_classes=150),
    auxiliary_head=dict(in_channels=348, num_classes=150))
