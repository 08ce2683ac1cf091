# The README's main job: GroupMamba-T trained and evaluated on the bundled
# demo image folder (4 shape classes, 64x64, `tools/make_demo_data.py`) in a
# few minutes on CPU. The paper recipe with what a 96-image set needs changed:
# no teacher (see groupmamba-tiny_demo-distill.py), no mixup/EMA, lr 5e-4 for
# batch 16, 30 epochs.
_base_ = './groupmamba-tiny_8xb128_in1k_no-distill.py'

data_root = 'data/demo/classification'
num_classes = 4
model = dict(head=dict(num_classes=num_classes, topk=(1, )), train_cfg=None)
data_preprocessor = dict(num_classes=num_classes)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=5e-4))
# lr 5e-4 is for one process's batch of 16: `--auto-scale-lr` scales it to
# the world's batch (the inherited 1024 would shrink it 32-fold on 2 GPUs)
auto_scale_lr = dict(base_batch_size=16)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=30),
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=10)
custom_hooks = []
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=10, max_keep_ckpts=1))
