"""Real-CT demo data: lungs, vertebrae and ribs on the chest CT that slicerio ships.

What is real and what is simulated (say it exactly wherever these data are shown):

* **Real**: one person's chest CT and its segmentation. ``CTChest4.nrrd`` (128 x 128 x 34 voxels,
  3.05 x 3.05 x 10 mm, Hounsfield units) and ``Segmentation.seg.nrrd`` (its structures, drawn in 3D
  Slicer) are read from the slicerio wheel (MIT licence); nothing is downloaded. The image is read by
  MONAI's ``NrrdReader`` (pynrrd), the segmentation's segments by ``slicerio`` and mapped to the
  task's classes by segment name: lung (right and left lung), vertebrae (cervical, thoracic and
  lumbar vertebral column), ribs.
* **Simulated**: the subjects and the scanners. Each subject is a random smooth affine and elastic
  deformation of that one person (MONAI's ``Rand3DElasticd``); each site acquires with its own
  ``CTAcquisition``: HU calibration offset, noise, a soft or sharp reconstruction kernel, a thicker
  or thinner slice profile and a field of view. One site, ``heldout``, has an acquisition none of the
  training sites has and only a test split: it scores what the federation learned, never trains.

THESE ARE NOT PATIENT DATA of any hospital; the same seed and site name give the same files on every machine.
"""

from __future__ import annotations

import functools
import importlib.resources
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flap_sam.data.anatomy import HELD_OUT_SITE, split_sizes
from flap_sam.data.datalist import write_labelled_site
from flap_sam.errors import DataError

IMAGE_FILE, SEGMENTATION_FILE = "CTChest4.nrrd", "Segmentation.seg.nrrd"
# Task class (label value = position + 1) -> the segment names of Segmentation.seg.nrrd it takes.
CLASS_SEGMENTS = (
    ("lung", ("right lung", "left lung")),
    ("vertebrae", ("cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column")),
    ("ribs", ("ribs",)),
)
CLASSES = tuple(name for name, _ in CLASS_SEGMENTS)
AIR_HU = -1024.0


@dataclass(frozen=True)
class CTAcquisition:
    """How one site's scanner and protocol turn a subject into its CT image.

    Attributes:
        hu_offset: calibration error added to every voxel (HU).
        noise_hu: standard deviation of the image noise (HU).
        kernel: reconstruction kernel, ``soft`` (Gaussian, sigma ``kernel_strength`` pixels) or
            ``sharp`` (unsharp mask of that strength: edges and noise enhanced).
        kernel_strength: the kernel's sigma (soft) or gain (sharp).
        slice_profile: weight of each neighbouring slice in a slice (0: the native 10 mm; 0.25: a
            thicker slice profile, partial volume with both neighbours).
        field_of_view_mm: in-plane extent of the image, centred on the body (air outside the scan).
    """

    hu_offset: float
    noise_hu: float
    kernel: str
    kernel_strength: float
    slice_profile: float
    field_of_view_mm: float

    @classmethod
    def for_site(cls, site_name: str) -> CTAcquisition:
        """The declared acquisition of ``site-1`` .. ``site-3`` and ``heldout``; another name draws one in
        the training sites' ranges, deterministically from the name."""
        if site_name in SITE_ACQUISITIONS:
            return SITE_ACQUISITIONS[site_name]
        rng = np.random.default_rng(zlib.crc32(site_name.encode("utf-8")))
        soft = bool(rng.integers(2))
        return cls(
            hu_offset=float(rng.uniform(-20, 20)),
            noise_hu=float(rng.uniform(10, 30)),
            kernel="soft" if soft else "sharp",
            kernel_strength=float(rng.uniform(0.5, 0.8) if soft else rng.uniform(0.3, 0.6)),
            slice_profile=float(rng.choice([0.0, 0.15])),
            field_of_view_mm=float(rng.uniform(360, 390)),
        )


# Three training sites with soft and sharp kernels, low to moderate noise, small calibration errors;
# a held-out one outside all their ranges: a large offset, the most noise, the sharpest kernel, the
# thickest slice profile, the tightest field of view.
SITE_ACQUISITIONS = {
    "site-1": CTAcquisition(0.0, 12.0, "soft", 0.6, 0.0, 390.0),
    "site-2": CTAcquisition(15.0, 25.0, "sharp", 0.4, 0.15, 370.0),
    "site-3": CTAcquisition(-20.0, 18.0, "soft", 0.5, 0.15, 360.0),
    HELD_OUT_SITE: CTAcquisition(45.0, 40.0, "sharp", 0.9, 0.25, 340.0),
}


def _packaged(name: str) -> str:
    try:
        return str(importlib.resources.files("slicerio").joinpath("data").joinpath(name))
    except ModuleNotFoundError:
        raise DataError("the chest CT demo needs the slicerio package (requirements.txt): pip install slicerio") from None


@dataclass(frozen=True)
class ChestCT:
    """The real chest CT and its labels, as the simulation uses them.

    Attributes:
        hu: (X, Y, Z) float32 Hounsfield units.
        label: (X, Y, Z) uint8 class indices (0 background, 1 lung, 2 vertebrae, 3 ribs).
        affine: 4x4 voxel-to-world (mm, RAS+).
    """

    hu: np.ndarray
    label: np.ndarray
    affine: np.ndarray

    @classmethod
    @functools.cache
    def load(cls) -> ChestCT:
        """Read the image (MONAI ``NrrdReader``) and the segmentation (``slicerio``) from the slicerio wheel; once per process."""
        import slicerio
        from monai.transforms import LoadImage

        image_path, segmentation_path = _packaged(IMAGE_FILE), _packaged(SEGMENTATION_FILE)
        image = LoadImage(reader="NrrdReader", image_only=True)(image_path)
        hu = np.maximum(np.asarray(image, np.float32), AIR_HU)  # the scanner's -3024 outside its circle: air
        segmentation = slicerio.read_segmentation(segmentation_path)
        voxels = np.asarray(segmentation["voxels"])
        if voxels.shape != hu.shape or any(segmentation.get("referenceImageExtentOffset", [0, 0, 0])):
            raise DataError(f"{segmentation_path}: its grid {voxels.shape} is not the image's {hu.shape}")
        by_name = {segment["name"]: segment["labelValue"] for segment in segmentation["segments"]}
        label = np.zeros(hu.shape, np.uint8)
        for index, (name, segment_names) in enumerate(CLASS_SEGMENTS, start=1):
            missing = [s for s in segment_names if s not in by_name]
            if missing:
                raise DataError(f"{segmentation_path}: no segment named {missing[0]!r} (it has {sorted(by_name)})")
            label[np.isin(voxels, [by_name[s] for s in segment_names])] = index
        return cls(hu, label, np.asarray(image.affine, np.float64))


def _deform(hu: np.ndarray, label: np.ndarray, seed: int, spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """One subject: a random smooth affine and elastic deformation, image bilinear (air outside), labels nearest."""
    from monai.transforms import Rand3DElasticd

    voxels = np.asarray(spacing_mm)
    deform = Rand3DElasticd(
        keys=("image", "label"),
        prob=1.0,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
        sigma_range=(30.0 / voxels.max(), 40.0 / voxels.max()),
        magnitude_range=(80.0 / voxels.max(), 160.0 / voxels.max()),
        rotate_range=(0.0, 0.0, 0.1),
        scale_range=(0.08, 0.08, 0.05),
        translate_range=(4.0, 4.0, 0.5),
    )
    deform.set_random_state(seed=seed)
    arrays: dict[Hashable, Any] = {"image": (hu - AIR_HU)[None], "label": label[None].astype(np.float32)}  # air -> 0: padding is air
    out = deform(arrays)
    return np.asarray(out["image"][0], np.float32) + AIR_HU, np.rint(np.asarray(out["label"][0])).astype(np.uint8)


def _acquire(
    hu: np.ndarray, label: np.ndarray, affine: np.ndarray, acquisition: CTAcquisition, seed: int, pixel_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The site's image of one subject: (int16 HU image, uint8 label, affine) on the site's grid."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = hu.copy()
    if acquisition.slice_profile > 0:  # a wider slice sensitivity profile: partial volume with the neighbours
        w = acquisition.slice_profile
        image = ndimage.convolve1d(image, [w, 1.0 - 2 * w, w], axis=2, mode="nearest")
    blurred = ndimage.gaussian_filter(image, sigma=(acquisition.kernel_strength if acquisition.kernel == "soft" else 1.0,) * 2 + (0,))
    image = blurred if acquisition.kernel == "soft" else image + acquisition.kernel_strength * (image - blurred)
    noise = rng.normal(0.0, acquisition.noise_hu, image.shape)
    if acquisition.kernel == "sharp":  # a sharp kernel passes more of the noise's high frequencies
        noise *= 1.0 + acquisition.kernel_strength
    image = image + acquisition.hu_offset + noise
    # Field of view: the in-plane box of the site's size, centred on the body; air where the scan has none.
    body = np.argwhere((hu > -500).any(axis=2))
    centre = (body.min(axis=0) + body.max(axis=0)) / 2 if len(body) else np.array(hu.shape[:2]) / 2
    box = int(round(acquisition.field_of_view_mm / pixel_mm))
    starts = [int(round(c - box / 2)) for c in centre]
    pads = [(max(0, -s), max(0, s + box - image.shape[i])) for i, s in enumerate(starts)] + [(0, 0)]
    image = np.pad(image, pads, constant_values=AIR_HU)
    label = np.pad(label, pads)
    lo = [max(0, s) for s in starts]
    image, label = (a[lo[0] : lo[0] + box, lo[1] : lo[1] + box] for a in (image, label))
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :2] @ np.array(starts, dtype=float)
    return np.clip(np.rint(image), AIR_HU, 3071).astype(np.int16), label, affine


def make_subject(ct: ChestCT, acquisition: CTAcquisition, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject as one site acquires it.

    Returns:
        image: (X, Y, Z) int16 HU; label: (X, Y, Z) uint8 classes (``CLASSES``); affine: 4x4 voxel-to-world (mm, RAS+).
    """
    rng = np.random.default_rng(seed)
    sx, sy, sz = (float(s) for s in np.linalg.norm(ct.affine[:3, :3], axis=0))
    spacing = (sx, sy, sz)
    hu, label = _deform(ct.hu, ct.label, int(rng.integers(2**31)), spacing)
    return _acquire(hu, label, ct.affine, acquisition, int(rng.integers(2**31)), spacing[0])


def make_chest_ct_site(site_name: str, out_dir: str, seed: int = 0, sizes: tuple[int, int, int] | None = None) -> str:
    """Write one site's CT volumes, labels and ``datalist.json`` into ``out_dir``; returns the datalist path."""
    ct = ChestCT.load()
    acquisition = CTAcquisition.for_site(site_name)
    n_train, n_val, n_test = sizes or split_sizes(site_name)

    def cases():
        for i in range(n_train + n_val + n_test):
            seed_i = int(np.random.SeedSequence([seed, zlib.crc32(site_name.encode("utf-8")), i]).generate_state(1)[0])
            yield (f"{site_name}_{i:03d}.nii.gz", *make_subject(ct, acquisition, seed_i))

    return write_labelled_site(out_dir, cases(), n_train, n_val)
