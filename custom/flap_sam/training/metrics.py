"""Dice per class and volume, as the paper and FLamby report it."""

from __future__ import annotations

import numpy as np
import torch


def dice_per_class(prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Binary Dice of each foreground class for one volume.

    The same numbers as MONAI's ``compute_dice(one_hot(pred), one_hot(label), include_background=False,
    ignore_empty=False)``, counted one class at a time instead: a one-hot of a full-resolution CT
    volume is (K + 1) x 4 bytes per voxel (about 2 GB for a 512 x 512 x 600 KiTS case), one
    class's boolean masks are 2 bytes per voxel.

    Args:
        prediction, label: (X, Y, Z) class-index arrays on the same grid.
        num_classes: foreground classes K.
        device: where to count (a GPU, when the site has one).

    Returns:
        (K,) float array; a class absent from both prediction and label scores 1, absent
        from exactly one scores 0.
    """
    pred = torch.as_tensor(np.asarray(prediction)).to(device)
    true = torch.as_tensor(np.asarray(label)).to(device)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(true.shape)} are not on the same grid")
    scores = np.zeros(num_classes)
    for c in range(1, num_classes + 1):
        p, t = pred == c, true == c
        total = int(torch.count_nonzero(p)) + int(torch.count_nonzero(t))  # not .sum(): that makes an int64 copy
        scores[c - 1] = 1.0 if total == 0 else 2.0 * int(torch.count_nonzero(p & t)) / total
    return scores
