# The ImageNet-1k recipe GroupMamba and Spatial-Mamba share (both official
# codes use the Swin training set-up): mmpretrain's Swin data pipeline
# (RandAugment m9-mstd0.5, mixup/cutmix from the model's train_cfg, random
# erasing 0.25, bicubic, 256 -> 224 eval), AdamW lr 1e-3 at batch 1024 (5e-4
# per 512, linearly scaled), wd 0.05, cosine to 1e-5 after 20 warm-up epochs,
# 300 epochs, grad clip 5, EMA 0.9999. The model comes from the child config.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(clip_grad=dict(max_norm=5.0))
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
# The lr above is for 8 GPUs x 128; `--auto-scale-lr` rescales it for other batches.
auto_scale_lr = dict(base_batch_size=1024)
