# UperNet on Spatial-Mamba-T, ADE20K 512x512, 160k iterations: upstream's
# segmentation/configs/spatialmamba/upernet_spatialmamba_4xb4-160k_ade20k-512x512_tiny.py,
# i.e. the Swin-T recipe (AdamW lr 6e-5, wd 0.01, 1500-iter warm-up, poly,
# batch 8 x 2 -- upstream's file name says 4x4 but its batch_size=4 line is
# commented out) with the backbone swapped. Upstream: 48.6 mIoU single-scale,
# 49.4 multi-scale, 57M params, 936 GFLOPs.
#
# Multi-scale + flip test as upstream's `--tta`: ratios 0.75 / 1.0 / 1.25 of
# (2048, 512) x flip (not mmseg's usual 0.5-1.75):
#   python tools/test.py <this config> <checkpoint> --tta
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/backbones/spatialmamba-tiny_dense.py',
]
model = dict(
    backbone={{_base_.dense_backbone}},
    decode_head=dict(in_channels={{_base_.dense_channels}}, num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))

img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=[
             [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
             [dict(type='RandomFlip', prob=0., direction='horizontal'),
              dict(type='RandomFlip', prob=1., direction='horizontal')],
             [dict(type='LoadAnnotations')],
             [dict(type='PackSegInputs')],
         ]),
]
