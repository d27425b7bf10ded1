"""Load volumes (NIfTI with nibabel, DICOM series with highdicom), check them, and bring them to one canonical
orientation (RAS+).

In RAS+ the third array axis runs inferior -> superior, so ``array[:, :, z]`` is an axial slice. A DICOM
image (a series folder) and its DICOM label (SEG or RTSTRUCT, ``flap_sam.data.dicom``) are read into the
same convention as a NIfTI pair and checked the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from flap_sam.data.dicom import is_dicom
from flap_sam.errors import DataError
from flap_sam.files import write_atomically

if TYPE_CHECKING:
    from flap_sam.data.dicom.labels import StructureNames
    from flap_sam.data.dicom.series import DicomSeries


def _reorient_to_file(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    current = nib.orientations.axcodes2ornt(("R", "A", "S"))
    target = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(current, target))


@dataclass(frozen=True)
class VolumeSource:
    """Where a case comes from and its grid, without its voxels: what a site keeps of a volume it has prepared.

    Attributes:
        image_path / label_path: the files (label_path None: unlabelled); a DICOM image: its folder or files.
        shape: canonical (X, Y, Z) array shape.
        affine: 4x4 voxel-to-world matrix of the ORIGINAL file (mm).
        original_shape: array shape in the original file.
        spacing: canonical voxel size (mm), (3,).
        name: file name (a DICOM series: its ``series_tag``), for messages that stay on the site.
        num_classes / label_map / structures: how the label is read (see ``load_volume``).
    """

    image_path: str | tuple[str, ...]
    label_path: str | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    original_shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    name: str
    num_classes: int
    label_map: tuple[tuple[int, int], ...] = ()
    structures: StructureNames | None = None

    def load_label(self) -> np.ndarray:
        """The full-resolution (X, Y, Z) uint8 label, read again from its file (checked as at start-up)."""
        if self.label_path is None:
            raise ValueError(f"image {self.image_path}: has no label")
        if is_dicom(self.label_path):
            label = load_volume(self.image_path, self.label_path, self.num_classes, self.label_map, structures=self.structures).label
            if label is None:
                raise ValueError(f"label {self.label_path}: not read")
            return label
        return _load_label(self.label_path, _read(self.label_path, "label"), self.num_classes, self.label_map)

    def to_original_orientation(self, array: np.ndarray) -> np.ndarray:
        """Map a canonical (X, Y, Z) array back onto the original file's voxel grid."""
        return _reorient_to_file(array, self.affine)


@dataclass
class Volume:
    """One case in canonical orientation, with its voxels.

    Attributes:
        image: (X, Y, Z) intensities (HU for CT): float32, or the file's integer type (half the memory of
            float32 for int16 CT); ``resize_volume`` converts a few slices at a time.
        label: (X, Y, Z) uint8 class indices, or None.
        source: files and grid (affine, original shape, spacing, name).
    """

    image: np.ndarray
    label: np.ndarray | None
    source: VolumeSource

    @property
    def affine(self) -> np.ndarray:
        return self.source.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.source.spacing

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def num_slices(self) -> int:
        return self.image.shape[2]

    def to_original_orientation(self, array: np.ndarray) -> np.ndarray:
        """Map a canonical (X, Y, Z) array back onto the original file's voxel grid."""
        return self.source.to_original_orientation(array)


def _read(path: str, what: str, channel: int | None = None) -> nib.Nifti1Image:
    """A 3D NIfTI image; of a 4D file (several sequences or phases) the ``channel``-th volume."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path}: file not found")
    try:
        img: Any = nib.load(path)  # a NIfTI image (nibabel types the loader as returning any image format)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt or truncated files  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        raise DataError(f"{what} {path}: cannot be read as NIfTI ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or np.linalg.matrix_rank(affine[:3, :3]) < 3:
        raise DataError(f"{what} {path}: its affine (voxel grid to mm) is missing, not finite or singular: the header is damaged")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 4:
        if channel is None:
            raise DataError(
                f"{what} {path}: has {data.shape[3]} channels (sequences or phases); set channel to the "
                f"index of the one to use (0..{data.shape[3] - 1})"
            )
        if not 0 <= channel < data.shape[3]:
            raise DataError(f"{what} {path}: channel {channel} does not exist (the file has {data.shape[3]}: 0..{data.shape[3] - 1})")
        data = data[..., channel]
        header = img.header.copy()
        header.set_data_shape(data.shape)
        return nib.Nifti1Image(np.asarray(data), img.affine, header)
    if data.ndim != 3:
        raise DataError(f"{what} {path}: expected a 3D volume, got shape {data.shape}")
    return nib.Nifti1Image(data, img.affine, img.header)


def _canonical(img: nib.Nifti1Image) -> np.ndarray:
    ornt = nib.orientations.io_orientation(img.affine)
    return nib.orientations.apply_orientation(np.asanyarray(img.dataobj), ornt)


def load_volume(
    image_path: str | tuple[str, ...],
    label_path: str | None,
    num_classes: int,
    label_map: tuple[tuple[int, int], ...] = (),
    channel: int | None = None,
    structures: StructureNames | None = None,
    series: DicomSeries | None = None,
) -> Volume:
    """Read, check and reorient one case: a NIfTI image, or a DICOM series (a folder), and its label.

    A DICOM image's label is a DICOM SEG or RTSTRUCT of that series; ``structures`` says which of its
    segments or ROIs are which class (``flap_sam.data.dicom.labels``). ``series``: the DICOM series of
    ``image_path`` when the caller has read it already (it is not read again).

    ``label_map`` pairs (source value, class index) are applied to the label before the range check.
    ``channel`` selects one volume of a 4D image (several MRI sequences or phases in one file);
    without it a 4D image with more than one channel is refused.

    Raises ``DataError`` (one line, naming the file) for: a missing or unreadable file,
    a non-3D array, NaN/Inf intensities, image/label shape or affine mismatch, label
    values that are not integers in ``0..num_classes``.
    """
    if series is None and is_dicom(image_path):
        from flap_sam.data.dicom.series import read_series

        series = read_series(image_path)
    if series is not None:
        image_img = series.nifti()
    elif isinstance(image_path, str):
        image_img = _read(image_path, "image", channel)
    else:
        raise DataError(f"image {image_path[0]}: a list of files is a DICOM series, and these are not DICOM")
    image = _canonical(image_img)
    if not np.issubdtype(image.dtype, np.integer):  # integer voxels (e.g. CT in int16) stay as stored: always finite
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: refused below
            image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise DataError(f"image {image_path}: contains NaN, infinite or out-of-range (beyond float32) values")
    label = None
    if label_path is not None and is_dicom(label_path):
        label = _load_label(label_path, _read_dicom_label(label_path, series, structures), num_classes, ())
    elif label_path is not None:
        label_img = _read(label_path, "label")
        if label_img.shape != image_img.shape:
            raise DataError(f"label {label_path}: shape {label_img.shape} differs from its image's {image_img.shape}")
        if not np.allclose(label_img.affine, image_img.affine, atol=1e-3):
            raise DataError(f"label {label_path}: affine differs from its image's (not on the same grid)")
        label = _load_label(label_path, label_img, num_classes, label_map)
    zooms = nib.affines.voxel_sizes(image_img.affine)
    ornt = nib.orientations.io_orientation(image_img.affine)
    sx, sy, sz = (float(zooms[int(ax)]) for ax in ornt[:, 0].argsort())
    spacing = (sx, sy, sz)
    name = series.tag if series is not None else os.path.basename(str(image_path))
    source = VolumeSource(
        image_path,
        label_path,
        tuple(image.shape),
        image_img.affine,
        image_img.shape,
        spacing,
        name,
        num_classes,
        tuple(label_map),
        structures,
    )
    return Volume(image, label, source)


def _read_dicom_label(label_path: str, series, structures: StructureNames | None) -> nib.Nifti1Image:
    """A SEG or RTSTRUCT of ``series`` as a NIfTI label on the series' grid."""
    from flap_sam.data.dicom.labels import read_label

    if series is None:
        raise DataError(f"label {label_path}: a DICOM label needs its DICOM image series as the image, not a NIfTI file")
    if not os.path.isfile(label_path):
        raise DataError(f"label {label_path}: a DICOM label is a SEG or RTSTRUCT file, not a folder")
    if structures is None:
        raise DataError(f"label {label_path}: a DICOM label needs the job's classes to map its structures to")
    return series.nifti(read_label(label_path, series, structures))


def _load_label(label_path: str, label_img: nib.Nifti1Image, num_classes: int, label_map: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Canonical (X, Y, Z) uint8 class indices, after ``label_map``; refuses non-integer or out-of-range values."""
    raw = _canonical(label_img)
    if np.issubdtype(raw.dtype, np.floating) and not (np.isfinite(raw).all() and np.all(raw == np.round(raw))):
        raise DataError(f"label {label_path}: contains non-integer values")
    if label_map:
        source = raw.astype(np.int64)
        raw = source.copy()
        for value, index in label_map:
            raw[source == value] = index
    low, high = int(raw.min()), int(raw.max())
    if low < 0 or high > num_classes:
        raise DataError(f"label {label_path}: values {low}..{high} outside 0..{num_classes} (num_classes={num_classes})")
    return raw.astype(np.uint8)


def save_mask(mask: np.ndarray, like: Volume, path: str) -> None:
    """Write a canonical (X, Y, Z) class-index mask as NIfTI on ``like``'s original grid and affine."""
    data = like.to_original_orientation(mask).astype(np.uint8)
    img = nib.Nifti1Image(data, like.affine)
    img.set_data_dtype(np.uint8)
    write_atomically(path, lambda tmp: nib.save(img, tmp), suffix=".nii.gz")
