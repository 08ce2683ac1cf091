"""Train any mmgroupmamba config (classification, detection or segmentation).

One script for the three tasks: the config's ``default_scope`` (inherited from
the mmpretrain / mmdet / mmseg ``_base_`` files) picks the library, and
``import mmgroupmamba`` registers our modules and the safe checkpoint loader
(so ``--resume`` works under torch >= 2.6).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
           [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse

from mmengine.config import Config
from mmengine.runner import Runner

import mmgroupmamba  # noqa: F401  (registers modules and the checkpoint loader)
from mmgroupmamba.utils.runner_args import add_runner_args, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch size / auto_scale_lr.base_batch_size)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or from the latest one in the work dir')
    parser.add_argument('--no-validate', action='store_true', help='skip validation during training')
    return add_runner_args(parser).parse_args()


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def main() -> None:
    args = parse_args()
    cfg = merge_args(load_config(args), args)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else None
    if runner is None:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
