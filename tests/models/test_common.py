"""Pieces shared by both backbones (mmgroupmamba.models.common)."""
import pytest
import torch
import torch.nn as nn

from mmgroupmamba.models import GroupMamba, SpatialMamba


@pytest.mark.parametrize('cls', [GroupMamba, SpatialMamba])
def test_default_init_of_linear_and_layernorm(cls):
    """Both official codebases init Linear weights trunc_normal(std 0.02) with
    zero bias and LayerNorm to 1 / 0 (``init_linear_norm_``); a random init
    must keep that (the SSM's own parameters are tested per model)."""
    torch.manual_seed(0)
    model = cls('tiny')
    model.init_weights()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert linears and norms
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 5e-4 and abs(weights.mean().item()) < 5e-4
    assert all(torch.all(m.bias == 0) for m in linears if m.bias is not None)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
