"""Dice per class and volume, as the paper and FLamby report it."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot


def dice_per_class(prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Binary Dice of each foreground class for one volume.

    Args:
        prediction, label: (X, Y, Z) class-index arrays on the same grid.
        num_classes: foreground classes K.

    Returns:
        (K,) float array; a class absent from both prediction and label scores 1, absent
        from exactly one scores 0 (MONAI ``compute_dice`` with ``ignore_empty=False``).
    """
    pred = one_hot(torch.as_tensor(np.asarray(prediction), dtype=torch.long)[None, None], num_classes + 1)
    true = one_hot(torch.as_tensor(np.asarray(label), dtype=torch.long)[None, None], num_classes + 1)
    return compute_dice(pred, true, include_background=False, ignore_empty=False)[0].numpy()
