"""Built-in demo data of the paper's three tasks and a real chest CT, made on first use.

* ``kits``: synthetic abdominal CT in HU (phantoms), kidneys (label 1) and usually a tumour (label 2);
* ``ixi``: T1 head MRI on REAL brain anatomy (the MNI152 template nilearn ships) with simulated
  subjects and scanners, brain mask (label 1): ``flap_sam.data.anatomy``;
* ``chest_ct``: a REAL chest CT and its segmentation (slicerio's) with simulated subjects and scanners,
  lung (1), vertebrae (2) and ribs (3): ``flap_sam.data.chest_ct``;
* ``prostate``: synthetic T2 pelvis MRI (phantoms), prostate central gland (label 1) and peripheral
  zone (label 2, which the prostate profile maps to 1, as in the real collection).

Every phantom site gets its own scanner-like shift (intensity offset and gain, noise level, slice
thickness, field of view), derived deterministically from the site name, so ``site-1`` is
the same data on every machine. THESE ARE NOT PATIENT DATA.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass

import numpy as np

from flap_sam.data.anatomy import make_anatomy_site
from flap_sam.data.chest_ct import make_chest_ct_site
from flap_sam.data.datalist import write_labelled_site

logger = logging.getLogger(__name__)

# The folder version of each dataset's demo data: a change of what a generator writes bumps it.
DEMO_VERSIONS = {"kits": "v3", "ixi": "mni152-v1", "prostate": "v3", "chest_ct": "ctchest4-v1"}
DEMO_DATASETS = tuple(sorted(DEMO_VERSIONS))
DEMO_ROOT_ENV = "FLAP_SAM_DEMO_ROOT"


@dataclass(frozen=True)
class ScannerShift:
    """Per-site acquisition differences (intensities in the modality's units: HU for CT)."""

    offset: float
    gain: float
    noise: float
    slice_thickness_mm: float
    pixel_spacing_mm: float

    @classmethod
    def for_site(cls, site_name: str, pixel_spacing_mm: tuple[float, float] = (5.0, 6.5)) -> ScannerShift:
        """``pixel_spacing_mm``: range of in-plane spacing, which sets the 64-pixel field of view."""
        rng = np.random.default_rng(_seed(site_name))
        return cls(
            offset=float(rng.uniform(-30, 30)),
            gain=float(rng.uniform(0.9, 1.1)),
            noise=float(rng.uniform(8, 25)),
            slice_thickness_mm=float(rng.choice([2.5, 3.0, 5.0])),
            pixel_spacing_mm=float(rng.uniform(*pixel_spacing_mm)),
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
    image = image * shift.gain + shift.offset + rng.normal(0, shift.noise, shape).astype(np.float32)
    return image.astype(np.float32), label


def _mri_scanner(image: np.ndarray, rng: np.random.Generator, shift: ScannerShift) -> np.ndarray:
    """Smooth multiplicative bias field, site gain and offset, Rician-like noise; intensities >= 0."""
    x, y, _ = np.meshgrid(*(np.linspace(-1, 1, n) for n in image.shape), indexing="ij")
    bias = 1.0 + rng.uniform(-0.15, 0.15) * x + rng.uniform(-0.15, 0.15) * y
    noisy = image * bias * shift.gain + 10 * shift.offset
    noise = rng.normal(0, 2 * shift.noise, (2, *image.shape))
    return np.sqrt((noisy + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32)


def prostate_phantom(rng: np.random.Generator, shift: ScannerShift, size: int = 64, slices: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic axial T2 pelvis MRI: image (X, Y, Z) float32, label (X, Y, Z) uint8.

    Label 1 is the central gland, label 2 the peripheral zone (brighter on T2, posterior),
    like sites of the real collection that label the two zones; the prostate profile maps 2 -> 1.
    Around it: subcutaneous fat, bright bladder (anterior), dark rectum (posterior), femoral heads.
    """
    shape = (size, size, slices)
    mm = shift.pixel_spacing_mm
    c = size / 2
    image = np.zeros(shape, np.float32)
    body_r = (rng.uniform(80, 90) / mm, rng.uniform(70, 80) / mm, 10 * slices)
    image[_ellipsoid(shape, (c, c, slices / 2), body_r)] = 650.0  # fat
    image[_ellipsoid(shape, (c, c, slices / 2), (body_r[0] - 12 / mm, body_r[1] - 12 / mm, 10 * slices))] = 260.0  # muscle
    for side in (-1, 1):
        image[_ellipsoid(shape, (c + side * 55 / mm, c, slices / 2), (16 / mm, 16 / mm, 10 * slices))] = 180.0  # femoral heads
    gland_z = slices / 2 + rng.uniform(-1, 1)
    half_len = min(rng.uniform(15, 22), 0.35 * slices * shift.slice_thickness_mm) / shift.slice_thickness_mm
    prostate_c = (c + rng.uniform(-3, 3) / mm, c + rng.uniform(-3, 3) / mm, gland_z)
    image[_ellipsoid(shape, (prostate_c[0], prostate_c[1] + 30 / mm, gland_z + 2), (22 / mm, 16 / mm, half_len))] = 1000.0  # bladder
    image[_ellipsoid(shape, (prostate_c[0], prostate_c[1] - 24 / mm, gland_z), (10 / mm, 8 / mm, 10 * slices))] = 90.0  # rectum
    radii = (rng.uniform(18, 24) / mm, rng.uniform(13, 17) / mm, half_len)
    gland = _ellipsoid(shape, prostate_c, radii)
    label = np.zeros(shape, np.uint8)
    peripheral = gland & (np.arange(size)[None, :, None] < prostate_c[1] - 0.2 * radii[1])
    image[gland] = 330.0
    label[gland] = 1
    image[peripheral] = 480.0
    label[peripheral] = 2
    return _mri_scanner(image, rng, shift), label


PHANTOMS = {"kits": kits_phantom, "prostate": prostate_phantom}
# In-plane spacing ranges (mm): the 64-pixel field of view of each phantom dataset's demo volumes.
PHANTOM_PIXEL_SPACING = {"kits": (5.0, 6.5), "prostate": (2.6, 3.2)}


def make_demo_site(dataset: str, site_name: str, out_dir: str, n_train: int = 4, n_val: int = 1, n_test: int = 1) -> str:
    """Write one site's demo volumes and ``datalist.json`` (training / validation / test) into ``out_dir``.

    Returns the datalist path. ``ixi`` and ``chest_ct`` write real-anatomy volumes (their own split sizes).
    """
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"no demo data for dataset '{dataset}'; choose one of {list(DEMO_DATASETS)}")
    if dataset == "ixi":
        return make_anatomy_site(site_name, out_dir)
    if dataset == "chest_ct":
        return make_chest_ct_site(site_name, out_dir)
    generate = PHANTOMS[dataset]
    shift = ScannerShift.for_site(site_name, PHANTOM_PIXEL_SPACING[dataset])
    affine = np.diag([shift.pixel_spacing_mm, shift.pixel_spacing_mm, shift.slice_thickness_mm, 1.0])

    def cases():
        for i in range(n_train + n_val + n_test):
            image, label = generate(np.random.default_rng([_seed(site_name), _seed(dataset), i]), shift)
            yield f"demo_{i:03d}.nii.gz", image, label, affine

    return write_labelled_site(out_dir, cases(), n_train, n_val)


# What each dataset's demo data are, as a site's log and `flap-sam demo-data` say it.
DEMO_KINDS = {
    "kits": "SYNTHETIC phantoms",
    "prostate": "SYNTHETIC phantoms",
    "ixi": "REAL ANATOMY (MNI152 template) with SIMULATED subjects and scanners",
    "chest_ct": "a REAL CHEST CT (slicerio's) with SIMULATED subjects and scanners",
}


def default_demo_root() -> str:
    return os.environ.get(DEMO_ROOT_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "flap-sam", "demo")


def demo_site_dir(dataset: str, site_name: str, root: str | None = None) -> str:
    """Where one site's demo data of ``dataset`` live (made or not)."""
    return os.path.join(root or default_demo_root(), f"{dataset}-{DEMO_VERSIONS[dataset]}", site_name)


def ensure_demo_site(dataset: str, site_name: str, root: str | None = None) -> str:
    """The demo data root of one site, generated on first use; returns the folder.

    Generation happens in a private temporary folder that is renamed into place, so
    clients started together on one machine never see (or write) half a dataset.
    """
    target = demo_site_dir(dataset, site_name, root)
    if os.path.isfile(os.path.join(target, "datalist.json")):
        logger.warning("Using %s demo data for %s at %s (not patient data)", DEMO_KINDS[dataset], site_name, target)
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
    logger.warning("Generated %s demo data for %s at %s (not patient data)", DEMO_KINDS[dataset], site_name, target)
    return target
