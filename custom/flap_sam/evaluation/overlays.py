"""PNG overlays (image | ground truth | prediction) of the slices with the most foreground.

For a person at the site to look at; they are written next to the evaluation tables and
never travel (nothing in the federation reads them).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# RGB per class index (0 = background is not drawn): kidney/brain/prostate red, tumour yellow.
CLASS_COLOURS = np.array([[0, 0, 0], [230, 40, 40], [250, 210, 30], [40, 120, 250]], np.float32)


def _grey(slice_xy: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_xy, (1, 99))
    scaled = np.clip((slice_xy - low) / max(high - low, 1e-6), 0, 1)
    return np.repeat((scaled * 255)[..., None], 3, axis=2)


def _overlay(grey: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    colours = CLASS_COLOURS[np.minimum(mask, len(CLASS_COLOURS) - 1)]
    drawn = (mask > 0)[..., None]
    return np.where(drawn, (1 - alpha) * grey + alpha * colours, grey)


def _display(array_xy: np.ndarray) -> np.ndarray:
    """Canonical RAS (X, Y) slice -> display rows/cols with anterior up and patient left on the right."""
    return np.flipud(np.swapaxes(array_xy, 0, 1))


def most_foreground_slices(label: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` axial slices (last axis) with the most foreground voxels, ascending."""
    per_slice = (label > 0).sum(axis=(0, 1))
    order = np.argsort(-per_slice, kind="stable")[:count]
    return sorted(int(z) for z in order if per_slice[z] > 0) or [label.shape[2] // 2]


def write_overlays(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, out_dir: str, case: str, count: int = 3) -> list[str]:
    """Write ``<case>_z<index>.png`` for the ``count`` slices with the most ground-truth foreground.

    Args:
        image, label, prediction: (X, Y, Z) canonical arrays of one case.
    Returns:
        the written paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for z in most_foreground_slices(label, count):
        grey = _grey(_display(image[:, :, z]))
        panels = [grey, _overlay(grey, _display(label[:, :, z])), _overlay(grey, _display(prediction[:, :, z]))]
        path = os.path.join(out_dir, f"{case}_z{z:03d}.png")
        Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
