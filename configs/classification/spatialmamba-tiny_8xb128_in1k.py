# Spatial-Mamba-T on ImageNet-1k, the official recipe (configs/spatialmamba/
# spatialmamba_tiny.yaml + config.py): 300 epochs, AdamW lr 1e-3 at batch
# 1024 (5e-4 per 512), wd 0.05, cosine after 20 warm-up epochs, grad clip 5,
# label smoothing 0.1, RandAugment / mixup 0.8 / cutmix 1.0 / random erasing
# 0.25 (mmpretrain's Swin set), EMA 0.9999, drop path 0.2 (S 0.3, B 0.5), and
# MESA self-distillation from the EMA model from 25% of training on (weight
# 1.0; S 1.5, B 2.0). Upstream reports 83.5 top-1 for T.
_base_ = './_base_/in1k_recipe.py'

model = dict(
    type='mmgroupmamba.MesaClassifier',
    mesa_weight=1.0,
    mesa_start=0.25,
    ema_momentum=1e-4,
    backbone=dict(type='mmgroupmamba.SpatialMamba', arch='tiny', out_indices=(3, ),
                  drop_path_rate=0.2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
