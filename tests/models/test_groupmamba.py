"""GroupMamba: parameter counts, official key compatibility, backbone shapes,
freezing, activation checkpointing, heads, checkpoints and error messages."""
import json
import os

import pytest
import torch

from mmgroupmamba.models import (GroupMamba, GroupMambaClassifier,
                                 convert_official_state_dict, create_model)
from mmgroupmamba.models.groupmamba import (DistillationLinearHead, arch_settings,
                                          official_key_names)

OFFICIAL_JSON = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'reference',
                             'groupmamba_official_state_dict.json')
SMALL_ARCH = dict(stem_channels=8, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                  mlp_ratios=(2, 2, 2, 2))

# Official parameter counts (both heads, 1000 classes) and of the dense
# backbone without the class tail, heads and norm4.
PARAMS = {'tiny': (23_361_917, 20_461_328), 'small': (34_781_555, 31_142_274),
          'base': (57_150_838, 53_511_557)}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_param_counts_and_official_state_dict_loads_strictly(variant):
    """Exact official counts, and the official key/shape list (zero tensors
    built from the reference JSON) converts and loads strictly."""
    with torch.device('meta'):  # shapes only: fast
        model = create_model(f'groupmamba_{variant}')
        dense = GroupMamba(variant, out_norm=False)
        dense_norm = GroupMamba(variant)
    assert _count(model) == PARAMS[variant][0]
    assert _count(dense) == PARAMS[variant][1]
    assert _count(dense_norm) == PARAMS[variant][1] + 2 * arch_settings[variant]['embed_dims'][-1]
    if not os.path.exists(OFFICIAL_JSON):
        pytest.skip('official key list not available')
    with open(OFFICIAL_JSON) as f:
        shapes = json.load(f)[f'groupmamba_{variant}']
    official = {k: torch.zeros(s, dtype=torch.long if k.endswith('num_batches_tracked')
                               else torch.float32) for k, s in shapes.items()}
    converted = convert_official_state_dict(official)
    assert sum(v.numel() for k, v in converted.items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))) \
        == PARAMS[variant][0]
    model.load_state_dict(converted, strict=True, assign=True)  # checks keys and shapes
    assert {k.split('.')[0] for k in model.state_dict()} == {'backbone', 'neck', 'head'}


def test_backbone_shapes_tiny_224():
    model = GroupMamba('tiny').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 56, 56), (1, 128, 28, 28),
                                               (1, 348, 14, 14), (1, 448, 7, 7)]
    assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('hw', [(512, 512), (800, 1333), (513, 769), (33, 17)])
def test_backbone_shapes_any_size(hw):
    """Side s -> ceil(s / 2^(i+2)) at stage i (reduced width, same strides)."""
    h, w = hw
    model = GroupMamba(SMALL_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    want = []
    for i, c in enumerate(SMALL_ARCH['embed_dims']):
        hh, ww = h, w
        for _ in range(i + 2):
            hh, ww = -(-hh // 2), -(-ww // 2)
        want.append((1, c, hh, ww))
    assert [tuple(o.shape) for o in outs] == want


@pytest.mark.parametrize('out_indices', [(0,), (1, 3), (2,), (-1,), (0, 1, 2, 3)])
def test_out_indices_and_out_norms(out_indices):
    model = GroupMamba(SMALL_ARCH, out_indices=out_indices).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 48))
    idx = sorted(i % 4 for i in out_indices)
    assert [o.shape[1] for o in outs] == [SMALL_ARCH['embed_dims'][i] for i in idx]
    # every output is LayerNorm'ed: stages 0-2 by the official norms, 3 by the new one
    assert model.stages[3].norm is not None if 3 in idx else model.stages[3].norm is None
    for o in outs:
        mean = o.mean(dim=1)
        assert mean.abs().max() < 1e-4  # weight 1 / bias 0 at init: zero channel mean


def test_classifier_structure_and_head_modes():
    model = GroupMambaClassifier(SMALL_ARCH, num_classes=7)
    assert model.backbone.out_indices == (3,) and model.backbone.stages[3].norm is None
    x = torch.randn(2, 3, 32, 32)
    model.train()
    a, d = model(x)
    assert a.shape == d.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        avg = model(x)
        feat = model.forward_features(x)
        assert torch.allclose(avg, (model.head.fc(feat) + model.head.dist_fc(feat)) / 2)
    head = DistillationLinearHead(16, 5, distillation=False)
    assert head.dist_fc is None and 'dist_fc.weight' not in head.state_dict()
    assert head.train()(torch.randn(3, 16)).shape == (3, 5)


def test_frozen_stages_and_norm_eval():
    model = GroupMamba(SMALL_ARCH, frozen_stages=2, norm_eval=True)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('stem.', 'stages.0.', 'stages.1.'))
        assert p.requires_grad is not frozen, name
    assert not model.stem.training and not model.stages[1].training
    assert model.stages[2].training and model.stages[3].blocks[0].training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)

    model = GroupMamba(SMALL_ARCH, frozen_stages=0).train()
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())
    assert not model.stem.training and model.stages[0].training
    model = GroupMamba(SMALL_ARCH, norm_eval=True).train()
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('with_cp, n_checkpointed', [(True, 4), ((True, False, False, True), 2)])
def test_with_cp_gives_the_same_gradients(with_cp, n_checkpointed, monkeypatch):
    """All stages or only the flagged ones recompute their blocks (one
    checkpoint call per block), with the gradients of the plain model."""
    from mmgroupmamba.models import common
    calls = []
    real = common.cp.checkpoint
    monkeypatch.setattr(common.cp, 'checkpoint',
                        lambda fn, *a, **kw: calls.append(fn) or real(fn, *a, **kw))
    torch.manual_seed(0)
    plain = GroupMamba(SMALL_ARCH, drop_path_rate=0.2).train()
    ckpt = GroupMamba(SMALL_ARCH, drop_path_rate=0.2, with_cp=with_cp).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 24)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path draws
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert len(calls) == n_checkpointed and calls == [
        blk for stage, flag in zip(ckpt.stages, ckpt.with_cp) if flag for blk in stage.blocks]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7, msg=k)


def test_triton_scan_trains_the_same_through_either_autograd_path(kernel_device, monkeypatch):
    """In training (activation checkpointing on stage 0 included) the Triton
    scan runs as EagerScan, and gives the gradients of the custom op's path
    bit for bit (the same kernels). On the CPU the model's scan is sent to
    the Triton interpreter."""
    import importlib

    from mmgroupmamba.ops import library
    # the module (the package's attribute of that name is the function)
    scan_module = importlib.import_module('mmgroupmamba.ops.selective_scan')
    monkeypatch.setattr(scan_module, '_pick_backend', lambda backend, device: 'triton')
    real, taken = library.eager_fast_path, []
    torch.manual_seed(0)
    model = GroupMamba(SMALL_ARCH, with_cp=(True, False, False, False)).train().to(kernel_device)
    x = torch.randn(2, 3, 20, 16, device=kernel_device)
    grads = []
    for fast in (real, lambda use_triton: False):
        monkeypatch.setattr(library, 'eager_fast_path',
                            lambda use_triton, fast=fast: taken.append(fast(use_triton))
                            or taken[-1])
        model.zero_grad()
        torch.manual_seed(1)  # same drop-path draws
        sum((o * o).mean() for o in model(x)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    # 4 layers, and stage 0's again in the recomputation; then the custom op's run
    assert taken == [True] * 5 + [False] * 5
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


def test_init_weights_default_and_our_checkpoint(tmp_path):
    src = GroupMambaClassifier(SMALL_ARCH, num_classes=4)
    # mmengine-style checkpoint of the whole classifier
    path = tmp_path / 'ours.pth'
    torch.save({'state_dict': src.state_dict(), 'meta': {'epoch': 1}}, path)
    bb = GroupMamba(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                               prefix='backbone.'))
    bb.init_weights()
    own = bb.state_dict()
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(own[k], v), k
    assert set(own) - set(src.backbone.state_dict()) == {'stages.3.norm.weight',
                                                         'stages.3.norm.bias'}
    # the classifier loads its own checkpoint strictly
    other = GroupMambaClassifier(SMALL_ARCH, num_classes=4)
    other.load_checkpoint(str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    # default init: official statistics of the fused SSM parameters
    bb = GroupMamba(SMALL_ARCH)
    bb.init_weights()
    ssm = bb.stages[0].blocks[0].mixer.ssm
    assert torch.all(ssm.A_logs == 0) and torch.all(ssm.Ds == 1)
    dt = torch.nn.functional.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert ssm.dt_projs_weight.abs().max() <= ssm.dt_rank ** -0.5
    assert bb.stages[0].blocks[0].mixer.skip_scale.item() == 1.0


def test_errors_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="arch: unknown architecture 'huge'"):
        GroupMamba('huge')
    with pytest.raises(ValueError, match=r"missing \['mlp_ratios'\]"):
        GroupMamba(dict(stem_channels=8, embed_dims=(16, 32), depths=(1, 1)))
    with pytest.raises(ValueError, match=r"arch\['embed_dims'\].*divisible by 4"):
        GroupMamba(dict(stem_channels=8, embed_dims=(16, 34), depths=(1, 1), mlp_ratios=(2, 2)))
    with pytest.raises(ValueError, match='same non-zero length'):
        GroupMamba(dict(stem_channels=8, embed_dims=(16, 32), depths=(1,), mlp_ratios=(2, 2)))
    with pytest.raises(ValueError, match='out_indices'):
        GroupMamba(SMALL_ARCH, out_indices=(4,))
    with pytest.raises(ValueError, match='frozen_stages'):
        GroupMamba(SMALL_ARCH, frozen_stages=5)
    with pytest.raises(ValueError, match=r'with_cp: expected a bool or one bool per stage \(4'):
        GroupMamba(SMALL_ARCH, with_cp=(True, False))
    model = GroupMamba(SMALL_ARCH)
    with pytest.raises(ValueError, match=r'x: expected an image batch of shape \(batch, 3, H, W\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"valid names: \['groupmamba_tiny'"):
        create_model('groupmamba_huge')
    with pytest.raises(KeyError, match='not an official GroupMamba state dict'):
        convert_official_state_dict({'foo.weight': torch.zeros(1)})
    # the official tiny's keys (the key check comes before any shape is read;
    # no dependence on the shared reference JSON, which a CI clone lacks)
    sd = {k: torch.zeros(1) for k in official_key_names(arch_settings['tiny']['depths'])}
    sd.pop('block2.1.attn.mamba_g3.Ds')
    sd['block1.0.attn.extra'] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing official keys: \['block2.1.attn.mamba_g3.Ds'\]"
                                       r".*unknown keys: \['block1.0.attn.extra'\]"):
        convert_official_state_dict(sd)
    # a checkpoint of another architecture: clear error listing the keys
    src = GroupMambaClassifier(dict(SMALL_ARCH, depths=(1, 2, 1, 1)), num_classes=2)
    path = tmp_path / 'other.pth'
    torch.save(src.state_dict(), path)
    bb = GroupMamba(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match=r"unexpected keys: \['stages.1.blocks.1"):
        bb.init_weights()
    with pytest.raises(ValueError, match="only type='Pretrained'"):
        GroupMamba(SMALL_ARCH, init_cfg=dict(type='Kaiming')).init_weights()
