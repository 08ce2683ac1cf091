# UperNet on Spatial-Mamba-B, ADE20K 160k (upstream: 51.8 / 52.6 mIoU).
_base_ = './upernet_spatialmamba-tiny_8xb2-160k_ade20k-512x512.py'
pretrained = 'checkpoints/spatialmamba_base.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.5,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
             decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
