"""Choosing the torch device from a setting."""

from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
