"""mmgroupmamba: GroupMamba (and Spatial-Mamba) backbones for OpenMMLab.

``import mmgroupmamba`` needs only torch: the ops and nn.Modules are plain
PyTorch. When mmengine is installed the package also registers its modules in
the ``mmgroupmamba`` registry scope (see :mod:`mmgroupmamba.registry`), which
is what a config's ``custom_imports=dict(imports=['mmgroupmamba'])`` relies on.
"""
import importlib.util

from .models import (GroupMamba, GroupMambaClassifier, SpatialMamba, SpatialMambaClassifier,
                     convert_official_state_dict, create_model)
from .version import __version__

if importlib.util.find_spec('mmengine') is not None:
    from .registry import register_all

    register_all()

__all__ = ['__version__', 'create_model', 'convert_official_state_dict', 'GroupMamba',
           'GroupMambaClassifier', 'SpatialMamba', 'SpatialMambaClassifier']
