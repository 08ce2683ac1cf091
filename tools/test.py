"""Evaluate any mmgroupmamba config, optionally with test-time augmentation.

    python tools/test.py CONFIG CHECKPOINT [--tta] [--work-dir DIR] [--out FILE]
           [--show-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``--tta`` follows each library's convention, chosen by the config's
``default_scope``: mmseg uses the config's ``tta_model``/``tta_pipeline``
(multi-scale 0.5-1.75 + flip for ADE20K), mmpretrain averages the scores of
the image and its flip, mmdet merges the detections of the image and its
flip (boxes with mmdet's DetTTAModel; boxes and masks with our
InstanceSegTTAModel for detectors with a mask head, which DetTTAModel
refuses).
"""
import argparse
import copy

from mmengine.config import Config
from mmengine.runner import Runner

import mmgroupmamba  # noqa: F401  (registers modules and the checkpoint loader)
from mmgroupmamba.utils.runner_args import add_runner_args, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument('--show-dir', help='draw predictions into this dir (under the work dir)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    return add_runner_args(parser).parse_args()


def _flip_tta_pipeline(test_pipeline: list, pack_meta_keys: tuple = ()) -> list:
    """The test pipeline with its packing step replaced by (flip, no flip) views."""
    pipeline = copy.deepcopy(test_pipeline)
    pack = copy.deepcopy(pipeline[-1])
    if pack_meta_keys:
        pack['meta_keys'] = tuple(pack.get('meta_keys', ())) + pack_meta_keys
    pipeline[-1] = dict(type='TestTimeAug',
                        transforms=[[dict(type='RandomFlip', prob=1.0),
                                     dict(type='RandomFlip', prob=0.0)], [pack]])
    return pipeline


def enable_tta(cfg: Config) -> Config:
    scope = cfg.get('default_scope')
    if 'tta_model' not in cfg:
        if scope == 'mmpretrain':
            cfg.tta_model = dict(type='AverageClsScoreTTA')
        elif scope == 'mmdet':
            with_masks = cfg.model.get('roi_head', {}).get('mask_head') is not None
            cfg.tta_model = dict(
                type='mmgroupmamba.InstanceSegTTAModel' if with_masks else 'DetTTAModel',
                tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        else:
            raise RuntimeError(f'--tta: the config (default_scope={scope!r}) defines no tta_model')
    if 'tta_pipeline' not in cfg:
        test_pipeline = cfg.test_dataloader.dataset.pipeline
        if scope == 'mmpretrain':
            cfg.tta_pipeline = _flip_tta_pipeline(test_pipeline)
        elif scope == 'mmdet':
            cfg.tta_pipeline = _flip_tta_pipeline(
                test_pipeline, ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                'flip', 'flip_direction'))
        else:
            raise RuntimeError(f'--tta: the config (default_scope={scope!r}) defines no tta_pipeline')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    return cfg


def enable_visualization(cfg: Config, show_dir: str) -> Config:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show-dir: the config has no visualization hook')
    hooks.visualization.draw = True
    if cfg.get('default_scope') == 'mmpretrain':
        hooks.visualization.enable = True
    hooks.visualization.test_out_dir = show_dir
    return cfg


def main() -> None:
    args = parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        cfg = enable_visualization(cfg, args.show_dir)
    if args.tta:
        cfg = enable_tta(cfg)
    runner = Runner.from_cfg(cfg)
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
