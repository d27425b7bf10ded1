"""``flap-sam prepare dicom``: a site's folder of DICOM studies -> its datalist.

Raw layout: any folder tree of DICOM files (as exported from PACS). Each single-frame CT or MR series
is a case when a DICOM SEG or RTSTRUCT references it, and the series has a folder of its own; its
datalist entry names that folder (image) and the SEG or RTSTRUCT file (label), both read where they
are at the site's start (``flap_sam.data.dicom``). A series that cannot be a case is skipped with the
reason, and the rest go on: no label references it, its folder holds another series, its geometry is
not a volume (``check_series``), none of its label's structures maps to a class.

The table this prints names series by ``series_tag`` and files by their path under the raw folder:
no DICOM tag value that identifies a patient or a study.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flap_sam.data.dicom.labels import StructureMapping, StructureNames, describe_label
from flap_sam.data.dicom.series import SeriesFiles, check_series, read_dicom, scan
from flap_sam.datasets.conversion import ConversionError, RawCase
from flap_sam.errors import DataError
from flap_sam.files import markdown_table


@dataclass(frozen=True)
class FoundSeries:
    """One series of the raw folder and what became of it (a row of the printed table).

    Attributes:
        series: the series' files.
        folder: its folder, relative to the raw folder.
        label: its SEG or RTSTRUCT, relative to the raw folder ("" if none).
        mapping: how the label's structures mapped to classes (None if no label).
        skipped: why it is not a case ("" when it is one).
    """

    series: SeriesFiles
    folder: str
    label: str
    mapping: StructureMapping | None
    skipped: str


def _structures_cell(mapping: StructureMapping | None) -> str:
    if mapping is None:
        return ""
    return "; ".join(f"{name} -> {class_name or '(no class: left out)'}" for name, class_name in mapping.structures)


def survey(raw: str, structures: StructureNames) -> tuple[list[FoundSeries], list[str]]:
    """Every series under ``raw``, with its label and mapping or the reason it is skipped; and unreadable files."""
    raw = os.path.abspath(raw)
    series_list, labels, problems = scan(raw)
    by_series: dict[str, list] = {}
    for header in labels:
        mapping = describe_label(header.filename, structures, header)
        by_series.setdefault(mapping.series_uid, []).append((header.filename, mapping))
    folders: dict[str, int] = {}
    for series in series_list:
        for folder in {os.path.dirname(f) for f in series.files}:
            folders[folder] = folders.get(folder, 0) + 1
    found = []
    for series in series_list:
        series_folders = {os.path.dirname(f) for f in series.files}
        folder = os.path.relpath(next(iter(series_folders)), raw)
        candidates = by_series.get(series.uid, [])
        label = candidates[0][0] if candidates else ""
        label_mapping: StructureMapping | None = candidates[0][1] if candidates else None
        reason = ""
        if not candidates:
            reason = "no SEG or RTSTRUCT references it"
        elif len(series_folders) > 1:
            reason = f"its files are in {len(series_folders)} folders; gather the series in one folder"
        elif folders[next(iter(series_folders))] > 1:
            reason = "its folder holds another series too; give each series a folder of its own"
        elif label_mapping is None or not any(class_name for _, class_name in label_mapping.structures):
            reason = "none of its label's structures is a class (name them with --structure-names)"
        else:
            try:
                check_series(series, [read_dicom(f, headers_only=True) for f in series.files])
            except DataError as e:
                reason = str(e).replace(raw + os.sep, "")
        if len(candidates) > 1:
            problems.append(f"{folder}: {len(candidates)} labels reference it; the first is used, {os.path.relpath(label, raw)}")
        found.append(FoundSeries(series, folder, os.path.relpath(label, raw) if label else "", label_mapping, reason))
    return sorted(found, key=lambda f: f.folder), [p.replace(raw + os.sep, "") for p in problems]


def format_survey(found: list[FoundSeries], notes: list[str]) -> str:
    """The table of what was found (series, files, label, structures and how each mapped) and the skipped series."""
    rows = [
        [
            f.series.tag,
            f.series.modality,
            len(f.series.files),
            f.folder,
            f.label or "-",
            _structures_cell(f.mapping),
            "case" if not f.skipped else f"skipped: {f.skipped}",
        ]
        for f in found
    ]
    table = markdown_table(["series", "modality", "slices", "folder", "label", "structures -> classes", "use"], rows)
    return table + "".join(f"\nnote: {note}" for note in notes)


def find_cases(raw: str, site: str, structures: StructureNames) -> tuple[list[RawCase], list[FoundSeries], list[str]]:
    """The cases of one site's DICOM folder (all in the training split), every series found, and notes."""
    if not os.path.isdir(raw):
        raise ConversionError(f"--raw {raw}: not a folder")
    found, notes = survey(raw, structures)
    if not found:
        raise ConversionError(f"--raw {raw}: no single-frame CT or MR DICOM series in it" + (f" ({notes[0]})" if notes else ""))
    root = os.path.abspath(raw)
    cases = [RawCase(f.folder, site, "train", os.path.join(root, f.folder), os.path.join(root, f.label)) for f in found if not f.skipped]
    return cases, found, notes
