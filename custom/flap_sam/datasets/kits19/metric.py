"""FLamby's official Fed-KiTS metric."""

from __future__ import annotations

import numpy as np

from flap_sam.training.inference import dice_per_class


def flamby_kits_dice(prediction: np.ndarray, label: np.ndarray) -> float:
    """Mean of Dice(kidney + tumour vs background) and Dice(tumour) for one volume.

    Args:
        prediction, label: (X, Y, Z) class-index arrays (0 background, 1 kidney, 2 tumour).
    Returns:
        a value in [0, 1]; an empty class in both arrays scores 1, in one only 0.
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    kidney_and_tumour = dice_per_class(prediction > 0, label > 0, 1)[0]
    tumour = dice_per_class(prediction == 2, label == 2, 1)[0]
    return float((kidney_and_tumour + tumour) / 2)
