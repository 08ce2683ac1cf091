"""Safe checkpoint loading: mmengine resume under torch>=2.6, official-style
checkpoints without yacs, and refusal of anything outside the allow-list."""
import io
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from mmgroupmamba.utils.checkpoint import UnsafeCheckpointError, extract_state_dict, safe_load


def _save(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_numpy_payload_loads():
    out = safe_load(_save({'scalar': np.float64(2.5), 'array': np.arange(4, dtype=np.int64),
                           'f32': np.ones(2, np.float32), 'w': torch.ones(3)}))
    assert out['scalar'] == 2.5 and out['array'].tolist() == [0, 1, 2, 3]
    assert out['f32'].dtype == np.float32 and torch.equal(out['w'], torch.ones(3))


class _RunsCode:
    def __reduce__(self):
        return (exec, ('raise SystemExit("unpickling executed code")',))


def test_disallowed_global_is_refused_with_its_name():
    with pytest.raises(UnsafeCheckpointError, match='exec'):
        safe_load(_save({'state_dict': {}, 'payload': _RunsCode()}))
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def test_official_release_with_yacs_cfgnode_loads_without_yacs(monkeypatch):
    # Pickle a CfgNode the way yacs defines it (a dict subclass with attributes
    # set in __init__), then make yacs unavailable before loading.
    yacs, yacs_config = types.ModuleType('yacs'), types.ModuleType('yacs.config')

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__['__immutable__'] = False

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    yacs_config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', yacs_config)
    weights = {'head.weight': torch.randn(3, 2)}
    buf = _save({'model': weights, 'config': CfgNode({'MODEL': CfgNode({'TYPE': 'groupmamba'})}),
                 'epoch': 299})
    monkeypatch.delitem(sys.modules, 'yacs')
    monkeypatch.delitem(sys.modules, 'yacs.config')
    ckpt = safe_load(buf)
    assert ckpt['config']['MODEL']['TYPE'] == 'groupmamba'
    assert torch.equal(extract_state_dict(ckpt)['head.weight'], weights['head.weight'])


@pytest.mark.parametrize('wrap', [lambda sd: sd, lambda sd: {'model': sd},
                                  lambda sd: {'model_ema': sd}, lambda sd: {'state_dict': sd}])
def test_extract_state_dict_forms(wrap):
    sd = {'a': torch.zeros(1)}
    assert extract_state_dict(wrap(sd)) is sd


def test_extract_state_dict_error_names_the_form():
    with pytest.raises(ValueError, match="'state_dict', 'model' or 'model_ema'"):
        extract_state_dict({'meta': 1})


def test_mmengine_checkpoint_resume(tmp_path):
    """Train 1 epoch with mmengine, save, then resume and train epoch 2."""
    import mmgroupmamba  # noqa: F401  (registers the safe local loader)
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class ToyModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, labels, mode='tensor'):
            pred = self.linear(inputs).squeeze(-1)  # default_collate stacks the batch
            if mode == 'loss':
                return dict(loss=((pred - labels) ** 2).mean())
            return pred

    data = [dict(inputs=torch.randn(2), labels=torch.tensor(1.0)) for _ in range(8)]

    def make_runner(**kwargs):
        return Runner(model=ToyModel(), work_dir=str(tmp_path),
                      train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler'),
                                            batch_size=4, collate_fn=dict(type='default_collate')),
                      optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                      default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
                      env_cfg=dict(dist_cfg=dict(backend='gloo')), default_scope='mmengine',
                      **kwargs)

    make_runner(train_cfg=dict(by_epoch=True, max_epochs=1)).train()
    ckpt = tmp_path / 'epoch_1.pth'
    # The checkpoint really carries the types torch's default refuses.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt)
    loaded = safe_load(ckpt)
    assert {'meta', 'message_hub', 'state_dict', 'optimizer'} <= set(loaded)

    runner = make_runner(train_cfg=dict(by_epoch=True, max_epochs=2), resume=True,
                         load_from=str(ckpt))
    runner.train()
    assert runner.epoch == 2 and runner.iter == 4
    assert (tmp_path / 'epoch_2.pth').exists()


class _GetattrOther:
    def __reduce__(self):
        import collections
        return (getattr, (collections.OrderedDict, 'fromkeys'))


def test_getattr_is_allowed_only_for_history_buffer_statistics():
    import mmgroupmamba  # noqa: F401
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.0)
    out = safe_load(_save({'hub': buf}))
    assert out['hub'].mean() == 1.0
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        safe_load(_save({'x': _GetattrOther()}))
