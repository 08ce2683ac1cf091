"""Helpers shared by the model tests."""
import math
from typing import Callable, Sequence, Tuple

import torch
import torch.nn as nn

Rule = Tuple[Tuple[str, ...], Callable[[torch.Tensor], torch.Tensor]]


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, rules: Sequence[Rule] = ()) -> nn.Module:
    """Non-trivial values for every parameter and BatchNorm buffer, so that
    every mapping or initialisation error shows (the inits set many of them
    to 0 or 1).

    ``rules``: (name suffixes, r -> value) pairs tried first, for a model's
    own parameters; then A_logs, dt biases (around -2, as Mamba's), D / gate
    / norm scales around 1, other vectors around 0 and matrices scaled by
    their fan-in. ``r`` is standard normal, drawn in float64.
    """
    g = torch.Generator().manual_seed(seed)
    common: Sequence[Rule] = (
        (('A_logs',), lambda r: 0.5 * r),
        (('dt_projs_bias',), lambda r: 0.5 * r - 2.0),
        (('Ds', 'skip_scale'), lambda r: 1.0 + 0.2 * r),
    )
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        rule = next((f for suffixes, f in (*rules, *common) if name.endswith(suffixes)), None)
        if rule is not None:
            value = rule(r)
        elif p.dim() == 1:
            value = 1.0 + 0.2 * r if name.endswith('weight') else 0.1 * r
        else:
            value = r / math.sqrt(p[0].numel() if p.dim() > 1 else 1)
        p.copy_(value.to(p.dtype))
    for name, b in model.named_buffers():
        if name.endswith('running_mean'):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith('running_var'):
            b.copy_(1.0 + 0.2 * torch.rand(b.shape, generator=g))
    return model
