"""The OpenMMLab face of mmgroupmamba: one registry, filled once.

``MODELS`` is a child of mmengine's root model registry with scope
``mmgroupmamba``. Configs of every task name our classes
``type='mmgroupmamba.GroupMamba'``; mmengine's cross-scope lookup finds them
from mmpretrain's, mmdet's or mmseg's default scope, so each class is defined
and registered once and only the library a task needs has to be installed.

This module needs mmengine; :mod:`mmgroupmamba` imports it only when mmengine
is installed, so the core (ops, nn.Modules) still imports with torch alone.
"""
import importlib.util

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from mmengine.runner import CheckpointLoader

from .utils.checkpoint import safe_load

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmgroupmamba',
                  locations=['mmgroupmamba'])


def _load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local-file scheme, through the allow-listed safe loader
    (mmengine 0.10.7's own loader fails under torch>=2.6, see utils/checkpoint)."""
    import os.path as osp

    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location=map_location)


def register_all() -> None:
    """Register the core modules and, where their library is installed, the
    task glue. Idempotent: called once by ``import mmgroupmamba``."""
    if 'GroupMamba' in MODELS.module_dict:
        return
    # `resume` / `load_from` / init_cfg Pretrained all read files through this scheme.
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local_checkpoint, force=True)

    from .models import GroupMamba, SpatialMamba
    MODELS.register_module(module=GroupMamba)
    MODELS.register_module(module=SpatialMamba)
    if importlib.util.find_spec('mmpretrain') is not None:
        from .models import classification  # noqa: F401  (registers on import)
    if importlib.util.find_spec('mmdet') is not None:
        from .models import detection  # noqa: F401  (registers on import)
