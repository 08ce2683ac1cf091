"""tools/benchmark_scan.py's options and inputs (CPU, nothing timed)."""
import pytest
import torch
from scan_utils import load_tool

LAYOUTS = {'--channels-last': 'channels_last', '--model-layouts': 'model_layouts',
           '--grouped-maps': 'grouped_maps'}


def _parser():
    return load_tool('benchmark_scan').build_parser()


def test_one_layout_flag_sets_that_layout_only():
    parser = _parser()
    default = parser.parse_args([])
    assert not any(getattr(default, dest) for dest in LAYOUTS.values())
    for flag, dest in LAYOUTS.items():
        args = parser.parse_args([flag])
        assert {d for d in LAYOUTS.values() if getattr(args, d)} == {dest}


def test_two_layout_flags_are_refused(capsys):
    """Two layouts used to be accepted: the maps were the model's while the
    header said 'grouped'."""
    parser = _parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(['--model-layouts', '--grouped-maps'])
    assert exc.value.code == 2
    assert 'argument --grouped-maps: not allowed with argument --model-layouts' in \
        capsys.readouterr().err


def test_batch_must_be_positive(capsys):
    """--batch (every case at one per-GPU batch) takes positive integers and
    names itself when refusing anything else."""
    parser = _parser()
    assert parser.parse_args(['--batch', '64']).batch == 64
    assert parser.parse_args([]).batch is None
    for bad in ('0', '-2'):
        with pytest.raises(SystemExit):
            parser.parse_args(['--batch', bad])
        assert '--batch' in capsys.readouterr().err


def test_model_layouts_are_the_layers(monkeypatch):
    """``make(model=True)`` (``--model-layouts``, and ``tools/scan_sass.py``'s
    and ``tools/scan_cubins.py``'s option of the same name) gives the scan
    the maps GroupMamba's layer gives it: the same strides for u, delta, B
    and C. A change of the layer's layouts must show here, or the
    benchmarks would time maps the model no longer passes."""
    import mmgroupmamba.models.groupmamba as groupmamba
    seen = {}

    def record(u, delta, A, B, C, directions, **kwargs):
        seen.update(u=u, delta=delta, B=B, C=C)
        return torch.zeros_like(u, dtype=kwargs['out_dtype'])
    monkeypatch.setattr(groupmamba, 'selective_scan_2d', record)
    batch, per, height, width = 2, 20, 6, 5                  # dt rank 2: B, C after 2 columns
    groupmamba.GroupedDirectionalSSM(4 * per)(torch.randn(batch, height, width, 4 * per))
    t = load_tool('benchmark_scan').make(batch, per, height, width, torch.float32, model=True,
                                         device='cpu')
    for name in ('u', 'delta', 'B', 'C'):
        ours = t[name].permute(0, 3, 4, 1, 2)                # (b, G, n, H, W) as (b, H, W, G, n)
        assert (ours.shape, ours.stride()) == (seen[name].shape, seen[name].stride()), name
