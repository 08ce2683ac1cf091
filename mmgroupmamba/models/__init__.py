"""GroupMamba models (torch only; the OpenMMLab registrations live elsewhere)."""
from .groupmamba import (MODEL_NAMES, DistillationLinearHead, GroupMamba, GroupMambaClassifier,
                         GroupMambaClassTail, arch_settings, convert_official_state_dict,
                         create_model)

__all__ = ['MODEL_NAMES', 'DistillationLinearHead', 'GroupMamba', 'GroupMambaClassifier',
           'GroupMambaClassTail', 'arch_settings', 'convert_official_state_dict', 'create_model']
