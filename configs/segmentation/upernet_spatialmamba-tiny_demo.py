# UperNet on Spatial-Mamba-T on the bundled synthetic ADE20K-layout set: the
# data, schedule, heads and TTA of upernet_groupmamba-tiny_demo.py with the
# backbone swapped (random init, no download).
_base_ = './upernet_groupmamba-tiny_demo.py'

model = dict(
    backbone=dict(_delete_=True, type='mmgroupmamba.SpatialMamba', arch='tiny',
                  out_indices=(0, 1, 2, 3), drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
