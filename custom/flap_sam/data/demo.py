"""Built-in demo data: small synthetic CT volumes that look like KiTS cases.

Each phantom has air, a body with a fat rim, a spine, two kidneys (label 1) and usually a
tumour inside one kidney (label 2), in Hounsfield units with scanner noise. Every site
gets its own scanner-like shift (intensity offset and gain, noise level, slice thickness,
field of view), derived deterministically from the site name, so ``site-1`` is the same
data on every machine. THESE ARE NOT PATIENT DATA and say nothing about real accuracy.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from flap_sam.data.datalist import write_datalist

logger = logging.getLogger(__name__)

DEMO_VERSION = "v2"
DEMO_ROOT_ENV = "FLAP_SAM_DEMO_ROOT"


@dataclass(frozen=True)
class ScannerShift:
    """Per-site acquisition differences."""

    hu_offset: float
    hu_gain: float
    noise_hu: float
    slice_thickness_mm: float
    pixel_spacing_mm: float

    @classmethod
    def for_site(cls, site_name: str) -> "ScannerShift":
        rng = np.random.default_rng(_seed(site_name))
        return cls(
            hu_offset=float(rng.uniform(-30, 30)),
            hu_gain=float(rng.uniform(0.9, 1.1)),
            noise_hu=float(rng.uniform(8, 25)),
            slice_thickness_mm=float(rng.choice([2.5, 3.0, 5.0])),
            pixel_spacing_mm=float(rng.uniform(5.0, 6.5)),
        )


def _seed(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def kits_phantom(rng: np.random.Generator, shift: ScannerShift, size: int = 64, slices: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic abdominal CT: image (X, Y, Z) float32 HU, label (X, Y, Z) uint8 in {0, 1, 2}.

    Axes are RAS+ (x: right->left patient axis, y: posterior->anterior, z: inferior->superior).
    Sizes are in voxels for ``size`` x ``size`` x ``slices`` with the site's spacing.
    """
    shape = (size, size, slices)
    mm = shift.pixel_spacing_mm
    c = size / 2
    image = np.full(shape, -1000.0, np.float32)
    body_r = (rng.uniform(150, 175) / mm, rng.uniform(110, 130) / mm, 10 * slices)
    body = _ellipsoid(shape, (c, c, slices / 2), body_r)
    image[body] = -100.0  # fat
    image[_ellipsoid(shape, (c, c, slices / 2), (body_r[0] - 15 / mm, body_r[1] - 15 / mm, 10 * slices))] = 40.0  # soft tissue
    image[_ellipsoid(shape, (c, c - 70 / mm, slices / 2), (18 / mm, 18 / mm, 10 * slices))] = 700.0  # spine
    label = np.zeros(shape, np.uint8)
    z_extent = slices * shift.slice_thickness_mm
    kidney_half_len = min(rng.uniform(45, 60), 0.3 * z_extent) / shift.slice_thickness_mm
    kidneys = []
    for side in (-1, 1):
        center = (c + side * rng.uniform(55, 70) / mm, c - rng.uniform(35, 50) / mm, slices / 2 + rng.uniform(-1.5, 1.5))
        radii = (rng.uniform(22, 30) / mm, rng.uniform(28, 36) / mm, kidney_half_len)
        kidney = _ellipsoid(shape, center, radii) & body
        image[kidney] = rng.uniform(140, 180)
        label[kidney] = 1
        kidneys.append((center, radii))
    if rng.uniform() < 0.85:
        center, radii = kidneys[int(rng.integers(2))]
        r = rng.uniform(0.4, 0.7) * min(radii[:2])
        tumour_center = tuple(cc + rng.uniform(-0.3, 0.3) * rr for cc, rr in zip(center, radii))
        tumour = _ellipsoid(shape, tumour_center, (r, r, r * mm / shift.slice_thickness_mm)) & (label == 1)
        image[tumour] = rng.uniform(60, 100)
        label[tumour] = 2
    image = image * shift.hu_gain + shift.hu_offset + rng.normal(0, shift.noise_hu, shape).astype(np.float32)
    return image.astype(np.float32), label


DEMO_GENERATORS = {"kits": kits_phantom}


def make_demo_site(dataset: str, site_name: str, out_dir: str, n_train: int = 4, n_val: int = 1) -> str:
    """Write one site's synthetic volumes and ``datalist.json`` into ``out_dir`` (created). Returns the datalist path."""
    if dataset not in DEMO_GENERATORS:
        raise ValueError(f"no demo data for dataset '{dataset}'; choose one of {sorted(DEMO_GENERATORS)}")
    generate = DEMO_GENERATORS[dataset]
    shift = ScannerShift.for_site(site_name)
    affine = np.diag([shift.pixel_spacing_mm, shift.pixel_spacing_mm, shift.slice_thickness_mm, 1.0])
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    entries = []
    for i in range(n_train + n_val):
        rng = np.random.default_rng([_seed(site_name), _seed(dataset), i])
        image, label = generate(rng, shift)
        name = f"demo_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), os.path.join(out_dir, "imagesTr", name))
        nib.save(nib.Nifti1Image(label, affine), os.path.join(out_dir, "labelsTr", name))
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    path = os.path.join(out_dir, "datalist.json")
    write_datalist(path, entries[:n_train], entries[n_train:])
    return path


def default_demo_root() -> str:
    return os.environ.get(DEMO_ROOT_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "flap-sam", "demo")


def ensure_demo_site(dataset: str, site_name: str, root: str | None = None) -> str:
    """The demo data root of one site, generated on first use; returns the folder.

    Generation happens in a private temporary folder that is renamed into place, so
    clients started together on one machine never see (or write) half a dataset.
    """
    root = root or default_demo_root()
    target = os.path.join(root, f"{dataset}-{DEMO_VERSION}", site_name)
    if os.path.isfile(os.path.join(target, "datalist.json")):
        logger.warning("Using SYNTHETIC demo data for %s at %s (not patient data)", site_name, target)
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        make_demo_site(dataset, site_name, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isfile(os.path.join(target, "datalist.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.warning("Generated SYNTHETIC demo data for %s at %s (not patient data)", site_name, target)
    return target
