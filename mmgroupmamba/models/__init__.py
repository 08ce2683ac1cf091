"""The models (torch only; the OpenMMLab registrations live elsewhere)."""
from typing import Mapping, Optional, Union

import torch.nn as nn

from . import groupmamba, spatialmamba
from .groupmamba import (DistillationLinearHead, GroupMamba, GroupMambaClassifier,
                         GroupMambaClassTail, convert_official_state_dict, create_groupmamba)
from .spatialmamba import SpatialMamba, SpatialMambaClassifier, create_spatialmamba

#: Every name :func:`create_model` builds.
MODEL_NAMES = groupmamba.MODEL_NAMES + spatialmamba.MODEL_NAMES


def create_model(name: str, num_classes: int = 1000,
                 pretrained: Optional[Union[str, Mapping]] = None, **kwargs) -> nn.Module:
    """Build a classification network by name (timm style).

    Args:
        name: ``groupmamba_{tiny,small,base}`` (kwargs: ``distillation``,
            ``drop_path_rate``, ``with_cp``, ``in_channels``) or
            ``spatialmamba_{tiny,small,base}`` (``drop_path_rate``,
            ``with_cp``, ``in_channels``).
        pretrained: a checkpoint (path or loaded dict), ours or official,
            loaded strictly.
    """
    if name in groupmamba.MODEL_NAMES:
        return create_groupmamba(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    if name in spatialmamba.MODEL_NAMES:
        return create_spatialmamba(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    raise ValueError(f'create_model: unknown model {name!r}; valid names: {list(MODEL_NAMES)}')


__all__ = ['MODEL_NAMES', 'DistillationLinearHead', 'GroupMamba', 'GroupMambaClassifier',
           'GroupMambaClassTail', 'SpatialMamba', 'SpatialMambaClassifier',
           'convert_official_state_dict', 'create_model', 'create_groupmamba',
           'create_spatialmamba']
