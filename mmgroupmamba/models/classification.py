"""mmpretrain glue for classification: GroupMamba's hard distillation and
Spatial-Mamba's MESA self-distillation (:class:`MesaClassifier`).

The network pieces are the core modules of :mod:`.groupmamba`; this file only
adds mmpretrain's loss/predict protocol, the teacher and the paper's loss
(Eq. 10)::

    loss = alpha * CE(head(x), y) + (1 - alpha) * CE(dist_head(x), argmax teacher(x'))

where ``x'`` is the same (mixup/cutmix-mixed) batch the student sees, and the
label term uses the configured label loss (label smoothing 0.1 in the paper's
recipe). At test time the two heads are averaged. The official code weights
the terms ``(1 - alpha) * base + alpha * dist``; with the default alpha = 0.5
both agree.

Importing this module needs mmpretrain; :func:`mmgroupmamba.registry.register_all`
imports it only when mmpretrain is installed.
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import DefaultScope
from mmpretrain.models import ClsDataPreprocessor, ClsHead, ImageClassifier
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from mmpretrain.structures import DataSample

from ..registry import MODELS
from ..utils.checkpoint import extract_state_dict, safe_load
from .groupmamba import DistillationLinearHead, GroupMambaClassTail


def build_mmpretrain(cfg: dict) -> nn.Module:
    """Build an mmpretrain module (loss, teacher) whatever the current default
    scope is: a bare ``type`` must resolve in mmpretrain's registry even when
    this is built from mmengine's or another library's scope."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MMPRETRAIN_MODELS.build(cfg)


@MODELS.register_module()
class HardDistillationLoss(nn.Module):
    """``alpha * label_loss(cls_score, target) + (1 - alpha) * CE(dist_score, argmax teacher)``.

    Args:
        alpha: weight of the label term (Eq. 10's alpha).
        label_loss: config of the label loss (an mmpretrain loss; it receives
            hard labels (N,) or mixed soft targets (N, K)).
    Forward:
        cls_score, dist_score: (N, K) logits of ``head`` and ``dist_head``.
        target: (N,) labels or (N, K) soft targets.
        teacher_score: (N, K) teacher logits (or probabilities).
    Returns:
        dict with ``loss_cls`` and ``loss_distill`` (already weighted).
    """

    def __init__(self, alpha: float = 0.5,
                 label_loss: dict = dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                         mode='original')):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'alpha: expected a weight in [0, 1], got {alpha}')
        self.alpha = alpha
        self.label_loss = build_mmpretrain(label_loss)

    def forward(self, cls_score: torch.Tensor, dist_score: torch.Tensor,
                target: torch.Tensor, teacher_score: torch.Tensor) -> dict:
        if teacher_score.shape != dist_score.shape:
            raise ValueError(f'teacher_score: expected shape {tuple(dist_score.shape)} (the '
                             f'student logits), got {tuple(teacher_score.shape)}')
        label = self.label_loss(cls_score, target, avg_factor=cls_score.size(0))
        distill = F.cross_entropy(dist_score, teacher_score.argmax(dim=1))
        return dict(loss_cls=self.alpha * label, loss_distill=(1.0 - self.alpha) * distill)


@MODELS.register_module()
class GroupMambaClassTokenNeck(GroupMambaClassTail):
    """The official class-token tail as an mmpretrain neck:
    tuple of maps, last one (B, C, H, W) -> tuple with the pooled (B, C)."""

    def forward(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor]:
        x = inputs[-1] if isinstance(inputs, (tuple, list)) else inputs
        return (super().forward(x),)


@MODELS.register_module()
class DistillationClsHead(DistillationLinearHead):
    """``head`` + ``dist_head`` linears with mmpretrain's loss/predict protocol.

    Training with a teacher: ``loss(feats, data_samples, teacher_score)``.
    Without distillation it is a plain linear classifier. Prediction averages
    the two heads (the core module does that in eval mode).
    """

    def __init__(self, num_classes: int, in_channels: int, distillation: bool = True,
                 loss: dict = dict(type='HardDistillationLoss'),
                 label_loss: dict = dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                         mode='original'),
                 topk: Sequence[int] = (1, 5), init_cfg: Optional[dict] = None):
        super().__init__(in_channels, num_classes, distillation=distillation)
        self.topk = tuple(topk)
        if distillation:
            loss = dict(loss)
            if loss.get('type') in ('HardDistillationLoss', 'mmgroupmamba.HardDistillationLoss'):
                loss.pop('type')
                loss.setdefault('label_loss', label_loss)
                self.loss_module = HardDistillationLoss(**loss)
            else:
                raise ValueError(f"loss: expected dict(type='HardDistillationLoss', ...), got {loss}")
        else:
            self.loss_module = build_mmpretrain(label_loss)

    @staticmethod
    def _targets(data_samples: List[DataSample]) -> torch.Tensor:
        if 'gt_score' in data_samples[0]:
            return torch.stack([s.gt_score for s in data_samples])
        return torch.cat([s.gt_label for s in data_samples])

    def loss(self, feats: Tuple[torch.Tensor], data_samples: List[DataSample],
             teacher_score: Optional[torch.Tensor] = None) -> dict:
        out = self(feats[-1])
        target = self._targets(data_samples)
        if not self.distillation:
            return dict(loss=self.loss_module(out, target, avg_factor=out.size(0)))
        if teacher_score is None:
            raise ValueError('teacher_score: a distillation head needs teacher predictions in '
                             'training; configure a teacher in the classifier or set '
                             'distillation=False')
        cls_score, dist_score = out
        return self.loss_module(cls_score, dist_score, target, teacher_score)

    def predict(self, feats: Tuple[torch.Tensor],
                data_samples: Optional[List[Optional[DataSample]]] = None) -> List[DataSample]:
        score = self(feats[-1])
        if isinstance(score, tuple):  # predicting in train mode: average like eval
            score = (score[0] + score[1]) / 2
        return ClsHead._get_predictions(self, score, data_samples)


@MODELS.register_module()
class TeacherCacheDataPreprocessor(ClsDataPreprocessor):
    """ClsDataPreprocessor that attaches cached teacher predictions.

    The cache (made once by ``tools/cache_teacher_predictions.py``) holds each
    training image's teacher top-k logits on the un-augmented image, so
    training need not run the teacher (RegNetY-16GF costs 3.5x the student).
    In training, every sample gets ``teacher_score`` (K,): the softmax of its
    top-k logits, zero elsewhere. Mixup/CutMix mix these exactly like the
    label scores (they are concatenated to ``gt_score`` for the batch augment
    and split after), so the distillation target of a mixed image is
    ``argmax(lam * p_a + (1 - lam) * p_b)`` -- an approximation of the
    teacher's prediction on the mixed image, which the official code computes
    online.

    Args:
        cache: path of the cache file.
        Other arguments are ClsDataPreprocessor's (``num_classes`` required).
    """

    def __init__(self, cache: str, **kwargs):
        super().__init__(**kwargs)
        if not self.num_classes:
            raise ValueError('num_classes: TeacherCacheDataPreprocessor needs the number of classes')
        self.cache_path = cache
        self._rows: Optional[dict] = None

    def _lookup(self, data_samples: List[DataSample]) -> torch.Tensor:
        if self._rows is None:
            cache = safe_load(self.cache_path)
            if cache.get('num_classes') != self.num_classes:
                raise ValueError(f'cache: {self.cache_path} was made for '
                                 f"{cache.get('num_classes')} classes, the model has {self.num_classes}")
            self._rows = {key: i for i, key in enumerate(cache['img_paths'])}
            self._indices, self._logits = cache['topk_indices'].long(), cache['topk_logits'].float()
        rows = []
        for sample in data_samples:
            path = sample.metainfo.get('img_path')
            if path not in self._rows:
                raise KeyError(f'cache: no teacher prediction for {path!r} in {self.cache_path}; '
                               'remake it with tools/cache_teacher_predictions.py for this dataset')
            rows.append(self._rows[path])
        rows = torch.tensor(rows)
        probs = torch.zeros(len(rows), self.num_classes)
        return probs.scatter_(1, self._indices[rows], self._logits[rows].softmax(dim=1))

    def forward(self, data: dict, training: bool = False) -> dict:
        samples = data.get('data_samples')
        if not training or not samples:
            return super().forward(data, training)
        teacher = self._lookup(samples)
        mixing = self.batch_augments is not None
        k = self.num_classes
        if mixing:  # let the batch augment mix [label score | teacher score] together
            for sample, probs in zip(samples, teacher):
                score = (sample.gt_score if 'gt_score' in sample else
                         F.one_hot(sample.gt_label, k).sum(0).float())
                # DataSample checks scores against its num_classes: widen it meanwhile.
                sample.set_metainfo(dict(num_classes=2 * k))
                sample.set_gt_score(torch.cat([score.float(), probs]))
        out = super().forward(data, training)
        for i, sample in enumerate(out['data_samples']):
            if mixing:
                score = sample.gt_score
                sample.set_metainfo(dict(num_classes=k))
                sample.set_field(score[:k], 'gt_score', dtype=torch.Tensor)
                sample.set_field(score[k:], 'teacher_score', dtype=torch.Tensor)
            else:
                sample.set_field(teacher[i].to(sample.gt_label.device), 'teacher_score',
                                 dtype=torch.Tensor)
        return out


def build_teacher(cfg: dict) -> nn.Module:
    """Build ``cfg['model']`` in mmpretrain's scope, load ``cfg['checkpoint']``
    (safe loader; keys prefixed with ``cfg['checkpoint_prefix']``), freeze it
    and put it in eval mode."""
    model = build_mmpretrain(cfg['model'])
    if cfg.get('checkpoint'):
        state = extract_state_dict(safe_load(cfg['checkpoint']))
        prefix = cfg.get('checkpoint_prefix', '')
        missing, unexpected = model.load_state_dict({prefix + k: v for k, v in state.items()},
                                                    strict=False)
        if missing or unexpected:
            raise KeyError(f"teacher.checkpoint: {cfg['checkpoint']} does not match the teacher "
                           f'model: missing {missing[:5]}, unexpected {unexpected[:5]} '
                           '(set teacher.checkpoint_prefix?)')
    return model.requires_grad_(False).eval()


@MODELS.register_module()
class DistillationClassifier(ImageClassifier):
    """ImageClassifier whose head learns from labels and a frozen teacher.

    Args:
        teacher: ``dict(model=<mmpretrain model config>, checkpoint=<path or None>)``;
            or None when the data preprocessor is a TeacherCacheDataPreprocessor
            (cached teacher predictions).
            The teacher is built in mmpretrain's scope (e.g. ``TimmClassifier``
            with ``model_name='regnety_160'``), loaded with the safe loader,
            frozen and kept in eval mode. It is *not* a submodule: it is left
            out of state dicts, optimizers, EMA copies and DDP.
        teacher_amp: run the teacher under autocast (CUDA only).
        The other arguments are ImageClassifier's.
    """

    def __init__(self, *args, teacher: Optional[dict] = None, teacher_amp: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_amp = teacher_amp
        if teacher is not None and 'model' not in teacher:
            raise ValueError("teacher: expected dict(model=<model config>, checkpoint=...), "
                             f'got keys {sorted(teacher)}')
        self.uses_teacher_cache = isinstance(self.data_preprocessor, TeacherCacheDataPreprocessor)
        if getattr(self.head, 'distillation', False) and teacher is None and not self.uses_teacher_cache:
            raise ValueError('teacher: the head has distillation=True but neither a teacher nor a '
                             'TeacherCacheDataPreprocessor is configured')
        self.teacher_cfg = None if teacher is None else dict(teacher)
        # Built on first use, so testing a distilled model never builds the
        # teacher; kept outside the module tree on purpose (class docstring).
        object.__setattr__(self, '_teacher', None)

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher, built and loaded on first access."""
        if self._teacher is None and self.teacher_cfg is not None:
            object.__setattr__(self, '_teacher', build_teacher(self.teacher_cfg))
        return self._teacher

    @torch.no_grad()
    def teacher_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher logits (N, K) for the batch the student sees."""
        teacher = self.teacher
        param = next(teacher.parameters(), None)
        if param is not None and param.device != inputs.device:
            teacher.to(inputs.device)
        teacher.eval()
        with torch.autocast(device_type=inputs.device.type,
                            enabled=self.teacher_amp and inputs.device.type == 'cuda'):
            scores = teacher(inputs, mode='tensor')
        if isinstance(scores, (tuple, list)):
            scores = scores[-1]
        return scores.float()

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample]) -> dict:
        feats = self.extract_feat(inputs)
        if getattr(self.head, 'distillation', False):
            if self.uses_teacher_cache:
                teacher_score = torch.stack([s.teacher_score for s in data_samples])
            else:
                teacher_score = self.teacher_scores(inputs)
            return self.head.loss(feats, data_samples, teacher_score=teacher_score)
        return self.head.loss(feats, data_samples)


@MODELS.register_module()
class MesaClassifier(ImageClassifier):
    """ImageClassifier with MESA self-distillation, Spatial-Mamba's recipe::

        loss = label_loss(head(x), y) + mesa_weight * SoftCE(head(x), softmax(ema(x)))

    The second term starts once ``mesa_start`` of training has passed (a
    fraction of the epochs, or of the iterations for iteration-based loops);
    ``ema`` is an exponential moving average of backbone, neck and head run in
    eval mode without gradients on the same (mixed) batch.

    The EMA copy is kept outside the module tree (not in state dicts,
    optimizers, EMAHook copies or DDP). It is updated at the start of every
    training forward from the weights the previous optimizer step produced,
    which works the same under DDP (whose ``train_step`` bypasses the
    module's). Validation EMA is EMAHook's business, as in any config.

    Args:
        mesa_weight: weight of the MESA term (upstream: 1.0 / 1.5 / 2.0 for T/S/B).
        mesa_start: fraction of training after which the term is on (0.25).
        ema_momentum: EMA update weight of the current model (1 - decay;
            upstream's decay 0.9999).
        The other arguments are ImageClassifier's.
    """

    def __init__(self, *args, mesa_weight: float = 1.0, mesa_start: float = 0.25,
                 ema_momentum: float = 1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        if mesa_weight < 0:
            raise ValueError(f'mesa_weight: expected a weight >= 0, got {mesa_weight}')
        if not 0.0 <= mesa_start <= 1.0:
            raise ValueError(f'mesa_start: expected a fraction of training in [0, 1], '
                             f'got {mesa_start}')
        if not 0.0 < ema_momentum <= 1.0:
            raise ValueError(f'ema_momentum: expected a value in (0, 1], got {ema_momentum}')
        self.mesa_weight = mesa_weight
        self.mesa_start = mesa_start
        self.ema_momentum = ema_momentum
        object.__setattr__(self, '_ema', None)  # outside the module tree on purpose

    @property
    def ema(self) -> Optional[nn.Module]:
        """The EMA copy (``backbone``, ``neck``, ``head``), None before training."""
        return self._ema

    def _student(self) -> nn.ModuleDict:
        parts = dict(backbone=self.backbone, head=self.head)
        if self.with_neck:
            parts['neck'] = self.neck
        return nn.ModuleDict(parts)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema = (1 - m) * ema + m * model`` (float tensors; others copied);
        the first call copies the model."""
        student = self._student()
        if self._ema is None:
            object.__setattr__(self, '_ema', copy.deepcopy(student).requires_grad_(False).eval())
            return
        ema_state = self._ema.state_dict()
        for key, value in student.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[key].lerp_(value.detach(), self.ema_momentum)
            else:
                ema_state[key].copy_(value)

    @staticmethod
    def training_progress() -> float:
        """Fraction of training done, from the runner's message hub (0 outside
        a run). Iterations count for epoch- and iteration-based loops alike
        (an iteration loop reports max_epochs 1)."""
        from mmengine.logging import MessageHub
        hub = MessageHub.get_current_instance()
        for cur, total in (('iter', 'max_iters'), ('epoch', 'max_epochs')):
            done, length = hub.get_info(cur), hub.get_info(total)
            if done is not None and length:
                return done / length
        return 0.0

    @torch.no_grad()
    def ema_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        ema = self._ema.eval()
        feats = ema['backbone'](inputs)
        if 'neck' in ema:
            feats = ema['neck'](feats)
        return ema['head'](feats).float()

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample]) -> dict:
        self.update_ema()
        cls_score = self.head(self.extract_feat(inputs))
        losses = self.head._get_loss(cls_score, data_samples)
        if self.mesa_weight > 0 and self.training_progress() >= self.mesa_start:
            target = self.ema_scores(inputs).softmax(dim=-1)
            soft_ce = -(target * F.log_softmax(cls_score.float(), dim=-1)).sum(dim=-1).mean()
            losses['loss_mesa'] = self.mesa_weight * soft_ce
        return losses
