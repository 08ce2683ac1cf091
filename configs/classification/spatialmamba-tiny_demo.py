# Spatial-Mamba-T on the bundled demo image folder (4 classes, 64x64): the data,
# schedule and lr of groupmamba-tiny_demo.py with the Spatial-Mamba recipe's
# model (MESA from 25% of the 30 epochs on; no mixup/EMA hook for 96 images).
_base_ = './groupmamba-tiny_demo.py'

num_classes = 4
model = dict(
    _delete_=True,
    type='mmgroupmamba.MesaClassifier',
    mesa_weight=1.0,
    mesa_start=0.25,
    ema_momentum=1e-2,  # 180 steps in all: a 0.9999 EMA would barely move
    data_preprocessor=dict(num_classes=num_classes),
    backbone=dict(type='mmgroupmamba.SpatialMamba', arch='tiny', out_indices=(3, ),
                  drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=512,
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
              topk=(1, )))
