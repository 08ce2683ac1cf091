"""tools/benchmark_scan.py's options (CPU: the parser only, nothing timed)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUTS = {'--channels-last': 'channels_last', '--model-layouts': 'model_layouts',
           '--grouped-maps': 'grouped_maps'}


def _parser():
    spec = importlib.util.spec_from_file_location(
        'benchmark_scan', os.path.join(ROOT, 'tools', 'benchmark_scan.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


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
