"""tools/benchmark_scan_host.py runs every layer (on the CPU under the
interpreter, or with ``--gpu`` on CUDA; no time is checked: the figures are
the GPU host's, docs/benchmarks.md)."""
import importlib.util
import os

from mmgroupmamba.ops import library

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_layer_runs_and_the_fast_path_is_restored(capsys, kernel_device):
    spec = importlib.util.spec_from_file_location(
        'benchmark_scan_host', os.path.join(ROOT, 'tools', 'benchmark_scan_host.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fast = library.eager_fast_path
    module.main(['--device', kernel_device, '--iters', '1', '--rounds', '1', '--shape', '1,2,2,3'])
    rows = [line.split('|')[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith('| ') and not line.startswith('| layer')]
    assert rows == ['torch.add', 'fwd kernel fn', 'bwd kernel fn', 'fwd op', 'selective_scan_2d',
                    'selective_scan_2d + autograd record', 'selective_scan_2d forward + backward',
                    'selective_scan_2d forward + backward, custom op']
    assert library.eager_fast_path is fast
