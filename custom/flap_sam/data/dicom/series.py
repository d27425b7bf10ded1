"""Find, check and read DICOM image series (CT, MR) into the NIfTI convention.

The reader is highdicom's ``get_volume_from_series``: it sorts the slices along the stack, checks one
frame of reference, orientation and pixel spacing, applies the modality transform (rescale slope and
intercept: CT in HU) and returns the volume with its affine, which ``Volume.to_nibabel`` turns into
nibabel's RAS convention, the one every NIfTI volume of the product is read in. (MONAI's ITK reader
would need ITK, a large dependency; its pydicom reader does not check the stack's geometry.)

Before reading, ``check_series`` says in one line what a series cannot be used for, naming a file:
two series in one folder, multi-frame (enhanced) objects, compressed pixel data without a decoder,
mixed orientations, gantry tilt, duplicated, missing or unevenly spaced slices. Localizers (scouts)
mixed into a series folder are left out. Messages name files by their path, never a tag value.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from flap_sam.data.dicom import is_dicom_file, series_tag
from flap_sam.errors import DataError

logger = logging.getLogger(__name__)

# SOP classes read as image series (single-frame CT and MR); SEG and RTSTRUCT are labels (flap_sam.data.dicom.labels)
IMAGE_SOP_CLASSES = {pydicom.uid.CTImageStorage: "CT", pydicom.uid.MRImageStorage: "MR"}
ENHANCED_SOP_CLASSES = {pydicom.uid.EnhancedCTImageStorage, pydicom.uid.EnhancedMRImageStorage}
# Geometry tolerances, in mm or as a share of the slice step
POSITION_TOL_MM = 0.01
ORIENTATION_TOL = 1e-4
SPACING_TOL = 0.01


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one image series found on disk (headers only; no pixel data read).

    Attributes:
        tag: ``series_tag`` of its SeriesInstanceUID (what messages and tables show).
        uid: the SeriesInstanceUID (stays on the site: used to match a SEG or RTSTRUCT to its series).
        modality: ``CT`` | ``MR``.
        files: its image files, in file-name order.
        localizers: localizer (scout) files found with it and left out.
    """

    tag: str
    uid: str
    modality: str
    files: tuple[str, ...]
    localizers: tuple[str, ...] = ()


def read_dicom(path: str, what: str = "", headers_only: bool = False) -> Dataset:
    """One DICOM file (``headers_only``: without its pixel data); ``DataError`` naming it (``what`` first) if unreadable.

    ``force``: some writers leave out the preamble and file meta of a ``*.dcm``.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
    except Exception as e:  # pydicom raises many types for a damaged file  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        # Only the error's type: pydicom's message may quote a header value, which never reaches a log.
        raise DataError(
            f"{what + ' ' if what else ''}{path}: cannot be read as DICOM ({type(e).__name__}; damaged or truncated?)"
        ) from None


def _read_header(path: str) -> Dataset | None:
    """A DICOM file's header without its pixel data; None for a file that is not DICOM."""
    return read_dicom(path, headers_only=True) if is_dicom_file(path) else None


def _files_under(path: str | tuple[str, ...]) -> list[str]:
    if isinstance(path, tuple):
        missing = [f for f in path if not os.path.isfile(f)]
        if missing:
            raise DataError(f"image {missing[0]}: file not found ({len(missing)} of the series' {len(path)} files missing)")
        return sorted(path)
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)


def _is_localizer(header: Dataset) -> bool:
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    return "LOCALIZER" in image_type


def scan(path: str | tuple[str, ...]) -> tuple[list[SeriesFiles], list[Dataset], list[str]]:
    """The image series, the other DICOM objects (SEG, RTSTRUCT, ...) and the problems under ``path`` (a folder,
    a file, or a tuple of files).

    Returns:
        (series in tag order, headers of non-image objects, one line per file that could not be read
        or is an image kind the product does not read, e.g. multi-frame)
    """
    images: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
    others, problems = [], []
    for file in _files_under(path):
        try:
            header = _read_header(file)
        except DataError as e:
            problems.append(str(e))
            continue
        if header is None:
            continue
        sop_class = header.get("SOPClassUID")
        if sop_class in IMAGE_SOP_CLASSES:
            images[str(header.SeriesInstanceUID)].append((file, header))
        elif sop_class in ENHANCED_SOP_CLASSES or int(header.get("NumberOfFrames", 1) or 1) > 1 and "PixelData" in header:
            problems.append(
                f"{file}: a multi-frame (enhanced) image object; the product reads single-frame CT and MR "
                "series: export the series as single-frame images"
            )
        elif header.get("Modality") in ("SEG", "RTSTRUCT"):
            header.filename = file
            others.append(header)
        elif sop_class is not None and "PixelData" in header:
            problems.append(f"{file}: {getattr(sop_class, 'name', sop_class)} is not a CT or MR image; left out")
    found = []
    for uid, members in images.items():
        localizers = tuple(f for f, h in members if _is_localizer(h))
        files = tuple(f for f, h in members if not _is_localizer(h))
        if files:
            found.append(SeriesFiles(series_tag(uid), uid, IMAGE_SOP_CLASSES[members[0][1].SOPClassUID], files, localizers))
    return sorted(found, key=lambda s: s.tag), others, problems


def find_series(path: str | tuple[str, ...], what: str = "image") -> SeriesFiles:
    """The one image series of a folder (or a tuple of files); ``DataError`` naming the folder otherwise."""
    if isinstance(path, tuple):
        if not path:
            raise DataError(f"{what}: an empty list of files")
    elif not os.path.exists(path):
        raise DataError(f"{what} {path}: not found")
    series, _, problems = scan(path)
    if not series:
        detail = f" ({problems[0]})" if problems else ""
        raise DataError(f"{what} {path}: no single-frame CT or MR DICOM image in it{detail}")
    if len(series) > 1:
        listing = ", ".join(f"{s.tag} ({len(s.files)} files)" for s in series)
        raise DataError(
            f"{what} {path}: holds {len(series)} series ({listing}); name a folder with one series "
            "(`flap-sam prepare dicom` lists and separates them)"
        )
    found = series[0]
    if found.localizers:
        logger.info("%s %s: left out %d localizer image(s) of %s", what, path, len(found.localizers), found.tag)
    return found


def _check_decoder(file: str, header: Dataset) -> None:
    syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DataError(f"{file}: pixel data compressed as {syntax.name}, which pydicom cannot decode") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise DataError(f"{file}: pixel data compressed as {syntax.name} and no decoder for it is installed (pydicom's options: {needs})")


def check_series(series: SeriesFiles, headers: list[Dataset]) -> None:
    """Check a series' geometry and encoding (``headers``: its files' datasets, in ``series.files`` order).

    Raises:
        DataError: one line naming a file: compressed pixel data without a decoder, fewer than two
            slices, different orientations or sizes, gantry tilt (slices shifted in-plane), duplicated,
            missing or unevenly spaced slices.
    """
    files = series.files
    _check_decoder(files[0], headers[0])
    if len(headers) < 2:
        raise DataError(f"{files[0]}: {series.tag} has one slice, not a volume")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise DataError(f"{os.path.dirname(files[0])}: {series.tag} mixes image sizes {sorted(sizes)}")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOL)
    if odd.size:
        raise DataError(
            f"{files[odd[0]]}: oriented differently from {files[0]} in {series.tag} "
            "(a reformatted or localizer image mixed into the series?)"
        )
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    in_plane = (positions - positions[0]) - np.outer(along - along[0], normal)
    shift = float(np.abs(in_plane).max())
    if shift > POSITION_TOL_MM * len(headers):
        raise DataError(
            f"{os.path.dirname(files[0])}: {series.tag}'s slices are shifted in-plane along the stack by up to "
            f"{shift:.1f} mm (gantry tilt or a sheared series); resample it to an orthogonal grid first"
        )
    steps = np.diff(along)
    duplicates = np.flatnonzero(steps < POSITION_TOL_MM)
    if duplicates.size:
        i = duplicates[0]
        raise DataError(f"{files[order[i + 1]]}: at the same position as {files[order[i]]} (a duplicated slice in {series.tag})")
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > SPACING_TOL * step)
    if uneven.size:
        i = uneven[0]
        gap = float(steps[i])
        kind = (
            f"{round(gap / step) - 1} missing slice(s)"
            if gap > step and abs(gap / step - round(gap / step)) < SPACING_TOL
            else "uneven slice spacing"
        )
        raise DataError(
            f"{files[order[i + 1]]}: {kind}: {gap:.2f} mm from {os.path.basename(files[order[i]])} where {series.tag} steps {step:.2f} mm"
        )


@dataclass
class DicomSeries:
    """One checked image series, read.

    Attributes:
        files: the series' files, how ``check_series`` found it.
        datasets: its slices with pixel data, sorted along the stack (the order of ``volume``'s first axis).
        volume: highdicom ``Volume``: array (slices, rows, cols) with rescale applied, affine in LPS mm.
    """

    files: SeriesFiles
    datasets: list[Dataset]
    volume: Any  # highdicom.Volume (imported lazily: highdicom is only needed for DICOM data)

    @property
    def tag(self) -> str:
        return self.files.tag

    @property
    def sop_instance_uids(self) -> list[str]:
        """The slices' SOPInstanceUIDs in stack order (a SEG's frames are matched to them)."""
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def nifti(self, array: np.ndarray | None = None):
        """The series (or ``array`` (slices, rows, cols) on its grid) as a ``nibabel.Nifti1Image`` (RAS affine)."""
        volume = self.volume if array is None else self.volume.with_array(array)
        return volume.to_nibabel()


def read_series(path: str | tuple[str, ...], what: str = "image") -> DicomSeries:
    """Read the one image series of ``path`` (a folder, or a tuple of the series' files).

    CT values are in HU (int16 when the rescale keeps them whole numbers); MR values as stored, scaled
    by their rescale if any (float32).

    Raises:
        DataError: one line naming the folder or a file (see ``check_series``).
    """
    import highdicom as hd

    files = find_series(path, what)
    datasets = [read_dicom(file) for file in files.files]
    check_series(files, datasets)
    try:
        # the stack order highdicom gives the volume's first axis (a SEG's frames and the SEG written are matched to it)
        _, positions = hd.spatial.get_series_volume_positions(datasets)
        if positions is None:
            raise ValueError("the slices' positions do not form a volume")
        datasets = [datasets[positions.index(i)] for i in range(len(datasets))]
        volume = hd.get_volume_from_series(datasets, dtype=np.float32, apply_voi_transform=False, apply_presentation_lut=False)
    except Exception as e:  # decoding and geometry errors come as several types  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        raise DataError(
            f"{what} {path}: {files.tag} cannot be read as a volume ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    array = np.asarray(volume.array)
    if not np.isfinite(array).all():
        raise DataError(f"{what} {path}: {files.tag} has NaN or infinite values after its rescale")
    whole = np.round(array)
    if np.array_equal(whole, array) and whole.min() >= np.iinfo(np.int16).min and whole.max() <= np.iinfo(np.int16).max:
        volume = volume.with_array(whole.astype(np.int16))  # CT in whole HU: half the memory of float32
    return DicomSeries(files, datasets, volume)
