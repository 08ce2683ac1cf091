# GroupMamba-S: 34.8M params, 7.0 GFLOPs, 83.9 top-1 (paper).
_base_ = './_base_/groupmamba_in1k.py'
model = dict(backbone=dict(arch='small'), neck=dict(dim=512), head=dict(in_channels=512))
