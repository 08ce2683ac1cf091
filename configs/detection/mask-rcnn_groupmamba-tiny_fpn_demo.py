# Mask R-CNN + FPN on GroupMamba-T trained and evaluated on the bundled
# synthetic COCO set (`data/demo/coco`, 16 train / 8 val images of 96x128,
# 4 shape classes, polygon masks; `tools/make_demo_data.py`). Runs on CPU in
# a few minutes: `python tools/train.py configs/detection/mask-rcnn_groupmamba-tiny_fpn_demo.py`.
# The 1x COCO recipe with what a tiny set needs changed: random init (no
# download), native image size, anchors of half the usual size (the shapes are
# 15-40 px), fewer proposals and RoIs, a short schedule with a higher lr. The metrics (CocoMetric bbox +
# segm) are computed for real on the demo val set.
_base_ = './mask-rcnn_groupmamba-tiny_fpn_1x_coco.py'

data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'cross'),
    palette=[(220, 20, 60), (0, 128, 255), (0, 200, 0), (255, 160, 0)])
num_classes = 4
img_scale = (128, 96)  # (w, h): the demo images' own size

model = dict(
    backbone=dict(drop_path_rate=0.1, init_cfg=None),
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_head=dict(num_classes=num_classes),
        mask_head=dict(num_classes=num_classes)),
    # At most 4 shapes per image: fewer proposals / RoIs than COCO's 1000 / 512 / 100
    # keeps a CPU iteration in seconds.
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=300), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(
        data_root=data_root, metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(
        data_root=data_root, metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

# 8 iterations per epoch (16 images, batch 2).
max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=4),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
