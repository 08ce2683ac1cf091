"""Draw the predictions of a detection or segmentation model into PNG files.

    python tools/visualize.py CONFIG CHECKPOINT IMAGE [IMAGE ...] --out-dir DIR
           [--device cpu] [--score-thr 0.3] [--opacity 0.5] [--cfg-options k=v ...]

The config's ``default_scope`` picks the library:

* ``mmdet``: ``mmdet.apis.init_detector`` / ``inference_detector``, drawn by
  the config's ``DetLocalVisualizer`` (boxes, labels, scores, instance masks
  above ``--score-thr``);
* ``mmseg``: ``mmseg.apis.init_model`` / ``inference_model``, drawn by the
  config's ``SegLocalVisualizer`` (the class map blended over the image with
  ``--opacity``).

Class names and colours come from the checkpoint's ``dataset_meta`` (saved by
the Runner), else from the config's dataset ``metainfo``. IMAGE may be a file
or a folder (its .jpg/.jpeg/.png/.bmp files). One ``<image stem>.png`` per
image is written to ``--out-dir``; the written paths are printed.
"""
import argparse
import os
import os.path as osp
from typing import List, Optional

import mmcv
from mmengine.config import Config, DictAction

import mmgroupmamba  # noqa: F401  (registers modules and the checkpoint loader)

IMG_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw detection / segmentation predictions')
    parser.add_argument('config', help='model config (mmdet or mmseg default_scope)')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('images', nargs='+', help='image files or folders')
    parser.add_argument('--out-dir', required=True, help='where to write the PNG files')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw instances scoring at least this')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the drawn class map')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def list_images(paths: List[str]) -> List[str]:
    images = []
    for path in paths:
        if osp.isdir(path):
            images += sorted(osp.join(path, f) for f in os.listdir(path)
                             if f.lower().endswith(IMG_EXTS))
        elif osp.isfile(path):
            images.append(path)
        else:
            raise FileNotFoundError(f'no such image or folder: {path}')
    if not images:
        raise FileNotFoundError(f'no images found in {paths}')
    return images


def _dataset_metainfo(cfg: Config) -> dict:
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = cfg.get(key, {}).get('dataset', {})
        if dataset.get('metainfo'):
            return dict(dataset['metainfo'])
    return {}


def visualize(config: str, checkpoint: str, images: List[str], out_dir: str,
              device: str = 'cpu', score_thr: float = 0.3, opacity: float = 0.5,
              cfg_options: Optional[dict] = None) -> List[str]:
    """Draw the predictions on each image; return the written PNG paths."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        from mmdet.apis import inference_detector as inference
        from mmdet.apis import init_detector as init
        from mmdet.registry import VISUALIZERS
    elif scope == 'mmseg':
        from mmseg.apis import inference_model as inference
        from mmseg.apis import init_model as init
        from mmseg.registry import VISUALIZERS
    else:
        raise ValueError(f'{config}: default_scope {scope!r} is neither mmdet nor mmseg')

    model = init(cfg, checkpoint, device=device)
    meta = dict(getattr(model, 'dataset_meta', None) or {})
    # Checkpoints without dataset_meta get COCO / ADE20K names from the apis.
    if len(meta.get('classes') or ()) != _num_classes(cfg, scope):
        meta = _dataset_metainfo(cfg) or meta
    model.dataset_meta = meta

    vis_cfg = dict(cfg.visualizer)
    vis_cfg['name'] = f'visualize_{id(model)}'  # Visualizer is a named singleton
    vis_cfg['save_dir'] = None
    vis_cfg['vis_backends'] = None
    if scope == 'mmseg':
        vis_cfg['alpha'] = opacity
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = meta

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in list_images(images):
        result = inference(model, path)
        img = mmcv.imread(path, channel_order='rgb')
        out_file = osp.join(out_dir, osp.splitext(osp.basename(path))[0] + '.png')
        kwargs = dict(pred_score_thr=score_thr) if scope == 'mmdet' else dict(with_labels=True)
        visualizer.add_datasample(osp.basename(path), img, data_sample=result, draw_gt=False,
                                  show=False, wait_time=0, out_file=out_file, **kwargs)
        written.append(out_file)
    return written


def _num_classes(cfg: Config, scope: str) -> int:
    if scope == 'mmdet':
        return cfg.model.roi_head.bbox_head.num_classes
    return cfg.model.decode_head.num_classes


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    for path in visualize(args.config, args.checkpoint, args.images, args.out_dir,
                          device=args.device, score_thr=args.score_thr, opacity=args.opacity,
                          cfg_options=args.cfg_options):
        print(path)


if __name__ == '__main__':
    main()
