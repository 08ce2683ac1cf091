# GroupMamba on ImageNet-1k, the paper's recipe (official train.py / config.py):
# 300 epochs, AdamW lr 1e-3 at batch 1024 (5e-4 per 512, linearly scaled),
# wd 0.05, cosine to 1e-5 after 20 warm-up epochs, grad clip 5, label
# smoothing 0.1, RandAugment m9-mstd0.5 / mixup 0.8 / cutmix 1.0 / random
# erasing 0.25 (mmpretrain's Swin set), EMA 0.9999, drop path 0.05, and hard
# distillation from a RegNetY-16GF teacher (alpha 0.5).
_base_ = './in1k_recipe.py'

arch = 'tiny'
out_dim = 448  # stage-4 width of the arch
model = dict(
    type='mmgroupmamba.DistillationClassifier',
    backbone=dict(type='mmgroupmamba.GroupMamba', arch=arch, out_indices=(3, ),
                  drop_path_rate=0.05),
    neck=dict(type='mmgroupmamba.GroupMambaClassTokenNeck', dim=out_dim),
    head=dict(
        type='mmgroupmamba.DistillationClsHead',
        num_classes=1000,
        in_channels=out_dim,
        distillation=True,
        loss=dict(type='HardDistillationLoss', alpha=0.5),
        label_loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    # DeiT's RegNetY-16GF teacher (82.9% top-1): timm's regnety_160 with
    # https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth (its 'model' entry).
    teacher=dict(
        model=dict(type='TimmClassifier', model_name='regnety_160', num_classes=1000),
        checkpoint='checkpoints/regnety_160-a5fe301d.pth',
        checkpoint_prefix='model.'),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
