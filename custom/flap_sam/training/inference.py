"""Whole-volume inference, every axial slice, in one of two modes (``INFERENCE_MODES``):

* ``overlap`` (the paper's): MONAI's ``sliding_window_inference`` along the slice axis with a
  window of 5 slices and a stride of one slice, so each slice receives the averaged softmax of
  up to 5 stacks; the volume is edge-padded by 2 slices first so the end slices get 5 windows
  too. Each slice passes through SAM 5 times.
* ``centre``: each slice is predicted once, from the stack centred on it (the same stack and
  min-max scaling training uses for that slice). SAM sees each slice as its own image, so the
  5 overlapping predictions differ only by each window's scaling: one forward per slice is
  5x less work for nearly the same result.

Both build each slice's image as the model was trained (``model.slice_channels``: ``flap_sam.data.stacks``).
Two options refine a segmentation (both off by default, the paper's): ``flip_tta`` averages each forward's
softmax with that of its left-right mirror (twice the forwards), and ``min_component_mm3`` removes, class
by class, the connected components of the full-resolution mask smaller than that volume (26-connected,
measured with the volume's voxel spacing).

And the Dice of a segmented volume per class (``dice_per_class``), as the paper and FLamby report it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from flap_sam.data.stacks import (
    HALF,
    STACK_DEPTH,
    PreparedVolume,
    channels_per_slice,
    neighbour_planes,
    plane_indices,
    scale_stack,
    stacks_to_images,
)

INFERENCE_MODES = ("overlap", "centre")


def class_probabilities(model: torch.nn.Module, images: torch.Tensor, amp: bool, flip_tta: bool = False) -> torch.Tensor:
    """(B, 3, S, S) images on the model's device -> (B, K+1, S, S) float32 softmax on CPU; ``flip_tta``: averaged with
    the softmax of the images mirrored left-right (mirrored back)."""
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(images)
        mirrored = model(images.flip(-1)).flip(-1) if flip_tta else None
    probs = torch.softmax(logits.float(), dim=1)
    if mirrored is not None:
        probs = (probs + torch.softmax(mirrored.float(), dim=1)) / 2
    return probs.cpu()


def remove_small_components(mask: np.ndarray, spacing: tuple[float, float, float], min_mm3: float) -> np.ndarray:
    """``mask`` (X, Y, Z) class indices without each class's connected components (26-connected) smaller than
    ``min_mm3`` cubic millimetres at voxel ``spacing`` (mm); their voxels become background. ``min_mm3`` 0: unchanged.

    SciPy's ``ndimage.label`` (a dependency already): MONAI's ``RemoveSmallObjects`` would need scikit-image.
    """
    if min_mm3 <= 0:
        return mask
    from scipy import ndimage

    min_voxels = min_mm3 / float(np.prod(spacing))
    cleaned = mask.copy()
    for c in np.unique(mask):
        if c == 0:
            continue
        components, _count = ndimage.label(mask == c, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel())
        small = sizes < min_voxels
        small[0] = False  # label 0: not this class
        cleaned[small[components]] = 0
    return cleaned


def slice_channels_of(model: torch.nn.Module) -> str:
    """The model's input convention (``ModelSpec.slice_channels``, set when it was built; ``grey`` if unset)."""
    return getattr(model, "slice_channels", "grey")


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    volume: PreparedVolume,
    device: torch.device,
    windows_per_batch: int = 4,
    amp: bool = False,
    mode: str = "overlap",
    flip_tta: bool = False,
) -> torch.Tensor:
    """Class probabilities of a prepared volume at model resolution: (K + 1, Z, S, S) float32 on CPU.

    Args:
        mode: ``overlap`` (5 windows per slice, averaged) or ``centre`` (one forward per slice).
        windows_per_batch: stacks per forward (``centre``: x5 slices per forward, the same images per batch).
    """
    if mode == "centre":
        return _centre_probabilities(model, volume, device, windows_per_batch * STACK_DEPTH, amp, flip_tta)
    if mode != "overlap":
        raise ValueError(f"inference mode {mode!r} is unknown; choose one of {INFERENCE_MODES}")
    model.eval()
    channels = channels_per_slice(slice_channels_of(model))
    planes = volume.image.float()[None] if channels == 1 else neighbour_planes(volume.image)  # (C, Z, S, S)
    padded = F.pad(planes[None], (0, 0, 0, 0, HALF, HALF), mode="replicate")  # (1, C, Z+4, S, S)
    size = volume.image.shape[-1]

    def predictor(windows: torch.Tensor) -> torch.Tensor:  # (n, C, 5, S, S) -> (n, K+1, 5, S, S)
        n = windows.shape[0]
        stacks = scale_stack(windows.transpose(1, 2).reshape(n, STACK_DEPTH * channels, size, size))  # slice-major planes
        probs = class_probabilities(model, stacks_to_images(stacks.to(device), channels), amp, flip_tta)
        return probs.reshape(n, STACK_DEPTH, -1, size, size).transpose(1, 2)

    probs: Any = sliding_window_inference(  # one tensor here (MONAI's return type covers several outputs)
        padded,
        roi_size=(STACK_DEPTH, size, size),
        sw_batch_size=windows_per_batch,
        predictor=predictor,
        overlap=((STACK_DEPTH - 1) / STACK_DEPTH, 0.0, 0.0),
        mode="constant",
    )
    return probs[0, :, HALF:-HALF]


@torch.no_grad()
def _centre_chunks(
    model: nn.Module, volume: PreparedVolume, device: torch.device, slices_per_batch: int, amp: bool, flip_tta: bool = False
) -> Iterator[tuple[int, torch.Tensor]]:
    """``centre`` mode, batch by batch: (first slice, (n, K+1, S, S) probabilities on CPU), each slice from the
    min-max scaled stack centred on it, one forward per slice."""
    model.eval()
    slice_channels = slice_channels_of(model)
    channels = channels_per_slice(slice_channels)
    depth = volume.image.shape[0]
    for start in range(0, depth, slices_per_batch):
        centres = range(start, min(depth, start + slices_per_batch))
        stacks = scale_stack(torch.stack([volume.image[plane_indices(z, depth, slice_channels)].float() for z in centres]))  # (n, 5C, S, S)
        centre = stacks[:, HALF * channels : (HALF + 1) * channels]  # the centre slice only
        yield start, class_probabilities(model, stacks_to_images(centre.to(device), channels), amp, flip_tta)  # (n, K+1, S, S)


def _centre_probabilities(
    model: nn.Module, volume: PreparedVolume, device: torch.device, slices_per_batch: int, amp: bool, flip_tta: bool = False
) -> torch.Tensor:
    chunks = _centre_chunks(model, volume, device, slices_per_batch, amp, flip_tta)
    return torch.cat([probs for _, probs in chunks]).transpose(0, 1)


def _slices_to_mask(probs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(n, K+1, S, S) probabilities of n slices -> (X, Y, n) uint8 classes at the original in-plane size."""
    resized = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)  # (n, K+1, X, Y)
    return resized.argmax(dim=1).permute(1, 2, 0).to(torch.uint8).numpy()


def probabilities_to_mask(probs: torch.Tensor, volume: PreparedVolume, slices_per_chunk: int = 16) -> np.ndarray:
    """(K + 1, Z, S, S) probabilities -> (X, Y, Z) uint8 class mask on the volume's canonical grid.

    Upsampled a few slices at a time, so full-resolution probabilities never exist for the whole volume.
    """
    x, y, depth = volume.source.shape
    mask = np.empty((x, y, depth), np.uint8)
    for start in range(0, depth, slices_per_chunk):
        chunk = probs[:, start : start + slices_per_chunk].transpose(0, 1)  # (n, K+1, S, S)
        mask[:, :, start : start + chunk.shape[0]] = _slices_to_mask(chunk, (x, y))
    return mask


@torch.no_grad()
def segment_volume(
    model: nn.Module,
    volume: PreparedVolume,
    device: torch.device,
    amp: bool = False,
    mode: str = "overlap",
    windows_per_batch: int = 4,
    flip_tta: bool = False,
    min_component_mm3: float = 0.0,
) -> np.ndarray:
    """Class-index mask (X, Y, Z) of one volume, canonical orientation, original in-plane size (``mode``, ``flip_tta``,
    ``min_component_mm3``: see above).

    ``centre`` writes each batch of slices into the mask as it comes: the volume's probabilities are never held whole.
    """
    if mode != "centre":
        probs = predict_probabilities(model, volume, device, windows_per_batch, amp=amp, mode=mode, flip_tta=flip_tta)
        mask = probabilities_to_mask(probs, volume)
    else:
        x, y, depth = volume.source.shape
        mask = np.empty((x, y, depth), np.uint8)
        for start, probs in _centre_chunks(model, volume, device, windows_per_batch * STACK_DEPTH, amp, flip_tta):
            mask[:, :, start : start + probs.shape[0]] = _slices_to_mask(probs, (x, y))
    return remove_small_components(mask, volume.source.spacing, min_component_mm3)


def dice_per_class(
    prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int, device: torch.device | str = "cpu"
) -> np.ndarray:
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
