"""Ground truth from DICOM: a SEG or an RTSTRUCT read onto its image series' grid as class indices.

Segments (by segment label, then by the meaning of their property type) and ROIs (by name) are mapped
to the job's classes by ``StructureNames``: each class matches its own name and the names a site
lists for it in the setting ``structure_names`` (hospitals name the same organ differently:
``Kidney_L``, ``kidney left``, ``GTV``). Names are compared case-blind, with punctuation and spaces
folded (``Kidney_L`` = ``kidney l``). A structure that maps to no class is left out and reported;
where structures overlap, the higher class index wins (a tumour inside its kidney).

RTSTRUCT contours (closed planar polygons in patient mm) are filled by pixel centres, holes by the
even-odd rule (each further contour on a slice toggles the pixels it encloses), with matplotlib's
point-in-polygon test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flap_sam.data.dicom import series_tag
from flap_sam.data.dicom.series import DicomSeries, read_dicom
from flap_sam.errors import DataError


def names_of(class_name: str, names, setting: str = "structure_names") -> tuple[str, ...]:
    """One class's entry of ``structure_names`` as a tuple of names: a list, or one text separated by ``|``."""
    if isinstance(names, str):
        names = names.split("|")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{setting}: the names of {class_name} must be a list of texts or one text separated by '|', not {names!r}")
    return tuple(n.strip() for n in names)


def fold(name: str) -> str:
    """How structure names are compared: lower case, every run of non-alphanumerics one space."""
    return re.sub(r"[^0-9a-z]+", " ", str(name).lower()).strip()


@dataclass(frozen=True)
class StructureNames:
    """Which segment labels and ROI names mean which class.

    Attributes:
        class_names: the job's foreground classes (class ``i`` is ``class_names[i - 1]``).
        names: (folded name, class index) pairs: every class's own name, then the site's extra names.
    """

    class_names: tuple[str, ...]
    names: tuple[tuple[str, int], ...]

    @classmethod
    def build(
        cls, class_names: Sequence[str], extra: Mapping[str, Sequence[str] | str] | None = None, setting: str = "structure_names"
    ) -> StructureNames:
        """The classes' own names plus ``extra`` (class -> names, a list or one text separated by ``|``).

        Raises:
            ValueError: one line naming ``setting``: a key that is not a class, a name given to two classes.
        """
        index = {name: i for i, name in enumerate(class_names, start=1)}
        pairs = {fold(name): i for name, i in index.items()}
        for class_name, names in (extra or {}).items():
            if class_name not in index:
                raise ValueError(f"{setting}: {class_name!r} is not a class of this job (classes: {', '.join(class_names)})")
            for name in names_of(class_name, names, setting):
                folded = fold(name)
                if not folded:
                    raise ValueError(f"{setting}: an empty name for {class_name}")
                if pairs.get(folded, index[class_name]) != index[class_name]:
                    raise ValueError(f"{setting}: {name!r} is given to {class_name} and to {class_names[pairs[folded] - 1]}")
                pairs[folded] = index[class_name]
        return cls(tuple(class_names), tuple(pairs.items()))

    def class_of(self, *names: str) -> int | None:
        """The class index of the first of ``names`` that maps to a class, else None."""
        lookup = dict(self.names)
        for name in names:
            if name and fold(name) in lookup:
                return lookup[fold(name)]
        return None


@dataclass(frozen=True)
class StructureMapping:
    """What a label file holds and how each of its structures mapped (``flap-sam prepare dicom``'s table).

    Attributes:
        kind: ``SEG`` | ``RTSTRUCT``.
        series_uid: the image series it references (stays on the site).
        structures: (structure name, class name or None when it maps to no class), in file order.
    """

    kind: str
    series_uid: str
    structures: tuple[tuple[str, str | None], ...]


def _referenced_series(ds) -> str | None:
    if ds.Modality == "SEG":
        refs = ds.get("ReferencedSeriesSequence", [])
        return str(refs[0].SeriesInstanceUID) if refs else None
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID)
    return None


def _segments(ds) -> list[tuple[int, str, str]]:
    """(segment number, label, property type meaning) of a SEG's segments."""
    out = []
    for item in ds.SegmentSequence:
        types = item.get("SegmentedPropertyTypeCodeSequence", [])
        out.append((int(item.SegmentNumber), str(item.get("SegmentLabel", "")), str(types[0].CodeMeaning) if types else ""))
    return out


def _rois(ds) -> list[tuple[int, str]]:
    return [(int(item.ROINumber), str(item.get("ROIName", ""))) for item in ds.get("StructureSetROISequence", [])]


def describe_label(path: str, structures: StructureNames, header=None) -> StructureMapping:
    """What the SEG or RTSTRUCT at ``path`` holds and how its structures map (headers only for a SEG)."""
    ds = header if header is not None else read_dicom(path, "label", headers_only=True)
    names = (
        [(label or meaning, structures.class_of(label, meaning)) for _, label, meaning in _segments(ds)]
        if ds.Modality == "SEG"
        else [(name, structures.class_of(name)) for _, name in _rois(ds)]
    )
    return StructureMapping(
        str(ds.Modality), _referenced_series(ds) or "", tuple((name, structures.class_names[c - 1] if c else None) for name, c in names)
    )


def read_label(path: str, series: DicomSeries, structures: StructureNames) -> np.ndarray:
    """The class-index label of ``series`` from the SEG or RTSTRUCT at ``path``.

    Returns:
        (slices, rows, cols) uint8 on the series' grid, in its stack order (``DicomSeries.volume``).

    Raises:
        DataError: one line naming the file: not a SEG or RTSTRUCT, of another series, no structure maps
            to a class, a contour off the series' slices.
    """
    ds = read_dicom(path, "label")
    if ds.get("Modality") not in ("SEG", "RTSTRUCT"):
        raise DataError(f"label {path}: a DICOM {ds.get('Modality', 'object')}, not a SEG or an RTSTRUCT")
    referenced = _referenced_series(ds)
    if referenced != series.files.uid:
        other = series_tag(referenced) if referenced else "no series"
        raise DataError(f"label {path}: this {ds.Modality} references {other}, not its image {series.tag}")
    mapping = describe_label(path, structures, ds)
    if not any(class_name for _, class_name in mapping.structures):
        listed = ", ".join(repr(name) for name, _ in mapping.structures) or "none"
        raise DataError(
            f"label {path}: none of its structures ({listed}) is a class of this job "
            f"({', '.join(structures.class_names)}); name them in the site setting structure_names"
        )
    return _read_seg(path, ds, series, structures) if ds.Modality == "SEG" else _read_rtstruct(path, ds, series, structures)


def _read_seg(path: str, ds, series: DicomSeries, structures: StructureNames) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(ds)
    mapped = sorted(
        (class_index, number)
        for number, label, meaning in _segments(ds)
        if (class_index := structures.class_of(label, meaning)) is not None and class_index
    )
    try:
        masks = seg.get_pixels_by_source_instance(
            series.sop_instance_uids, segment_numbers=[n for _, n in mapped], assert_missing_frames_are_empty=True
        )
    except Exception as e:  # highdicom raises several types for frames it cannot place  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        raise DataError(
            f"label {path}: its frames do not match its series {series.tag} ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    label = np.zeros(tuple(series.volume.spatial_shape), np.uint8)
    for k, (class_index, _) in enumerate(mapped):  # ascending class: the higher class wins where segments overlap
        label[masks[..., k] > 0] = class_index
    return label


def _read_rtstruct(path: str, ds, series: DicomSeries, structures: StructureNames) -> np.ndarray:
    from matplotlib.path import Path

    shape = tuple(series.volume.spatial_shape)
    rows, cols = np.mgrid[0 : shape[1], 0 : shape[2]]
    centres = np.column_stack([rows.ravel(), cols.ravel()])
    names = dict(_rois(ds))
    label = np.zeros(shape, np.uint8)
    by_class = sorted(
        ((structures.class_of(names.get(int(item.ReferencedROINumber), "")), item) for item in ds.get("ROIContourSequence", [])),
        key=lambda pair: pair[0] or 0,
    )
    for class_index, roi in by_class:
        if not class_index:
            continue
        mask = np.zeros(shape, bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            indices = series.volume.map_reference_to_indices(points)  # (N, 3) float (slice, row, col)
            k = int(np.round(indices[:, 0].mean()))
            if np.abs(indices[:, 0] - k).max() > 0.25 or not 0 <= k < shape[0]:
                raise DataError(
                    f"label {path}: a contour of ROI {names.get(int(roi.ReferencedROINumber), '?')!r} does not "
                    f"lie on a slice of {series.tag}"
                )
            inside = Path(indices[:, 1:]).contains_points(centres).reshape(shape[1:])
            mask[k] ^= inside
        label[mask] = class_index
    return label
