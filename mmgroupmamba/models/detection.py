"""mmdet glue: test-time augmentation that also merges instance masks.

mmdet 3.3's ``DetTTAModel`` merges boxes only and asserts when predictions
carry masks, so Mask R-CNN had no ``--tta``. :class:`InstanceSegTTAModel`
merges the views of one image the way DetTTAModel merges boxes -- every
view's detections mapped back to the original image, concatenated, class-wise
NMS -- and keeps each surviving detection's own mask (flipped back like its
box). Masks of all views are already at the original image size, because
Mask R-CNN predicts with ``rescale=True``.

Importing this module needs mmdet; :func:`mmgroupmamba.registry.register_all`
imports it only when mmdet is installed.
"""
from typing import List

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ..registry import MODELS

_FLIP_DIMS = {'horizontal': (-1, ), 'vertical': (-2, ), 'diagonal': (-2, -1)}


def unflip_masks(masks: torch.Tensor, metainfo: dict) -> torch.Tensor:
    """(N, H, W) masks of a flipped view -> masks of the original image."""
    if not metainfo.get('flip', False):
        return masks
    direction = metainfo.get('flip_direction')
    if direction not in _FLIP_DIMS:
        raise ValueError(f"flip_direction: expected one of {sorted(_FLIP_DIMS)}, got {direction!r}")
    return masks.flip(_FLIP_DIMS[direction])


@MODELS.register_module()
class InstanceSegTTAModel(DetTTAModel):
    """DetTTAModel for detectors that predict masks (Mask R-CNN).

    Args:
        tta_cfg: ``dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)``.
    """

    def _merge_single_sample(self, data_samples: List[DetDataSample]) -> DetDataSample:
        metas = [s.metainfo for s in data_samples]
        preds = [s.pred_instances for s in data_samples]
        if preds[0].get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds],
                                               [p.scores for p in preds], metas)
        labels = torch.cat([p.labels for p in preds])
        masks = torch.cat([unflip_masks(p.masks, m) for p, m in zip(preds, metas)])
        if bboxes.numel() == 0:
            return data_samples[0]
        det, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        det = det[:self.tta_cfg.max_per_img]
        results = InstanceData()
        results.bboxes = det[:, :-1].clone()
        results.scores = det[:, -1].clone()
        results.labels = labels[keep]
        results.masks = masks[keep]
        merged = data_samples[0]
        merged.pred_instances = results
        return merged
