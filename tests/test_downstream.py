"""Detection (mmdet Mask R-CNN) and segmentation (mmseg UperNet) on GroupMamba
and Spatial-Mamba.

CPU only, a few minutes in all:

* every config under ``configs/detection`` and ``configs/segmentation``
  parses, points at our backbone with the right channel widths and recipe,
  and its model builds (T, S, B; built, not run);
* an mmpretrain-style ImageNet checkpoint reaches the detector's backbone
  through ``init_cfg`` (every backbone tensor, no silent partial load);
* backbone maps feed FPN / UPerHead, and the whole Mask R-CNN / UperNet
  predict, at a 800x1333-like aspect (scaled down) and at odd sizes;
* the demo configs train one iteration and evaluate once through mmengine's
  Runner (Mask R-CNN: ``coco/bbox_mAP``, ``coco/segm_mAP``; UperNet:
  ``mIoU``, and ``mIoU`` again with ``tools/test.py``'s ``--tta``), the
  Spatial-Mamba ones too;
* ``tools/visualize.py`` draws both models' predictions into PNG files.
"""
import copy
import glob
import importlib.util
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmgroupmamba
from mmgroupmamba.models import groupmamba, spatialmamba

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'detection', '*.py')))
SEG_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'segmentation', '*.py')))
ALL_CONFIGS = DET_CONFIGS + SEG_CONFIGS
DET_DEMO = osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_groupmamba-tiny_fpn_demo.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'segmentation', 'upernet_groupmamba-tiny_demo.py')
SM_DET_DEMO = osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_spatialmamba-tiny_fpn_demo.py')
SM_SEG_DEMO = osp.join(ROOT, 'configs', 'segmentation', 'upernet_spatialmamba-tiny_demo.py')
DEMOS = (DET_DEMO, SEG_DEMO, SM_DET_DEMO, SM_SEG_DEMO)
#: backbone type -> (class, arch table, drop path of the T/S/B recipes)
BACKBONES = {
    'mmgroupmamba.GroupMamba': (mmgroupmamba.GroupMamba, groupmamba.arch_settings),
    'mmgroupmamba.SpatialMamba': (mmgroupmamba.SpatialMamba, spatialmamba.arch_settings),
}
arch_settings = groupmamba.arch_settings
DET_T = osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_groupmamba-tiny_fpn_1x_coco.py')
SEG_T = osp.join(ROOT, 'configs', 'segmentation',
                 'upernet_groupmamba-tiny_8xb2-160k_ade20k-512x512.py')


def _name(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', osp.join(ROOT, 'tools',
                                                                           f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arch(cfg: Config) -> str:
    return cfg.model.backbone.arch


def build_model(cfg: Config) -> torch.nn.Module:
    """Build ``cfg.model`` in the config's library scope (no weight loading)."""
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if cfg.default_scope == 'mmdet':
            from mmdet.registry import MODELS
        else:
            from mmseg.registry import MODELS
        return MODELS.build(copy.deepcopy(cfg.model))


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def ceil_div(size, stride):
    return math.ceil(size / stride)


def _pixels(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------
# Configs parse; models build.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_name)
def test_config_parses(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmgroupmamba'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type in BACKBONES
    # _delete_=True: nothing of Swin's backbone dict leaks in.
    assert not {'embed_dims', 'num_heads', 'window_size', 'convert_weights'} & set(backbone)
    assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    dims = list(BACKBONES[backbone.type][1][backbone.arch]['embed_dims'])
    demo = path in DEMOS
    if demo:
        assert backbone.init_cfg is None  # trains from scratch, no download
    else:
        assert backbone.init_cfg['type'] == 'Pretrained'
        assert backbone.arch in backbone.init_cfg['checkpoint']
        assert backbone.drop_path_rate == {'tiny': 0.2, 'small': 0.3, 'base': 0.5}[backbone.arch]
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['norm'] == dict(decay_mult=0.)
    if path in DET_CONFIGS:
        assert cfg.default_scope == 'mmdet'
        assert list(cfg.model.neck.in_channels) == dims
        if not demo:
            assert (optimizer.lr, optimizer.weight_decay) == (1e-4, 0.05)
            steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
            expected = ([27, 33], 36) if 'ms-3x' in path else ([8, 11], 12)
            assert (steps.milestones, cfg.train_cfg.max_epochs) == expected
    else:
        assert cfg.default_scope == 'mmseg'
        assert list(cfg.model.decode_head.in_channels) == dims
        assert cfg.model.auxiliary_head.in_channels == dims[2]
        assert cfg.tta_model.type == 'SegTTAModel'
        tta = cfg.tta_pipeline[-1]
        assert tta.type == 'TestTimeAug'
        ratios = [t.scale_factor for t in tta.transforms[0]]
        assert [t.prob for t in tta.transforms[1]] == [0., 1.]  # flip off / on
        if not demo:
            assert (optimizer.lr, optimizer.weight_decay) == (6e-5, 0.01)
            # Spatial-Mamba's own TTA scales; GroupMamba keeps mmseg's ADE20K set
            assert ratios == ([0.75, 1.0, 1.25] if 'spatialmamba' in path
                              else [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
            assert cfg.train_cfg.max_iters == 160000
            assert cfg.model.decode_head.num_classes == 150
            assert cfg.crop_size == (512, 512)


# Measured totals, for docs/downstream.md (paper: Mask R-CNN T 40M, UperNet T 49M).
EXPECTED_PARAMS_M = {
    'mask-rcnn_groupmamba-tiny_fpn_1x_coco': 40.62,
    'mask-rcnn_groupmamba-tiny_fpn_ms-3x_coco': 40.62,
    'mask-rcnn_groupmamba-small_fpn_1x_coco': 51.32,
    'mask-rcnn_groupmamba-base_fpn_1x_coco': 73.73,
    'upernet_groupmamba-tiny_8xb2-160k_ade20k-512x512': 50.60,
    'upernet_groupmamba-small_8xb2-160k_ade20k-512x512': 61.71,
    'upernet_groupmamba-base_8xb2-160k_ade20k-512x512': 84.34,
    # upstream Spatial-Mamba: Mask R-CNN T/S/B 46M / 63M / 115M, UperNet 57M / 73M / 127M
    'mask-rcnn_spatialmamba-tiny_fpn_1x_coco': 46.39,
    'mask-rcnn_spatialmamba-tiny_fpn_ms-3x_coco': 46.39,
    'mask-rcnn_spatialmamba-small_fpn_1x_coco': 62.71,
    'mask-rcnn_spatialmamba-small_fpn_ms-3x_coco': 62.71,
    'mask-rcnn_spatialmamba-base_fpn_1x_coco': 115.25,
    'upernet_spatialmamba-tiny_8xb2-160k_ade20k-512x512': 56.54,
    'upernet_spatialmamba-small_8xb2-160k_ade20k-512x512': 72.87,
    'upernet_spatialmamba-base_8xb2-160k_ade20k-512x512': 127.40,
}


@pytest.mark.parametrize('path', [p for p in ALL_CONFIGS if p not in DEMOS], ids=_name)
def test_model_builds(path):
    cfg = Config.fromfile(path)
    model = build_model(cfg)
    cls, table = BACKBONES[cfg.model.backbone.type]
    assert isinstance(model.backbone, cls)
    assert model.backbone.embed_dims == table[_arch(cfg)]['embed_dims']
    expected = EXPECTED_PARAMS_M[_name(path)]
    print(f'{_name(path)}: {n_params(model):.2f}M params')
    if expected is not None:
        assert n_params(model) == pytest.approx(expected, abs=0.01)


# ----------------------------------------------------------------------------
# ImageNet checkpoint through init_cfg.
# ----------------------------------------------------------------------------
def test_pretrained_init_cfg_loads_every_backbone_tensor(tmp_path):
    """An mmpretrain classification checkpoint (``backbone.*`` + neck/head
    keys) fills the whole detector backbone; only the dense-only output norm
    of the last stage stays at its init."""
    source = mmgroupmamba.GroupMamba('tiny', out_indices=(3, ), out_norm=False)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 448)
    state['neck.norm.weight'] = torch.zeros(448)
    ckpt = tmp_path / 'groupmamba_tiny_in1k.pth'
    torch.save(dict(state_dict=state, meta=dict()), ckpt)

    cfg = Config.fromfile(DET_T)
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    model = build_model(cfg)
    model.init_weights()
    loaded = model.backbone.state_dict()
    new_norm = {'stages.3.norm.weight', 'stages.3.norm.bias'}
    assert set(loaded) - set(source.state_dict()) == new_norm
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------
# Backbone -> FPN / UPerHead at detection-like and odd input sizes.
# ----------------------------------------------------------------------------
# (H, W): 800x1333 scaled by 1/4 (COCO's aspect), and odd sides.
SIZES = [(200, 333), (65, 97)]


@pytest.fixture(scope='module')
def det_model():
    return build_model(Config.fromfile(DET_T)).eval()


@pytest.fixture(scope='module')
def seg_model():
    return build_model(Config.fromfile(SEG_T)).eval()


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_backbone_feeds_fpn_and_mask_rcnn(det_model, size):
    from mmdet.structures import DetDataSample

    height, width = size
    x = _pixels(height, width)
    with torch.no_grad():
        feats = det_model.backbone(x)
        shapes = [tuple(f.shape) for f in feats]
        dims = arch_settings['tiny']['embed_dims']
        assert shapes == [(1, c, ceil_div(height, 4 * 2**i), ceil_div(width, 4 * 2**i))
                          for i, c in enumerate(dims)]
        pyramid = det_model.neck(feats)
        assert len(pyramid) == 5
        for level, p in enumerate(pyramid):
            stride = 4 * 2**level
            assert tuple(p.shape) == (1, 256, ceil_div(height, stride), ceil_div(width, stride))
            assert torch.isfinite(p).all()
        # The whole detector on the unpadded odd-size image.
        meta = dict(img_shape=size, ori_shape=size, pad_shape=size, batch_input_shape=size,
                    scale_factor=(1., 1.))
        result = det_model.predict(x, [DetDataSample(metainfo=meta)], rescale=True)[0]
    pred = result.pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.bboxes)
    assert tuple(pred.masks.shape[1:]) == size


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_backbone_feeds_uperhead(seg_model, size):
    height, width = size
    x = _pixels(height, width, seed=1)
    with torch.no_grad():
        feats = seg_model.extract_feat(x)
        logits = seg_model.decode_head(feats)
        assert tuple(logits.shape) == (1, 150, ceil_div(height, 4), ceil_div(width, 4))
        aux = seg_model.auxiliary_head(feats)
        assert tuple(aux.shape) == (1, 150, ceil_div(height, 16), ceil_div(width, 16))
        result = seg_model.predict(x)[0]
    assert tuple(result.seg_logits.data.shape) == (150, height, width)
    assert tuple(result.pred_sem_seg.data.shape) == (1, height, width)
    assert torch.isfinite(result.seg_logits.data).all()


# ----------------------------------------------------------------------------
# Demo configs end to end through the Runner: one training iteration, one
# evaluation pass (and for UperNet one more with tools/test.py's --tta).
# ----------------------------------------------------------------------------
class RecordMetrics(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.val, self.test, self.losses = [], [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))

    def after_val_epoch(self, runner, metrics=None):
        self.val.append(dict(metrics))

    def after_test_epoch(self, runner, metrics=None):
        self.test.append(dict(metrics))


def _runner(cfg: Config, work_dir, name: str):
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'{name}_{id(cfg)}'  # Runner singletons are per experiment
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.visualization = dict(type=cfg.default_hooks.visualization.type)
    runner = Runner.from_cfg(cfg)
    hook = RecordMetrics()
    runner.register_hook(hook)
    return runner, hook


@pytest.fixture(scope='module')
def det_demo_run(tmp_path_factory):
    cfg = Config.fromfile(DET_DEMO)
    cfg.train_dataloader.dataset.indices = 2  # one batch of 2 = one iteration per epoch
    cfg.val_dataloader.dataset.indices = 4  # CocoMetric still scores all 8 val images' GT
    cfg.train_cfg.max_epochs = 1
    cfg.default_hooks.checkpoint.interval = 1
    work_dir = tmp_path_factory.mktemp('det_demo')
    runner, hook = _runner(cfg, work_dir, 'det_demo')
    runner.train()
    return work_dir, hook


@pytest.fixture(scope='module')
def seg_demo_run(tmp_path_factory):
    cfg = Config.fromfile(SEG_DEMO)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    work_dir = tmp_path_factory.mktemp('seg_demo')
    runner, hook = _runner(cfg, work_dir, 'seg_demo')
    runner.train()
    return work_dir, hook


def test_mask_rcnn_demo_trains_and_evaluates(det_demo_run):
    work_dir, hook = det_demo_run
    assert len(hook.losses) == 1 and np.isfinite(hook.losses[0])
    assert len(hook.val) == 1
    metrics = hook.val[0]
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in metrics, sorted(metrics)
        assert -1 <= metrics[key] <= 1
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


def test_upernet_demo_trains_and_evaluates(seg_demo_run):
    work_dir, hook = seg_demo_run
    assert len(hook.losses) == 1 and np.isfinite(hook.losses[0])
    assert len(hook.val) == 1
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert key in hook.val[0], sorted(hook.val[0])
        assert 0 <= hook.val[0][key] <= 100
    assert osp.isfile(osp.join(work_dir, 'iter_1.pth'))


@pytest.mark.parametrize('path', [SM_DET_DEMO, SM_SEG_DEMO], ids=_name)
def test_spatialmamba_demo_trains_one_iteration_and_evaluates(path, tmp_path):
    cfg = Config.fromfile(path)
    if path == SM_DET_DEMO:
        cfg.train_dataloader.dataset.indices = 2
        cfg.val_dataloader.dataset.indices = 2
        cfg.train_cfg.max_epochs = 1
        keys = ('coco/bbox_mAP', 'coco/segm_mAP')
    else:
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 1
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
        cfg.val_dataloader.dataset.indices = 2
        keys = ('mIoU', )
    cfg.default_hooks.checkpoint.interval = 1
    runner, hook = _runner(cfg, tmp_path, _name(path))
    assert isinstance(runner.model.backbone, mmgroupmamba.SpatialMamba)
    runner.train()
    assert len(hook.losses) == 1 and np.isfinite(hook.losses[0])
    assert len(hook.val) == 1 and all(k in hook.val[0] for k in keys), hook.val


def _tta_runner(cfg_path: str, checkpoint: str, work_dir, name: str):
    """A Runner for 2 test images of a demo config after tools/test.py's --tta."""
    cfg = Config.fromfile(cfg_path)
    cfg.test_dataloader.dataset.indices = 2
    cfg.load_from = checkpoint
    cfg = _load_tool('test').enable_tta(cfg)
    runner, hook = _runner(cfg, work_dir, name)
    return cfg, runner, hook


def test_upernet_demo_tta(seg_demo_run, tmp_path):
    """tools/test.py --tta: 3 scales x 2 flips per image, merged by SegTTAModel."""
    work_dir, _ = seg_demo_run
    cfg, runner, hook = _tta_runner(SEG_DEMO, osp.join(work_dir, 'iter_1.pth'), tmp_path,
                                    'seg_demo_tta')
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.backbone.type == 'mmgroupmamba.GroupMamba'
    seen = []
    orig = runner.model.module.predict

    def predict(inputs, data_samples=None):
        seen.append(tuple(inputs.shape[-2:]))
        return orig(inputs, data_samples)

    runner.model.module.predict = predict
    metrics = runner.test()
    assert 'mIoU' in metrics and 0 <= metrics['mIoU'] <= 100
    assert hook.test == [metrics]
    # 2 images x (0.5, 1.0, 1.5) x (no flip, flip): 96x128 -> 48x64, 96x128, 144x192.
    assert sorted(set(seen)) == [(48, 64), (96, 128), (144, 192)]
    assert len(seen) == 2 * 3 * 2


def test_instance_seg_tta_merges_boxes_and_unflipped_masks():
    """Two views of a 4x6 image (plain, horizontally flipped) of the same object:
    NMS keeps the better-scored detection, and its mask comes back unflipped."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmgroupmamba.models.detection import InstanceSegTTAModel

    def view(flip, box, score, mask):
        sample = DetDataSample(metainfo=dict(ori_shape=(4, 6), img_shape=(4, 6), flip=flip,
                                             flip_direction='horizontal' if flip else None))
        sample.pred_instances = InstanceData(
            bboxes=torch.tensor([box], dtype=torch.float32), scores=torch.tensor([score]),
            labels=torch.tensor([1]), masks=mask[None])
        return sample

    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1:3, 0:2] = True  # object at the left
    class Detector(torch.nn.Module):  # BaseTTAModel only needs a test_step
        def test_step(self, data):
            raise AssertionError('not called: merge_preds is tested alone')

    tta = InstanceSegTTAModel(module=Detector(), tta_cfg=Config(dict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
    merged = tta.merge_preds([[view(False, [0, 1, 2, 3], 0.6, mask),
                               view(True, [4, 1, 6, 3], 0.9, mask.flip(-1))]])[0]
    pred = merged.pred_instances
    assert len(pred) == 1 and pred.scores.item() == pytest.approx(0.9)
    torch.testing.assert_close(pred.bboxes, torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    assert torch.equal(pred.masks[0], mask)


def test_mask_rcnn_demo_tta(det_demo_run, tmp_path):
    """tools/test.py --tta on Mask R-CNN: flip TTA with merged masks, COCO metrics."""
    work_dir, _ = det_demo_run
    cfg, runner, _ = _tta_runner(DET_DEMO, osp.join(work_dir, 'epoch_1.pth'), tmp_path,
                                 'det_demo_tta')
    assert cfg.model.type == 'mmgroupmamba.InstanceSegTTAModel'
    metrics = runner.test()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert key in metrics, sorted(metrics)


# ----------------------------------------------------------------------------
# tools/visualize.py
# ----------------------------------------------------------------------------
def test_visualize_detection_and_segmentation(det_demo_run, seg_demo_run, tmp_path):
    from PIL import Image

    visualize = _load_tool('visualize')
    runs = [(DET_DEMO, osp.join(det_demo_run[0], 'epoch_1.pth'),
             osp.join(ROOT, 'data/demo/coco/val2017/000001.jpg')),
            (SEG_DEMO, osp.join(seg_demo_run[0], 'iter_1.pth'),
             osp.join(ROOT, 'data/demo/ade/images/validation/demo_000001.jpg'))]
    for config, ckpt, image in runs:
        out_dir = tmp_path / _name(config)
        visualize.main([config, ckpt, image, '--out-dir', str(out_dir), '--score-thr', '0.0'])
        out = out_dir / (osp.splitext(osp.basename(image))[0] + '.png')
        drawn = np.asarray(Image.open(out).convert('RGB'))
        source = np.asarray(Image.open(image).convert('RGB'))
        assert drawn.shape == source.shape
        assert np.abs(drawn.astype(int) - source.astype(int)).sum() > 0  # something was drawn
