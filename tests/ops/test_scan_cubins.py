"""tools/scan_cubins.py's launch parameters and build (CPU; the run needs a GPU)."""
import ctypes
import json
import os
import subprocess
import sys

import pytest
import torch
from scan_utils import ROOT, load_tool


def _tool():
    return load_tool('scan_cubins')


MANIFEST = dict(
    arg_names=['x_ptr', 'n', 'strides', 'BLOCK', 'scale'],
    signature=[['x_ptr', '*fp32'], ['n', 'i32'], ['strides', ['i32', 'constexpr', 'i64']],
               ['BLOCK', 'constexpr'], ['scale', 'fp32']],
    constants={'2,1': 1, '3': 16}, extra=2)


def test_launch_params_flatten_and_drop_constexprs():
    x = torch.zeros(4)
    params, mismatches = _tool().launch_params(MANIFEST, (x, 7, (3, 1, 2**40)), dict(BLOCK=16,
                                                                                   scale=0.5))
    assert mismatches == []
    assert [type(p) for p in params] == [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32,
                                         ctypes.c_int64, ctypes.c_float, ctypes.c_uint64,
                                         ctypes.c_uint64]
    assert [p.value for p in params] == [x.data_ptr(), 7, 3, 2**40, 0.5, 0, 0]


def test_launch_params_report_constexprs_compiled_otherwise():
    _, mismatches = _tool().launch_params(MANIFEST, (torch.zeros(4), 7, (3, 2, 5)),
                                          dict(BLOCK=32, scale=1.0))
    assert len(mismatches) == 2
    assert mismatches[0].startswith('strides[1]: 2, compiled 1')
    assert mismatches[1].startswith('BLOCK: 32, compiled 16')


def test_launch_params_need_every_argument():
    with pytest.raises(KeyError, match='scale'):
        _tool().launch_params(MANIFEST, (torch.zeros(4), 7, (3, 1, 5)), dict(BLOCK=16))


def test_build_saves_cubins_whose_parameters_the_host_arguments_fill(tmp_path):
    """A real compile for sm_90 (GroupMamba-T stage 1): the build checks that
    the host's arguments flatten to exactly the cubin's parameters."""
    env = dict(os.environ)
    env.pop('TRITON_INTERPRET', None)
    out = tmp_path / 'case'
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'scan_cubins.py'), 'build',
                          '16,56,56', '--set', 'EVICT_LAST=1', '--out', str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    case = json.loads((out / 'case.json').read_text())
    assert case['override'] == {'EVICT_LAST': 1} and case['dtype'] == 'float32'
    assert case['case'] == '16,56,56' and case['layout'] == 'channels-last'
    from mmgroupmamba.ops.triton_scan import _ties_last
    for name in ('fwd', 'bwd'):
        manifest = json.loads((out / f'{name}.json').read_text())
        assert manifest['name'] == f'_{name}_kernel' and manifest['num_warps'] == 8
        assert manifest['extra'] >= 0
        assert (out / f'{name}.cubin').read_bytes()[:4] == b'\x7fELF'
        mem_t = manifest['constants'][str(manifest['arg_names'].index('MEM_T'))]
        assert mem_t == int(_ties_last())
