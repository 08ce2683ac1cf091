# UperNet on Spatial-Mamba-S, ADE20K 160k (upstream: 50.6 / 51.4 mIoU).
_base_ = './upernet_spatialmamba-tiny_8xb2-160k_ade20k-512x512.py'
pretrained = 'checkpoints/spatialmamba_small.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
