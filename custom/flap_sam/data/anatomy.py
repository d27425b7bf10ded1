"""Real-anatomy demo data: brain extraction from T1 MRI on the MNI152 template that nilearn ships.

What is real and what is simulated (say it exactly wherever these data are shown):

* **Real**: the brain. Every volume starts from the ICBM 2009 symmetric MNI152 T1 template
  (an average of 152 real adult T1 scans) and its whole-brain mask, both loaded from the nilearn
  wheel with ``nilearn.datasets`` at the template's 2 mm (or 1 mm) grid; nothing is downloaded.
  The grey- and white-matter maps of the same template give the tissue labels.
* **Simulated**: the subjects, the head around the brain, and the scanners. The template is
  skull-stripped, so a head is built around it (cerebrospinal fluid, skull with marrow, scalp fat,
  each layer a subject-specific thickness from the brain's surface); each subject is a random smooth
  affine and elastic deformation of that head (MONAI's ``Rand3DElasticd``); each site acquires
  with its own ``Acquisition``: contrast curve, bias field, noise, slice thickness, field of view
  and intensity scale. One site, ``heldout``, has an acquisition none of the training sites has
  and only a test split: it scores what the federation learned, never trains.

Labels: ``labelsTr/`` holds the brain mask (label 1, ventricles inside, as in IXI-Tiny), the
task of the ``ixi`` dataset; ``labelsTissueTr/`` holds grey matter (1) and white matter (2),
listed in ``tissue.json`` for a two-class own task (``classes = "grey_matter,white_matter"``).
THESE ARE NOT PATIENT DATA; the same seed and site name give the same files on every machine.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from flap_sam.data.datalist import write_datalist

HELD_OUT_SITE = "heldout"
TEMPLATE_RESOLUTIONS = (1, 2)  # mm: the grids nilearn offers the template on
TISSUE_DATALIST = "tissue.json"
TISSUE_CLASSES = ("grey_matter", "white_matter")

# Brain-surface distances (mm) of the simulated layers for an average subject: CSF, then skull
# (with marrow in its middle third), then scalp fat. Intensities are on the template's scale
# (white matter about 0.9): CSF and bone are dark on T1, fat bright.
_LAYERS_MM = (("csf", 2.5, 0.12), ("skull", 6.0, 0.05), ("scalp", 6.0, 1.0))
_MARROW = 0.45
_PAD_MM = 24.0  # air around the template's box, so deformation and scalp stay inside the grid


@dataclass(frozen=True)
class Acquisition:
    """How one site's scanner and protocol turn a subject's head into its T1 image.

    Attributes:
        contrast_gamma: contrast curve ``I -> I ** gamma`` on the [0, 1] tissue intensities.
        bias: strength of the smooth multiplicative bias field (MONAI ``RandBiasField`` coefficients up to it).
        noise: Rician noise standard deviation as a share of the white-matter intensity.
        slice_thickness_mm: axial slice thickness (each slice averages its slab: partial volume); a
            multiple of the template's resolution.
        field_of_view_mm: in-plane (x, y) extent of the image, centred on the head.
        white_matter_level: scanner units of white matter (files are int16, as scanners write them).
    """

    contrast_gamma: float
    bias: float
    noise: float
    slice_thickness_mm: float
    field_of_view_mm: tuple[float, float]
    white_matter_level: float

    @classmethod
    def for_site(cls, site_name: str) -> Acquisition:
        """The declared acquisition of ``site-1`` .. ``site-3`` and ``heldout``; another name draws one
        in the training sites' ranges, deterministically from the name."""
        if site_name in SITE_ACQUISITIONS:
            return SITE_ACQUISITIONS[site_name]
        rng = np.random.default_rng(zlib.crc32(site_name.encode("utf-8")))
        return cls(
            contrast_gamma=float(rng.uniform(0.8, 1.25)),
            bias=float(rng.uniform(0.1, 0.3)),
            noise=float(rng.uniform(0.02, 0.05)),
            slice_thickness_mm=float(rng.choice([2.0, 4.0])),
            field_of_view_mm=(float(rng.uniform(180, 200)), float(rng.uniform(220, 240))),
            white_matter_level=float(rng.uniform(300, 1500)),
        )


# Three training sites that differ as IXI's Guys (1.5 T), HH (3 T) and IOP (1.5 T) do in kind (contrast,
# bias, noise, slices), and a held-out one outside all their ranges: a steeper contrast curve, the
# strongest bias, 6 mm slices, a wider field of view.
SITE_ACQUISITIONS = {
    "site-1": Acquisition(1.0, 0.15, 0.02, 2.0, (200.0, 240.0), 800.0),
    "site-2": Acquisition(0.8, 0.3, 0.035, 4.0, (190.0, 230.0), 1500.0),
    "site-3": Acquisition(1.25, 0.1, 0.05, 4.0, (180.0, 220.0), 300.0),
    HELD_OUT_SITE: Acquisition(1.6, 0.4, 0.04, 6.0, (220.0, 260.0), 2500.0),
}


@dataclass(frozen=True)
class Template:
    """The MNI152 template on one grid, as the simulation uses it.

    Attributes:
        t1: (X, Y, Z) float32 T1 intensities in [0, 1], zero outside the brain.
        anatomy: (X, Y, Z) uint8: 0 outside the brain, 1 grey matter, 2 white matter, 3 other brain (CSF).
        affine: 4x4 voxel-to-world (mm) of the template grid (RAS+).
        resolution_mm: voxel size.
    """

    t1: np.ndarray
    anatomy: np.ndarray
    affine: np.ndarray
    resolution_mm: int

    @classmethod
    @functools.cache
    def load(cls, resolution_mm: int = 2) -> Template:
        """The template, brain mask and tissue maps from the nilearn wheel (no download); read once per process."""
        if resolution_mm not in TEMPLATE_RESOLUTIONS:
            raise ValueError(f"resolution: {resolution_mm} mm is not one of the template's {list(TEMPLATE_RESOLUTIONS)}")
        from nilearn import datasets
        from scipy import ndimage

        t1_image = datasets.load_mni152_template(resolution=resolution_mm)
        t1 = np.asarray(t1_image.get_fdata(), np.float32)
        brain = ndimage.binary_fill_holes(np.asarray(datasets.load_mni152_brain_mask(resolution=resolution_mm).get_fdata()) > 0)
        grey = np.asarray(datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata())
        white = np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata())
        anatomy = np.where(brain, 3, 0).astype(np.uint8)
        anatomy[brain & (grey >= white) & (grey > 0.33)] = 1
        anatomy[brain & (white > grey) & (white > 0.33)] = 2
        return cls(np.where(brain, t1, 0.0).astype(np.float32), anatomy, np.asarray(t1_image.affine), resolution_mm)


def _head(template: Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A subject's head before deformation: (image, anatomy, affine) on the template grid padded with air.

    Layers of this subject's own thickness (0.8-1.2 x the average each) grow outward from the brain's
    surface; a light blur gives their boundaries the scanner's partial volume.
    """
    from scipy import ndimage

    res = template.resolution_mm
    pad = int(round(_PAD_MM / res))
    t1 = np.pad(template.t1, pad)
    anatomy = np.pad(template.anatomy, pad)
    outside = ndimage.distance_transform_edt(anatomy == 0, sampling=res)  # mm from the brain
    head = np.zeros_like(t1)
    inner = 0.0
    for name, thickness, value in _LAYERS_MM:
        outer = inner + thickness * rng.uniform(0.8, 1.2)
        layer = (outside > inner) & (outside <= outer)
        head[layer] = value
        if name == "skull":
            third = (outer - inner) / 3
            head[(outside > inner + third) & (outside <= outer - third)] = _MARROW
        inner = outer
    head = ndimage.gaussian_filter(head, sigma=1.2 / res)  # 1.2 mm
    image = np.where(anatomy > 0, t1, head).astype(np.float32)
    affine = template.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    return image, anatomy, affine


def _deform(image: np.ndarray, anatomy: np.ndarray, seed: int, resolution_mm: int) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth affine and elastic deformation (one subject), image bilinear, labels nearest."""
    from monai.transforms import Rand3DElasticd

    voxels = lambda mm: mm / resolution_mm
    deform = Rand3DElasticd(
        keys=("image", "anatomy"),
        prob=1.0,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
        sigma_range=(voxels(12.0), voxels(16.0)),
        magnitude_range=(voxels(60.0), voxels(120.0)),
        rotate_range=(0.12, 0.08, 0.08),
        scale_range=(0.08, 0.08, 0.08),
        translate_range=(voxels(4.0), voxels(4.0), voxels(3.0)),
    )
    deform.set_random_state(seed=seed)
    arrays: dict[Hashable, Any] = {"image": image[None], "anatomy": anatomy[None].astype(np.float32)}  # MONAI takes NumPy too
    out = deform(arrays)
    return np.asarray(out["image"][0], np.float32), np.rint(np.asarray(out["anatomy"][0])).astype(np.uint8)


def _acquire(
    image: np.ndarray, anatomy: np.ndarray, affine: np.ndarray, acquisition: Acquisition, seed: int, resolution_mm: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The site's image of one subject: (int16 image, uint8 anatomy, affine) on the site's grid."""
    from monai.transforms import RandBiasField, RandRicianNoise

    rng = np.random.default_rng(seed)
    image = np.clip(image, 0.0, None) ** acquisition.contrast_gamma
    bias = RandBiasField(degree=3, coeff_range=(0.5 * acquisition.bias, acquisition.bias), prob=1.0)
    bias.set_random_state(seed=int(rng.integers(2**31)))
    image = np.asarray(bias(image[None])[0], np.float32)
    # Slice thickness: each slice is the mean of its slab (partial volume); its label is the slab's centre.
    step = int(round(acquisition.slice_thickness_mm / resolution_mm))
    if step < 1 or abs(step * resolution_mm - acquisition.slice_thickness_mm) > 1e-6:
        raise ValueError(f"slice_thickness_mm: {acquisition.slice_thickness_mm} is not a multiple of the template's {resolution_mm} mm")
    slices = image.shape[2] // step
    image = image[:, :, : slices * step].reshape(*image.shape[:2], slices, step).mean(axis=3)
    anatomy = anatomy[:, :, step // 2 : slices * step : step]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, 2] * (step - 1) / 2
    affine[:3, 2] *= step
    # Field of view: the in-plane box of the site's size, centred on the head.
    head = np.argwhere(image.max(axis=2) > 0.02)
    centre = (head.min(axis=0) + head.max(axis=0)) / 2 if len(head) else np.array(image.shape[:2]) / 2
    box = [int(round(mm / resolution_mm)) for mm in acquisition.field_of_view_mm]
    starts = [int(round(c - n / 2)) for c, n in zip(centre, box)]
    padded = [
        np.pad(a, [(max(0, -s), max(0, s + n - a.shape[i])) for i, (s, n) in enumerate(zip(starts, box))] + [(0, 0)])
        for a in (image, anatomy)
    ]
    lo = [max(0, s) for s in starts]
    image, anatomy = (a[lo[0] : lo[0] + box[0], lo[1] : lo[1] + box[1]] for a in padded)
    affine[:3, 3] += affine[:3, :2] @ np.array(starts, dtype=float)
    # Scanner units and Rician noise (magnitude images: noise never negative).
    level = acquisition.white_matter_level / 0.9  # the template's white matter is about 0.9
    noise = RandRicianNoise(prob=1.0, std=acquisition.noise * acquisition.white_matter_level, sample_std=False)
    noise.set_random_state(seed=int(rng.integers(2**31)))
    image = np.asarray(noise((image * level)[None].astype(np.float32))[0])
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16), anatomy, affine


def make_subject(template: Template, acquisition: Acquisition, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject as one site acquires it.

    Returns:
        image: (X, Y, Z) int16 T1 intensities in the site's scanner units.
        anatomy: (X, Y, Z) uint8 (0 outside the brain, 1 grey matter, 2 white matter, 3 other brain).
        affine: 4x4 voxel-to-world (mm, RAS+), Z the site's slice thickness.
    """
    rng = np.random.default_rng(seed)
    image, anatomy, affine = _head(template, rng)
    image, anatomy = _deform(image, anatomy, int(rng.integers(2**31)), template.resolution_mm)
    return _acquire(image, anatomy, affine, acquisition, int(rng.integers(2**31)), template.resolution_mm)


def split_sizes(site_name: str) -> tuple[int, int, int]:
    """(training, validation, test) volumes of a demo site: the held-out site has only a test split."""
    return (0, 0, 4) if site_name == HELD_OUT_SITE else (4, 1, 1)


def make_anatomy_site(
    site_name: str, out_dir: str, seed: int = 0, resolution_mm: int = 2, sizes: tuple[int, int, int] | None = None
) -> str:
    """Write one site's volumes, brain masks, tissue labels and datalists into ``out_dir``.

    ``datalist.json`` (brain, the ``ixi`` task) and ``tissue.json`` (grey/white matter) list the same
    images. Subjects differ per site and per volume; returns the ``datalist.json`` path.
    """
    template = Template.load(resolution_mm)
    acquisition = Acquisition.for_site(site_name)
    n_train, n_val, n_test = sizes or split_sizes(site_name)
    for folder in ("imagesTr", "labelsTr", "labelsTissueTr"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    brain, tissue = [], []
    for i in range(n_train + n_val + n_test):
        image, anatomy, affine = make_subject(
            template, acquisition, int(np.random.SeedSequence([seed, zlib.crc32(site_name.encode("utf-8")), i]).generate_state(1)[0])
        )
        name = f"{site_name}_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), os.path.join(out_dir, "imagesTr", name))
        nib.save(nib.Nifti1Image((anatomy > 0).astype(np.uint8), affine), os.path.join(out_dir, "labelsTr", name))
        nib.save(
            nib.Nifti1Image(np.where(anatomy <= 2, anatomy, 0).astype(np.uint8), affine), os.path.join(out_dir, "labelsTissueTr", name)
        )
        brain.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        tissue.append({"image": f"imagesTr/{name}", "label": f"labelsTissueTr/{name}"})
    for entries, file in ((brain, "datalist.json"), (tissue, TISSUE_DATALIST)):
        write_datalist(os.path.join(out_dir, file), entries[:n_train], entries[n_train : n_train + n_val], entries[n_train + n_val :])
    return os.path.join(out_dir, "datalist.json")
