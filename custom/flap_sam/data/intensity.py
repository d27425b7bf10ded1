"""Intensity normalisation by modality (the paper's recipe), before 2.5D stacking.

CT: clip to the site's foreground 0.5 / 99.5 percentiles, then z-score with the foreground
mean and std (nnU-Net style). MRI: clip at each volume's 99th percentile, min-max to [0, 1].
Each 2.5D stack is min-max scaled to [0, 1] afterwards (``flap_sam.data.stacks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

from flap_sam.data.volumes import Volume

_MAX_SAMPLES = 2_000_000


@dataclass(frozen=True)
class CTStatistics:
    """Foreground intensity statistics of a site's training volumes (HU)."""

    low: float
    high: float
    mean: float
    std: float

    @classmethod
    def from_samples(cls, samples: list[np.ndarray]) -> CTStatistics:
        """Percentiles/mean/std of foreground intensities sampled from the training volumes (``ForegroundSamples``)."""
        values = np.concatenate(samples) if samples else np.empty(0, np.float32)
        if values.size < 10:
            raise ValueError("CT statistics need labelled foreground voxels in the training volumes")
        low, high = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, low, high)
        return cls(float(low), float(high), float(clipped.mean()), float(max(clipped.std(), 1e-6)))

    @classmethod
    def from_window(cls, low: float, high: float) -> CTStatistics:
        return cls(low, high, (low + high) / 2.0, max((high - low) / 4.0, 1e-6))


class ForegroundSamples:
    """A site's CT statistics from its training volumes, loaded one at a time.

    ``add`` keeps a random sample of each volume's voxels with label > 0 (at most 2M voxels over
    all ``num_volumes``); ``statistics`` turns them into the site's ``CTStatistics``. The Learner
    (``SiteData.load``) and ``flap-sam evaluate`` use the same seed, so both normalise alike.
    """

    def __init__(self, num_volumes: int, seed: int = 0) -> None:
        self.per_volume = _MAX_SAMPLES // max(1, num_volumes)
        self.rng = np.random.default_rng(seed)
        self.samples: list[np.ndarray] = []

    def add(self, volume: Volume) -> None:
        if volume.label is None:
            return
        fg = volume.image[volume.label > 0].astype(np.float32)
        self.samples.append(self.rng.choice(fg, self.per_volume, replace=False) if fg.size > self.per_volume else fg)

    def statistics(self) -> CTStatistics:
        return CTStatistics.from_samples(self.samples)


def normalize_ct(image: np.ndarray, stats: CTStatistics) -> np.ndarray:
    """(X, Y, Z) HU -> clipped, z-scored float32."""
    clipped = np.clip(image, stats.low, stats.high)
    # MONAI's annotation names sequences and arrays; it takes a number as well (one value for the volume)
    normalized = NormalizeIntensity(subtrahend=stats.mean, divisor=stats.std)(clipped)  # type: ignore[arg-type]
    return np.asarray(normalized, dtype=np.float32)


_MRI = ScaleIntensityRangePercentiles(lower=0, upper=99, b_min=0.0, b_max=1.0, clip=True)


def normalize_mri(image: np.ndarray) -> np.ndarray:
    """(X, Y, Z) MRI -> [0, 1] float32, clipped at the 99th percentile."""
    return np.asarray(_MRI(image[None]))[0].astype(np.float32)


class IntensityNormalizer:
    """Normalise volumes of one modality; CT needs the site's statistics (``ForegroundSamples``) or a window."""

    def __init__(self, modality: str, ct_stats: CTStatistics | None = None) -> None:
        if modality not in ("ct", "mri"):
            raise ValueError(f"modality must be 'ct' or 'mri', got '{modality}'")
        self.modality = modality
        self.ct_stats = ct_stats

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.modality == "mri":
            return normalize_mri(image)
        if self.ct_stats is None:
            raise RuntimeError("CT normalisation needs statistics: pass ct_stats")
        return normalize_ct(image, self.ct_stats)
