# GroupMamba-T without distillation: one linear head, label loss only.
_base_ = './groupmamba-tiny_8xb128_in1k.py'
model = dict(teacher=None, head=dict(distillation=False))
