# GroupMamba-B: 57.2M params, 14 GFLOPs, 84.5 top-1 (paper).
_base_ = './_base_/groupmamba_in1k.py'
model = dict(backbone=dict(arch='base'), neck=dict(dim=512), head=dict(in_channels=512))
