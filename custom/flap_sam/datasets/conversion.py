"""What every ``flap-sam prepare`` converter shares: check each case, split, write per-site datalists atomically.

A converter (one folder per dataset, next to this file) only finds the raw cases and
assigns each to a site and to the published train/test split; :func:`convert` does the rest:

1. reads every case with the project's own loader (``load_volume``: readable NIfTI, 3D,
   image/label on the same grid, label values valid for the dataset), collecting one line
   per problem and going on, so a user sees every problem of a download in one run;
2. if anything is wrong: prints the problems and writes nothing;
3. otherwise writes ``<out>/<site>.json`` (training / validation / test) and
   ``<out>/summary.json`` into a temporary folder next to ``out`` and renames it into place,
   so a failed or interrupted run never leaves output that looks complete.

The validation split is carved deterministically out of the published training split
(model selection must not see the test cases); the test split is the published one, unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field

import numpy as np

from flap_sam.data.datalist import write_datalist
from flap_sam.data.dicom.labels import StructureNames
from flap_sam.data.profiles import DatasetProfile
from flap_sam.data.volumes import load_volume
from flap_sam.errors import DataError
from flap_sam.files import markdown_table, write_json


class ConversionError(DataError):
    """A raw dataset that cannot be converted; the message lists every problem, one per line."""


@dataclass(frozen=True)
class RawCase:
    """One case of a raw dataset as a converter found it.

    Attributes:
        case_id: the dataset's own case name (``case_00021``, ``IXI002``, ``RUNMC/Case03``).
        site: the federation's site name (``site-1`` ...).
        split: ``train`` or ``test`` (the published split).
        image, label: absolute paths of the NIfTI files (DICOM: the series' folder and its SEG or RTSTRUCT file).
    """

    case_id: str
    site: str
    split: str
    image: str
    label: str


@dataclass(frozen=True)
class CaseStats:
    """What the summary needs of one checked case (the volume itself is not kept)."""

    slices: int
    foreground_slices: int
    spacing: tuple[float, float, float]


@dataclass
class SiteSummary:
    """Per-site numbers printed after a conversion (and written to ``summary.json``)."""

    site: str
    centre: str
    cases: dict[str, int] = field(default_factory=lambda: {"training": 0, "validation": 0, "test": 0})
    slices: int = 0
    foreground_slices: int = 0
    spacing_min: list[float] = field(default_factory=lambda: [np.inf] * 3)
    spacing_max: list[float] = field(default_factory=lambda: [0.0] * 3)

    def add(self, section: str, stats: CaseStats) -> None:
        self.cases[section] += 1
        self.slices += stats.slices
        self.foreground_slices += stats.foreground_slices
        self.spacing_min = [min(a, b) for a, b in zip(self.spacing_min, stats.spacing)]
        self.spacing_max = [max(a, b) for a, b in zip(self.spacing_max, stats.spacing)]

    def spacing_range(self) -> str:
        low = "x".join(f"{v:.2f}" for v in self.spacing_min)
        high = "x".join(f"{v:.2f}" for v in self.spacing_max)
        return low if low == high else f"{low} .. {high}"


def validation_split(case_ids: list[str], fraction: float) -> set[str]:
    """Deterministic validation cases out of a site's training cases: evenly spaced in sorted order.

    At least one case when the site has two or more; none when it has one.
    """
    ordered = sorted(case_ids)
    if len(ordered) < 2 or fraction <= 0:
        return set()
    n_val = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    picks = np.linspace(0, len(ordered) - 1, n_val + 2)[1:-1].round().astype(int)
    return {ordered[i] for i in picks}


def _progress(done: int, total: int, what: str) -> None:
    step = max(1, total // 20)
    if done == total or done % step == 0:
        print(f"  checked {done}/{total} cases ({what})", file=sys.stderr, flush=True)


def check_cases(
    cases: list[RawCase], profile: DatasetProfile, structures: StructureNames | None = None
) -> tuple[dict[str, CaseStats], list[str]]:
    """Read every case (one at a time); returns ({case_id: stats}, problems). ``structures``: DICOM labels' classes."""
    checked, problems = {}, []
    for i, case in enumerate(cases, start=1):
        try:
            volume = load_volume(case.image, case.label, profile.num_classes, profile.label_map, profile.channel, structures)
            fg = int(volume.label.any(axis=(0, 1)).sum()) if volume.label is not None else 0
            checked[case.case_id] = CaseStats(volume.num_slices, fg, volume.spacing)
        except DataError as e:
            problems.append(f"{case.case_id}: {e}")
        _progress(i, len(cases), case.case_id)
    return checked, problems


def _entry(case: RawCase, copy_root: str | None) -> dict[str, str]:
    """The datalist entry of a case: absolute raw paths, or paths relative to the output when copied."""
    if copy_root is None:
        return {"image": case.image, "label": case.label}
    entry = {}
    for key, kind in (("image", "images"), ("label", "labels")):
        # one folder per case: raw datasets often name every case's file alike (KiTS19: imaging.nii.gz)
        relative = os.path.join(kind, case.site, case.case_id, os.path.basename(getattr(case, key)))
        os.makedirs(os.path.dirname(os.path.join(copy_root, relative)), exist_ok=True)
        shutil.copy2(getattr(case, key), os.path.join(copy_root, relative))
        entry[key] = relative
    return entry


def convert(
    dataset: str,
    cases: list[RawCase],
    problems: list[str],
    centres: dict[str, str],
    profile: DatasetProfile,
    out: str,
    copy: bool = False,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    structures: StructureNames | None = None,
) -> dict[str, SiteSummary]:
    """Check, split and write ``cases`` as per-site datalists in ``out``; returns the per-site summaries.

    Args:
        dataset: name recorded in ``summary.json``.
        cases: the cases of the selected sites, from the converter.
        problems: what the converter already found wrong (missing cases ...), one line each.
        centres: site name -> the dataset's centre name, for the summary.
        profile: the dataset's profile (class count, label map).
        out: output folder; must not exist unless ``overwrite``.
        copy: copy the volumes into ``out`` instead of pointing at the raw files.
        val_fraction: share of each site's training cases used for validation.
        structures: how DICOM labels' segments and ROIs map to the profile's classes (DICOM cases only).

    Raises:
        ConversionError: listing every problem; nothing is written.
    """
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise ConversionError(f"output {out}: already exists; choose another --out or pass --overwrite")
    checked, read_problems = check_cases(cases, profile, structures)
    problems = problems + read_problems
    if problems:
        raise ConversionError(f"{len(problems)} problem(s), nothing written:\n  " + "\n  ".join(problems))
    if not cases:
        raise ConversionError("no cases selected, nothing written")

    summaries: dict[str, SiteSummary] = {}
    tmp = f"{out}.partial-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        for site in sorted({c.site for c in cases}):
            site_cases = sorted((c for c in cases if c.site == site), key=lambda c: c.case_id)
            val_ids = validation_split([c.case_id for c in site_cases if c.split == "train"], val_fraction)
            sections: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
            summary = summaries[site] = SiteSummary(site, centres.get(site, site))
            for case in site_cases:
                section = "test" if case.split == "test" else "validation" if case.case_id in val_ids else "training"
                sections[section].append(_entry(case, tmp if copy else None))
                summary.add(section, checked[case.case_id])
            write_datalist(os.path.join(tmp, f"{site}.json"), sections["training"], sections["validation"], sections["test"])
        record = {
            "dataset": dataset,
            "copied": copy,
            "val_fraction": val_fraction,
            "sites": {
                s: {
                    "centre": v.centre,
                    "cases": v.cases,
                    "slices": v.slices,
                    "foreground_slices": v.foreground_slices,
                    "spacing_mm_min": v.spacing_min,
                    "spacing_mm_max": v.spacing_max,
                }
                for s, v in summaries.items()
            },
        }
        write_json(os.path.join(tmp, "summary.json"), record)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summaries


def _move_into_place(tmp: str, out: str) -> None:
    if os.path.exists(out):
        old = f"{out}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def format_summary(summaries: dict[str, SiteSummary]) -> str:
    """A Markdown table: site, centre, train/val/test cases, slices with foreground, voxel spacing range."""
    return markdown_table(
        ["site", "centre", "train", "val", "test", "slices with foreground", "spacing (mm, x*y*z)"],
        [
            [
                s.site,
                s.centre,
                s.cases["training"],
                s.cases["validation"],
                s.cases["test"],
                f"{s.foreground_slices}/{s.slices}",
                s.spacing_range(),
            ]
            for s in summaries.values()
        ],
    )
