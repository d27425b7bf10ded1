"""2.5D samples: stacks of 5 consecutive axial slices, resized to the model size.

A volume is resized in-plane to S x S once, normalised (``intensity``) and kept in memory as
(Z, S, S) float16 with a uint8 label; its full-resolution voxels are not kept (a scored volume's
label is read again from its file). The sample at slice z is slices z-2..z+2 (edge-padded at the volume ends),
min-max scaled to [0, 1] per stack. The model sees each slice as a 3-channel image, built as the job's
``slice_channels`` says (``SLICE_CHANNELS``):

* ``grey`` (the paper's): the slice's grey value repeated over the three channels;
* ``neighbours``: the slice below, the slice, the slice above (z-1, z, z+1; at a volume's first and last
  slice the slice itself stands in for the missing neighbour), so each image carries the through-plane
  context a thin structure needs.

A stack then holds ``5 x C`` planes, slice-major (C = 1 or 3 channels per slice), and its label the 5 slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCoarseDropoutd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandHistogramShiftd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
    ScaleIntensity,
    SomeOf,
    ThresholdIntensityd,
)
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset, WeightedRandomSampler

from flap_sam.data.intensity import IntensityNormalizer
from flap_sam.data.volumes import Volume, VolumeSource

STACK_DEPTH = 5
HALF = STACK_DEPTH // 2
SLICE_CHANNELS = ("grey", "neighbours")


STORAGE_DTYPE = torch.float16  # normalised intensities (z-scores or [0, 1]) need no more; half of float32's memory


@dataclass
class PreparedVolume:
    """A normalised volume at model resolution, compact: about Z x S x S x 3 bytes.

    Attributes:
        image: (Z, S, S) float16 tensor, normalised intensities (``float()`` before computing with it).
        label: (Z, S, S) uint8 tensor or None.
        source: the case's files and original grid (for scoring at full resolution and writing results back).
    """

    image: torch.Tensor
    label: torch.Tensor | None
    source: VolumeSource


RESIZE_SLICES = 32  # slices resized at a time: a float32 copy of only this many full-resolution slices exists


def resize_volume(volume: Volume, image_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In-plane resize to ``image_size``: image (Z, S, S) float32 (bilinear), label (Z, S, S) uint8 (nearest) or None.

    torch's interpolation, as MONAI's ``Resize(mode="bilinear" / "nearest", anti_aliasing=False)`` calls
    it (the same numbers), a few slices at a time, so a volume stored as int16 is never held as float32 whole.
    """
    _x, _y, depth = volume.image.shape
    image = torch.empty(depth, image_size, image_size)
    label = None if volume.label is None else torch.empty(depth, image_size, image_size, dtype=torch.uint8)
    for z0 in range(0, depth, RESIZE_SLICES):
        z1 = min(depth, z0 + RESIZE_SLICES)
        chunk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume.image[:, :, z0:z1], 2, 0), dtype=np.float32))
        image[z0:z1] = F.interpolate(chunk[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
        if label is not None and volume.label is not None:
            chunk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume.label[:, :, z0:z1], 2, 0)))
            label[z0:z1] = F.interpolate(chunk[:, None], size=(image_size, image_size), mode="nearest")[:, 0]
    return image, label


def normalize_resized(image: torch.Tensor, normalizer: IntensityNormalizer) -> torch.Tensor:
    """Normalise a resized (Z, S, S) image and store it compactly (``STORAGE_DTYPE``)."""
    return torch.as_tensor(normalizer(image.numpy())).to(STORAGE_DTYPE).contiguous()


def prepare_volume(volume: Volume, normalizer: IntensityNormalizer, image_size: int) -> PreparedVolume:
    """Resize in-plane to ``image_size`` (image: bilinear, label: nearest), then normalise.

    Resizing first makes normalisation work on the small array; the normaliser is voxel-wise
    (CT) or uses the volume's own percentile (MRI), so the order barely matters, and training,
    validation and ``flap-sam infer`` all use this one order.
    """
    image, label = resize_volume(volume, image_size)
    return PreparedVolume(normalize_resized(image, normalizer), label, volume.source)


def stack_indices(z: int, depth: int) -> list[int]:
    """Slice indices of the stack centred on ``z``, edge-padded: z-2..z+2 clamped to 0..depth-1."""
    return [min(max(i, 0), depth - 1) for i in range(z - HALF, z + HALF + 1)]


def channels_per_slice(slice_channels: str) -> int:
    """Planes a slice's image is built from: 1 (``grey``) or 3 (``neighbours``)."""
    if slice_channels not in SLICE_CHANNELS:
        raise ValueError(f"slice_channels: {slice_channels!r} is not one of {list(SLICE_CHANNELS)}")
    return 1 if slice_channels == "grey" else 3


def plane_indices(z: int, depth: int, slice_channels: str = "grey") -> list[int]:
    """The planes of the stack centred on ``z``, slice-major: ``5 x C`` slice indices.

    ``grey``: ``stack_indices``. ``neighbours``: for each stack slice s, (s-1, s, s+1), each clamped to
    0..depth-1, so slice 0's image is (0, 0, 1) wherever it appears in a stack.
    """
    slices = stack_indices(z, depth)
    if channels_per_slice(slice_channels) == 1:
        return slices
    return [min(max(s + d, 0), depth - 1) for s in slices for d in (-1, 0, 1)]


def neighbour_planes(image: torch.Tensor) -> torch.Tensor:
    """(Z, S, S) -> (3, Z, S, S) float32: channel c at slice z is slice z-1+c, clamped to the volume."""
    depth = image.shape[0]
    below = torch.clamp(torch.arange(depth) - 1, min=0)
    above = torch.clamp(torch.arange(depth) + 1, max=depth - 1)
    return torch.stack([image[below], image, image[above]]).float()


_scale_each = ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=True)


def scale_stack(stacks: torch.Tensor) -> torch.Tensor:
    """Min-max scale each stack to [0, 1], all its planes together: (P, S, S) or (N, P, S, S) (a constant stack becomes 0)."""
    if stacks.ndim == 3:
        return scale_stack(stacks[None])[0]
    scaled = convert_to_tensor(_scale_each(stacks.reshape(stacks.shape[0], -1)), track_meta=False)  # plain tensor, no MetaTensor
    return scaled.reshape(stacks.shape).float()


def acquisition_transforms() -> list[Any]:
    """What another scanner or protocol does to an image in [0, 1], as MONAI simulates it (image only).

    A smooth multiplicative bias field (coil sensitivity, beam hardening), a non-linear remapping of
    intensities (another protocol's contrast), Gaussian noise (dose, field strength) and a coarser
    acquisition resampled back (slice thickness, reconstruction), each on about one sample in three;
    the result is clamped back to [0, 1].
    """
    return [
        RandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.3),
        RandHistogramShiftd("image", num_control_points=(5, 10), prob=0.3),
        RandGaussianNoised("image", std=0.03, prob=0.3),
        RandSimulateLowResolutiond("image", zoom_range=(0.5, 1.0), upsample_mode="bilinear", prob=0.3),
        ThresholdIntensityd("image", threshold=1.0, above=False, cval=1.0),
        ThresholdIntensityd("image", threshold=0.0, above=True, cval=0.0),
    ]


def build_augmentation(image_size: int, acquisition: bool = False) -> Compose:
    """The paper's augmentations, where MONAI has them, on {"image": (5 x C, S, S), "label": (5, S, S)}.

    rot90/flip, rotation ±15°, gamma, random erasing, then two of {shear, scale, translate,
    contrast, brightness, sharpness}. (Posterize has no MONAI transform and is left out.)
    ``acquisition``: then ``acquisition_transforms`` (the setting ``acquisition_augment``).
    """
    keys = ("image", "label")
    interp = ("bilinear", "nearest")
    return Compose(
        [
            RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotated(keys, range_x=math.radians(15), prob=0.5, mode=interp, padding_mode="zeros"),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            RandCoarseDropoutd("image", holes=1, spatial_size=image_size // 8, max_spatial_size=image_size // 4, prob=0.2),
            SomeOf(
                [
                    RandAffined(keys, prob=1.0, shear_range=(0.2, 0.2), mode=interp, padding_mode="zeros"),
                    RandAffined(keys, prob=1.0, scale_range=(0.15, 0.15), mode=interp, padding_mode="zeros"),
                    RandAffined(keys, prob=1.0, translate_range=(image_size // 10, image_size // 10), mode=interp, padding_mode="zeros"),
                    RandAdjustContrastd("image", prob=1.0, gamma=(0.8, 1.25)),
                    RandScaleIntensityd("image", factors=0.2, prob=1.0),
                    RandGaussianSharpend("image", prob=1.0),
                ],
                num_transforms=2,
            ),
            *(acquisition_transforms() if acquisition else []),
        ]
    )


class SliceStackDataset(Dataset):
    """Every axial slice of every volume as a 2.5D training sample.

    Item: ``{"image": (5 x C, S, S) float32 in [0, 1], "label": (5, S, S) int64}`` (C: ``channels_per_slice``).

    Attributes:
        classes_present: (N, K) bool, which foreground classes the centre slice of sample i holds
            (K: the highest label value among the volumes).
    """

    def __init__(self, volumes: list[PreparedVolume], augment: Compose | None = None, seed: int = 0, slice_channels: str = "grey") -> None:
        labels = [v.label for v in volumes]
        if any(label is None for label in labels):
            raise ValueError("training volumes need labels")
        self.labels: list[torch.Tensor] = [label for label in labels if label is not None]  # (Z, S, S) each, of ``volumes``
        self.volumes = volumes
        self.augment = augment
        self.slice_channels = slice_channels
        channels_per_slice(slice_channels)
        if augment is not None:
            augment.set_random_state(seed=seed)
        self.index = [(vi, z) for vi, v in enumerate(volumes) for z in range(v.image.shape[0])]
        num_classes = max((int(label.max()) for label in self.labels if label.numel()), default=0)
        self.classes_present = np.zeros((len(self.index), num_classes), bool)
        for i, (vi, z) in enumerate(self.index):
            counts = torch.bincount(self.labels[vi][z].flatten().long(), minlength=num_classes + 1)
            self.classes_present[i] = (counts[1:] > 0).numpy()

    @property
    def has_foreground(self) -> np.ndarray:
        """(N,) bool: the centre slice of sample i holds any foreground."""
        return np.asarray(self.classes_present.any(axis=1))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        vi, z = self.index[i]
        v = self.volumes[vi]
        depth = v.image.shape[0]
        sample = {
            "image": scale_stack(v.image[plane_indices(z, depth, self.slice_channels)].float()),
            "label": self.labels[vi][stack_indices(z, depth)].float(),
        }
        if self.augment is not None:
            sample = self.augment(sample)
        image = convert_to_tensor(sample["image"], track_meta=False).float().clamp_(0.0, 1.0)
        label = convert_to_tensor(sample["label"], track_meta=False).round().long()
        return {"image": image, "label": label}


FOREGROUND_SAMPLING = ("slice", "class")


def sampling_weights(classes_present: np.ndarray, foreground_fraction: float, per_class: bool = False) -> np.ndarray:
    """(N,) weights, summing to 1, of the N samples whose centre slices hold ``classes_present`` (N, K) bool.

    About ``foreground_fraction`` of the draws are centred on a slice with foreground: ``per_class`` false
    (``foreground_sampling = slice``), any foreground slice as often as any other; true (``class``), that
    share split evenly among the classes some slice holds, each class's share over its own slices, so a
    small structure (on few slices) is drawn as often as a large one. The rest: the empty slices, uniformly.
    Uniform when the site has only empty or only non-empty slices.
    """
    fg = np.asarray(classes_present.any(axis=1))
    n_fg, n_bg = int(fg.sum()), int((~fg).sum())
    if n_fg == 0 or n_bg == 0:
        return np.full(len(fg), 1.0 / max(1, len(fg)))
    if per_class:
        slices_per_class = classes_present.sum(axis=0)
        held = slices_per_class > 0
        share = np.where(held, foreground_fraction / held.sum() / np.maximum(slices_per_class, 1), 0.0)
        foreground = np.asarray(classes_present @ share)
    else:
        foreground = np.asarray(fg * (foreground_fraction / n_fg))
    return np.where(fg, foreground, (1.0 - foreground_fraction) / n_bg)


def foreground_sampler(
    dataset: SliceStackDataset, foreground_fraction: float, num_samples: int, seed: int, sampling: str = "slice"
) -> WeightedRandomSampler:
    """Draw ``num_samples`` stacks with replacement by ``sampling_weights`` (``sampling``: ``FOREGROUND_SAMPLING``).

    Without it, empty slices (most of a CT volume) drown the few with kidneys or tumours.
    """
    if sampling not in FOREGROUND_SAMPLING:
        raise ValueError(f"foreground_sampling: {sampling!r} is not one of {list(FOREGROUND_SAMPLING)}")
    weights = sampling_weights(dataset.classes_present, foreground_fraction, per_class=sampling == "class")
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights.tolist(), num_samples, replacement=True, generator=generator)


def stacks_to_images(stacks: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """(B, D x C, S, S) slice-major stacks -> (B*D, 3, S, S) images: C = 1, the grey value repeated over RGB;
    C = 3, each slice's three planes (``neighbours``) as RGB."""
    b, planes, h, w = stacks.shape
    if channels == 1:
        return stacks.reshape(b * planes, 1, h, w).expand(-1, 3, -1, -1)
    if channels != 3 or planes % 3:
        raise ValueError(f"stacks of {planes} planes do not make images of {channels} channels")
    return stacks.reshape(b * planes // 3, 3, h, w)
