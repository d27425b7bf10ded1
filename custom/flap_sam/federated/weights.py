"""Moving the exchanged tensors between the model and FLARE's DXO payload (numpy arrays)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def export_weights(model: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """The named parameters as float32 numpy arrays (what a site sends): copies, which later training does not change.

    (On CPU ``tensor.numpy()`` shares the parameter's memory: without the copy, a kept "received"
    model or a result still being sent would follow the optimiser's in-place updates.)
    """
    params = dict(model.named_parameters())
    return {name: params[name].detach().float().cpu().numpy().copy() for name in names}


def import_weights(model: nn.Module, weights: dict, names: list[str], source: str) -> None:
    """Copy received tensors into the model; they must be exactly ``names`` with matching shapes.

    Raises ``ValueError`` naming ``source`` when keys are missing, unexpected or mis-shaped.
    """
    expected, received = set(names), set(weights)
    if expected != received:
        missing, extra = sorted(expected - received), sorted(received - expected)
        raise ValueError(f"{source}: model does not match the preset (missing {missing[:3]}, unexpected {extra[:3]})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            value = torch.as_tensor(np.asarray(weights[name]))
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
