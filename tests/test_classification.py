"""mmpretrain side: GroupMamba's distillation loss against a hand
computation, the classifier/teacher plumbing, cached teacher predictions,
Spatial-Mamba's MESA self-distillation, and the demo configs end to end
(tools/train.py, tools/test.py, mim)."""
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.structures import DataSample

import mmgroupmamba  # noqa: F401  (registers the modules)
from mmgroupmamba.models.classification import (DistillationClsHead, HardDistillationLoss,
                                                TeacherCacheDataPreprocessor)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'classification', 'groupmamba-tiny_demo.py')
DEMO_DISTILL = os.path.join(ROOT, 'configs', 'classification', 'groupmamba-tiny_demo-distill.py')
SM_DEMO = os.path.join(ROOT, 'configs', 'classification', 'spatialmamba-tiny_demo.py')
SMALL_SM = dict(_delete_=True, embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))


def _ce(logits, label):
    """-log softmax(logits)[label], by hand."""
    return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


def test_hard_distillation_loss_matches_hand_computation():
    cls = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    dist = torch.tensor([[0.0, 1.0, 0.0], [1.5, -0.5, 0.2]])
    teacher = torch.tensor([[0.1, 3.0, 0.2], [2.0, 1.0, 0.0]])  # argmax: 1, 0
    labels = torch.tensor([0, 2])
    loss = HardDistillationLoss(alpha=0.3, label_loss=dict(type='CrossEntropyLoss'))
    out = loss(cls, dist, labels, teacher)
    want_cls = 0.3 * (_ce(cls[0].tolist(), 0) + _ce(cls[1].tolist(), 2)) / 2
    want_dist = 0.7 * (_ce(dist[0].tolist(), 1) + _ce(dist[1].tolist(), 0)) / 2
    assert out['loss_cls'].item() == pytest.approx(want_cls, rel=1e-6)
    assert out['loss_distill'].item() == pytest.approx(want_dist, rel=1e-6)


def test_hard_distillation_loss_with_label_smoothing_and_soft_targets():
    cls, dist, teacher = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 5), dim=1)  # mixed targets
    out = HardDistillationLoss(alpha=0.5)(cls, dist, soft, teacher)
    smoothed = soft * 0.9 + 0.1 / 5  # mmpretrain LabelSmoothLoss 'original' on soft targets
    want = 0.5 * (-(smoothed * F.log_softmax(cls, dim=1)).sum(1)).mean()
    assert out['loss_cls'].item() == pytest.approx(want.item(), rel=1e-5)


def test_loss_errors_name_the_argument():
    with pytest.raises(ValueError, match='alpha'):
        HardDistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match='teacher_score'):
        HardDistillationLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]),
                               torch.randn(2, 4))


def test_head_trains_two_heads_and_averages_at_test():
    head = DistillationClsHead(num_classes=3, in_channels=8,
                               loss=dict(type='HardDistillationLoss', alpha=0.5))
    feats = (torch.randn(2, 8), )
    samples = [DataSample().set_gt_label(0), DataSample().set_gt_label(2)]
    head.train()
    losses = head.loss(feats, samples, teacher_score=torch.randn(2, 3))
    assert set(losses) == {'loss_cls', 'loss_distill'}
    (losses['loss_cls'] + losses['loss_distill']).backward()
    assert head.fc.weight.grad.abs().sum() > 0 and head.dist_fc.weight.grad.abs().sum() > 0
    head.eval()
    pred = head.predict(feats, [DataSample(), DataSample()])
    want = torch.softmax((head.fc(feats[0]) + head.dist_fc(feats[0])) / 2, dim=1)
    torch.testing.assert_close(torch.stack([p.pred_score for p in pred]), want)
    with pytest.raises(ValueError, match='teacher_score'):
        head.train().loss(feats, samples)


def _build(cfg_path, **overrides):
    from mmgroupmamba.models.classification import build_mmpretrain
    cfg = Config.fromfile(cfg_path)
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    cfg.merge_from_dict(overrides)
    return build_mmpretrain(cfg.model)


def test_teacher_is_frozen_out_of_state_dict_and_sees_the_student_batch():
    model = _build(DEMO_DISTILL)
    assert model.teacher_cfg is not None and model._teacher is None  # built on first use
    seen = {}
    teacher = model.teacher
    teacher.register_forward_pre_hook(lambda m, args: seen.setdefault('x', args[0]))
    x = torch.randn(2, 3, 64, 64)
    samples = [DataSample().set_gt_label(1), DataSample().set_gt_label(3)]
    losses = model.loss(x, samples)
    assert torch.equal(seen['x'], x)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not any(k.startswith('teacher') or '_teacher' in k for k in model.state_dict())
    assert all(p is not q for p in model.parameters() for q in teacher.parameters())
    sum(losses.values()).backward()


def test_distillation_head_without_teacher_is_refused():
    with pytest.raises(ValueError, match='teacher'):
        _build(DEMO_DISTILL, **{'model.teacher': None})


def test_cached_teacher_predictions_are_mixed_with_the_labels(tmp_path):
    cache = tmp_path / 'topk.pth'
    paths = ['a.jpg', 'b.jpg']
    torch.save(dict(img_paths=paths, num_classes=4,
                    topk_indices=torch.tensor([[2, 0], [1, 3]], dtype=torch.int32),
                    topk_logits=torch.tensor([[5.0, 0.0], [0.0, 5.0]]).half()), cache)
    prep = TeacherCacheDataPreprocessor(
        cache=str(cache), num_classes=4,
        batch_augments=dict(augments=[dict(type='Mixup', alpha=1.0)]))
    torch.manual_seed(0)
    samples = [DataSample(metainfo=dict(img_path=p)).set_gt_label(lbl)
               for p, lbl in zip(paths, (0, 1))]
    out = prep(dict(inputs=[torch.zeros(3, 4, 4, dtype=torch.uint8),
                            torch.ones(3, 4, 4, dtype=torch.uint8)], data_samples=samples),
               training=True)
    probs = torch.zeros(2, 4)
    probs[0, [2, 0]] = torch.tensor([5.0, 0.0]).softmax(0)
    probs[1, [1, 3]] = torch.tensor([0.0, 5.0]).softmax(0)
    # The label score and the teacher score are mixed with the same lambda/permutation.
    for sample in out['data_samples']:
        label, teacher = sample.gt_score, sample.teacher_score
        lam = label[0].item()  # the weight of image 'a' (label 0) in this sample's mix
        torch.testing.assert_close(teacher, lam * probs[0] + (1 - lam) * probs[1], atol=1e-3,
                                   rtol=1e-3)
    with pytest.raises(KeyError, match='c.jpg'):
        prep(dict(inputs=[torch.zeros(3, 4, 4, dtype=torch.uint8)],
                  data_samples=[DataSample(metainfo=dict(img_path='c.jpg')).set_gt_label(0)]),
             training=True)


def _mesa_model(**overrides):
    return _build(SM_DEMO, **{'model.backbone.arch': SMALL_SM, 'model.head.in_channels': 128,
                              **overrides})


@pytest.mark.parametrize('variant,drop_path,mesa,params', [
    ('tiny', 0.2, 1.0, 26_748_862), ('small', 0.3, 1.5, 43_074_280), ('base', 0.5, 2.0, 95_745_592)])
def test_spatialmamba_recipe_configs(variant, drop_path, mesa, params):
    """Upstream's recipe: drop path, MESA weight from 25% of training, EMA,
    AdamW 1e-3 / wd 0.05 at batch 1024, label smoothing, mixup/cutmix; the
    built classifier has upstream's parameter count."""
    path = os.path.join(ROOT, 'configs', 'classification', f'spatialmamba-{variant}_8xb128_in1k.py')
    cfg = Config.fromfile(path)
    m = cfg.model
    assert (m.type, m.backbone.type, m.backbone.arch) == ('mmgroupmamba.MesaClassifier',
                                                          'mmgroupmamba.SpatialMamba', variant)
    assert (m.backbone.drop_path_rate, m.mesa_weight, m.mesa_start) == (drop_path, mesa, 0.25)
    assert m.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert [a.type for a in m.train_cfg.augments] == ['Mixup', 'CutMix']
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-3, 0.05)
    assert cfg.auto_scale_lr.base_batch_size == 1024 and cfg.train_dataloader.batch_size == 128
    assert cfg.custom_hooks[0].type == 'EMAHook' and cfg.train_cfg.max_epochs == 300
    with torch.device('meta'):
        model = _build(path)
    assert sum(p.numel() for p in model.parameters()) == params


def test_mesa_loss_starts_on_schedule_and_matches_hand_computation():
    from mmengine.logging import MessageHub
    torch.manual_seed(0)
    model = _mesa_model(**{'model.mesa_weight': 1.5, 'model.mesa_start': 0.5})
    x = torch.randn(2, 3, 32, 32)
    samples = [DataSample().set_gt_label(1), DataSample().set_gt_label(3)]
    hub = MessageHub.get_instance('test_mesa')
    hub.update_info('iter', 1)
    hub.update_info('max_iters', 4)  # 25% < mesa_start
    losses = model.loss(x, samples)
    assert set(losses) == {'loss'} and model.ema is not None
    # the EMA copy is outside the module tree
    assert not any('ema' in k for k in model.state_dict())
    assert all(p is not q for p in model.parameters() for q in model.ema.parameters())
    hub.update_info('iter', 2)  # 50%: on
    model.eval()  # no drop path: the hand computation below sees the same network
    losses = model.loss(x, samples)
    assert set(losses) == {'loss', 'loss_mesa'}
    with torch.no_grad():
        student = model.head(model.extract_feat(x))
        ema = model.ema
        target = ema['head'](ema['neck'](ema['backbone'](x))).softmax(-1)
    want = 1.5 * (-(target * F.log_softmax(student, -1)).sum(-1)).mean()
    assert losses['loss_mesa'].item() == pytest.approx(want.item(), rel=1e-5)
    assert losses['loss_mesa'].requires_grad  # gradient to the student only
    assert not any(p.requires_grad for p in model.ema.parameters())


def test_mesa_ema_update_rule():
    model = _mesa_model(**{'model.ema_momentum': 0.25})
    model.update_ema()  # first call copies
    w = model.head.fc.weight
    old = model.ema['head'].fc.weight.clone()
    torch.testing.assert_close(old, w.detach())
    with torch.no_grad():
        w.add_(1.0)
    model.update_ema()
    torch.testing.assert_close(model.ema['head'].fc.weight, old + 0.25 * (w.detach() - old))
    for kw, match in ((dict(mesa_start=1.5), 'mesa_start'), (dict(ema_momentum=0.0), 'ema_momentum'),
                      (dict(mesa_weight=-1.0), 'mesa_weight')):
        with pytest.raises(ValueError, match=match):
            _mesa_model(**{f'model.{k}': v for k, v in kw.items()})


def test_spatialmamba_demo_trains_with_mesa_end_to_end(tmp_path):
    """tools/train.py on the Spatial-Mamba demo, MESA on from the first step,
    then tools/test.py on the checkpoint."""
    work = tmp_path / 'sm_demo'
    opts = ['--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1', 'model.mesa_start=0.0',
            'default_hooks.logger.interval=1',
            'train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=4']
    out = _run([sys.executable, 'tools/train.py', SM_DEMO, '--work-dir', str(work)] + opts)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert 'loss_mesa' in log and 'accuracy/top1' in log
    out = _run([sys.executable, 'tools/test.py', SM_DEMO, str(work / 'epoch_1.pth'),
                '--work-dir', str(tmp_path / 'test'), '--cfg-options',
                'test_dataloader.dataset.indices=4'])
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'accuracy/top1' in out.stdout + out.stderr


def _run(args, **kwargs):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, **kwargs)


def test_demo_config_trains_and_evaluates_end_to_end(tmp_path):
    """One epoch-capped run of the README's main job through tools/train.py,
    then tools/test.py (also with --tta) on the saved checkpoint."""
    work = tmp_path / 'demo'
    opts = ['--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1',
            'train_dataloader.dataset.indices=8', 'val_dataloader.dataset.indices=8']
    out = _run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(work)] + opts)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'accuracy/top1' in out.stdout + out.stderr
    ckpt = work / 'epoch_1.pth'
    for extra in ([], ['--tta']):
        out = _run([sys.executable, 'tools/test.py', DEMO, str(ckpt), '--work-dir',
                    str(tmp_path / 'test')] + extra + ['--cfg-options',
                                                       'test_dataloader.dataset.indices=4'])
        assert out.returncode == 0, out.stderr[-3000:]
        assert 'accuracy/top1' in out.stdout + out.stderr


@pytest.mark.parametrize('config', [DEMO_DISTILL, SM_DEMO], ids=['teacher', 'mesa'])
def test_two_process_ddp_training_on_cpu(config, tmp_path):
    """tools/dist_train.sh with 2 processes (torchrun, DDP; gloo on CPU): the
    teacher / the MESA EMA copy stay outside DDP, the sampler splits the
    data (32 images, 16 per process and step), and rank 0 checkpoints."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               PORT=str(29500 + os.getpid() % 1000))
    opts = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
            'train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=8']
    if config == SM_DEMO:
        opts.append('model.mesa_start=0.0')
    out = _run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(tmp_path),
                '--cfg-options'] + opts, env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    # mmengine prints the world size as "GPU number" whatever the device
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    steps = [line for line in log.splitlines() if 'Epoch(train)' in line]
    assert len(steps) == 2 and all('[1/1]' in line for line in steps), steps
    if config == SM_DEMO:
        assert all('loss_mesa' in line for line in steps)
    assert (tmp_path / 'epoch_2.pth').exists()
    # tools/dist_test.sh: the same launcher, 2 processes evaluating the checkpoint
    out = _run(['bash', 'tools/dist_test.sh', config, str(tmp_path / 'epoch_2.pth'), '2',
                '--work-dir', str(tmp_path / 'test'), '--cfg-options',
                'test_dataloader.dataset.indices=8'], env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert 'GPU number: 2' in log and 'accuracy/top1' in log


def test_mim_train_mmpretrain_demo(tmp_path):
    mim = shutil.which('mim', path=os.path.dirname(sys.executable))
    assert mim, 'openmim is part of the test environment'
    out = _run([mim, 'train', 'mmpretrain', DEMO, '--work-dir', str(tmp_path),
                '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                'train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=4'])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (tmp_path / 'epoch_1.pth').exists()
