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
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/backbones/groupmamba-tiny_dense.py',
]
model = dict(
    backbone={{_base_.dense_backbone}},
    decode_head=dict(in_channels={{_base_.dense_channels}}, num_classes=150),
    auxiliary_head=dict(in_channels=348, num_classes=150))
