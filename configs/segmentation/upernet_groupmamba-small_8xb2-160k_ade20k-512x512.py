# UperNet on GroupMamba-S, ADE20K 160k: the T recipe, drop_path 0.3.
# Not reported in the paper.
_base_ = './upernet_groupmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/groupmamba_small_ema.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 348, 512]),
    auxiliary_head=dict(in_channels=348))
