# UperNet on GroupMamba-B, ADE20K 160k: the T recipe, drop_path 0.5.
# Not reported in the paper.
_base_ = './upernet_groupmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/groupmamba_base_ema.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 424, 512]),
    auxiliary_head=dict(in_channels=424))
