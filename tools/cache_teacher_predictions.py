"""Run a config's distillation teacher once over its training set and cache
each image's top-k logits, for ``TeacherCacheDataPreprocessor``.

    python tools/cache_teacher_predictions.py CONFIG --out teacher_topk.pth [--topk 10]
           [--batch-size 64] [--device cuda]

The teacher is ``model.teacher`` of CONFIG; it sees each training image once
through the *test* pipeline (resize + centre crop, no augmentation). The file
holds ``img_paths`` (as the training dataset names them), ``topk_indices``
(int32, (M, k)), ``topk_logits`` (float16, (M, k)) and ``num_classes``, and
loads with the safe loader. Then train with::

    --cfg-options model.teacher=None data_preprocessor.type=mmgroupmamba.TeacherCacheDataPreprocessor \
                  data_preprocessor.cache=teacher_topk.pth
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmpretrain.registry import DATASETS, MODELS

import mmgroupmamba  # noqa: F401  (registers our modules)
from mmgroupmamba.models.classification import build_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--out', required=True)
    parser.add_argument('--topk', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()

    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    if not cfg.model.get('teacher'):
        raise SystemExit(f'{args.config}: model.teacher is not set; nothing to cache')
    teacher = build_teacher(cfg.model.teacher).to(args.device)
    # Normalisation as in training, without batch augments or a cache.
    prep_cfg = dict(cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {})
    prep_cfg.pop('cache', None)
    prep_cfg.update(type='ClsDataPreprocessor', batch_augments=None)
    preprocessor = MODELS.build(prep_cfg).to(args.device)
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg.pipeline = cfg.test_dataloader.dataset.pipeline
    dataset = DATASETS.build(dataset_cfg)

    paths, indices, logits = [], [], []
    with torch.no_grad():
        for start in range(0, len(dataset), args.batch_size):
            batch = pseudo_collate([dataset[i] for i in range(start, min(start + args.batch_size,
                                                                           len(dataset)))])
            data = preprocessor(batch, training=False)
            scores = teacher(data['inputs'], mode='tensor').float()
            top = scores.topk(min(args.topk, scores.shape[1]), dim=1)
            indices.append(top.indices.int().cpu())
            logits.append(top.values.half().cpu())
            paths += [s.metainfo['img_path'] for s in data['data_samples']]
            print(f'{len(paths)}/{len(dataset)}', flush=True)
    torch.save(dict(img_paths=paths, topk_indices=torch.cat(indices),
                    topk_logits=torch.cat(logits), num_classes=scores.shape[1]), args.out)
    print(f'wrote {args.out}: {len(paths)} images, top-{args.topk}')


if __name__ == '__main__':
    main()
