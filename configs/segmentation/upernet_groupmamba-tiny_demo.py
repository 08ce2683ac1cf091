# UperNet on GroupMamba-T trained and evaluated on the bundled synthetic
# ADE20K-layout set (`data/demo/ade`, 16 train / 8 val images of 96x128,
# labels 0 = background, 1-4 = shapes; `tools/make_demo_data.py`). CPU, a few
# minutes: `python tools/train.py configs/segmentation/upernet_groupmamba-tiny_demo.py`.
# The ADE20K recipe with what a tiny set needs changed: 5 classes with the
# background kept (no reduce_zero_label), random init (no download), 64x64
# crops, BN heads (single process), UPerHead channels 128 for CPU speed, a
# short schedule with a higher lr. `tools/test.py ... --tta` runs the
# multi-scale (0.5/1.0/1.5) + flip TTA below on the same data.
_base_ = './upernet_groupmamba-tiny_8xb2-160k_ade20k-512x512.py'

data_root = 'data/demo/ade'
num_classes = 5
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'cross'),
    palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255], [0, 200, 0], [255, 160, 0]])
crop_size = (64, 64)
img_scale = (128, 96)  # (w, h): the demo images' own size
norm_cfg = dict(type='BN', requires_grad=True)

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(channels=128, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=64, num_classes=num_classes, norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
img_ratios = [0.5, 1.0, 1.5]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[
             [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
             [dict(type='RandomFlip', prob=0., direction='horizontal'),
              dict(type='RandomFlip', prob=1., direction='horizontal')],
             [dict(type='LoadAnnotations', reduce_zero_label=False)],
             [dict(type='PackSegInputs')],
         ]),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 40
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=6e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=5, end=max_iters),
]
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
