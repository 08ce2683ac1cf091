# The demo with the distillation objective switched on. The teacher is a small
# ResNet-18 with random weights (no download here): it exercises the whole
# path (frozen teacher on the student's batch, dist_head loss, averaged heads
# at test), not the accuracy gain of a real teacher.
_base_ = './groupmamba-tiny_demo.py'
model = dict(
    head=dict(distillation=True),
    teacher=dict(
        _delete_=True,  # the base has teacher=None
        model=dict(type='ImageClassifier',
                   backbone=dict(type='ResNet', depth=18),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=4, in_channels=512)),
        checkpoint=None))
