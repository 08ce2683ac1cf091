"""Install-level guarantees: the core imports with torch alone, the OpenMMLab
registration works across scopes, and collect_env reports every version."""
import os
import subprocess
import sys
import textwrap


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENMMLAB = ('mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg')


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_core_imports_and_runs_with_torch_only():
    # Make every OpenMMLab package absent, as in an environment with only torch
    # (+ triton): a None entry in sys.modules makes find_spec() return None and
    # any import of it fail.
    out = _run(f"""
        import sys
        for name in {OPENMMLAB!r}:
            sys.modules[name] = None
        import torch, mmgroupmamba
        from mmgroupmamba.ops import selective_scan
        assert all(sys.modules[name] is None for name in {OPENMMLAB!r}), 'OpenMMLab imported'
        y = selective_scan(torch.randn(1, 4, 5), torch.randn(1, 4, 5), -torch.rand(4, 1),
                           torch.randn(1, 1, 5), torch.randn(1, 1, 5))
        m = mmgroupmamba.create_model('groupmamba_tiny', num_classes=3).eval()
        with torch.no_grad():
            print(tuple(y.shape), tuple(m(torch.randn(1, 3, 32, 32)).shape))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['(1,', '4,', '5)', '(1,', '3)']


def test_registered_once_and_found_from_every_task_scope():
    import mmgroupmamba  # noqa: F401
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmgroupmamba.models import GroupMamba
    from mmgroupmamba.registry import MODELS
    assert MODELS.scope == 'mmgroupmamba' and MODELS.get('GroupMamba') is GroupMamba
    for registry in (MMPRETRAIN_MODELS, MMDET_MODELS, MMSEG_MODELS):
        assert registry.get('mmgroupmamba.GroupMamba') is GroupMamba
        # Bare names stay out of the shared namespaces.
        assert registry.get('GroupMamba') is None


def test_collect_env_reports_every_version():
    out = subprocess.run([sys.executable, '-m', 'mmgroupmamba.utils.collect_env'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = dict(line.split(': ', 1) for line in out.stdout.strip().splitlines())
    for key in ('Python', 'PyTorch', 'PyTorch CUDA', 'Triton', 'MMCV', 'MMEngine', 'MMPretrain',
                'MMDetection', 'MMSegmentation', 'mmgroupmamba'):
        assert key in report and 'not available' not in report[key], (key, report.get(key))
    assert report['MMCV compiled ops'].startswith('load'), report['MMCV compiled ops']


def test_pkg_resources_available_for_mim_and_mmengine():
    import pkg_resources  # noqa: F401  (setuptools < 82)
    import mim  # noqa: F401
