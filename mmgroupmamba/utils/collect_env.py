"""Print the versions that matter for mmgroupmamba: ``python -m mmgroupmamba.utils.collect_env``."""
import importlib
import platform
import sys
from collections import OrderedDict


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), '__version__', 'unknown')
    except Exception as err:  # report, never fail: this is a diagnostic
        return f'not available ({type(err).__name__}: {err})'


def collect_env() -> 'OrderedDict[str, str]':
    env: 'OrderedDict[str, str]' = OrderedDict()
    env['sys.platform'] = sys.platform
    env['Python'] = sys.version.replace('\n', '')
    env['machine'] = platform.machine()
    import torch
    env['PyTorch'] = torch.__version__
    env['PyTorch CUDA'] = str(torch.version.cuda)
    env['CUDA available'] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        env['GPU'] = ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    env['Triton'] = _version('triton')
    env['NumPy'] = _version('numpy')
    env['MMCV'] = _version('mmcv')
    try:
        from mmcv.ops import get_compiling_cuda_version, get_compiler_version  # needs mmcv._ext
        env['MMCV compiled ops'] = (f'load (compiler {get_compiler_version()}, '
                                    f'CUDA {get_compiling_cuda_version()})')
    except Exception as err:
        env['MMCV compiled ops'] = f'do not load ({type(err).__name__}: {err})'
    for name, module in (('MMEngine', 'mmengine'), ('MMPretrain', 'mmpretrain'),
                         ('MMDetection', 'mmdet'), ('MMSegmentation', 'mmseg'),
                         ('timm', 'timm'), ('mmgroupmamba', 'mmgroupmamba')):
        env[name] = _version(module)
    return env


def main() -> None:
    for key, value in collect_env().items():
        print(f'{key}: {value}')


if __name__ == '__main__':
    main()
