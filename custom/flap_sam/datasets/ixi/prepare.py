"""``flap-sam prepare ixi``: IXI-Tiny as FLamby distributes it -> one datalist per Fed-IXI site.

Raw layout (the extracted IXI-Tiny archive; ``--raw`` may point at ``IXI_sample`` or a folder above it)::

    IXI_sample/IXI002-Guys-0828/T1/IXI002-Guys-0828-T1.nii.gz      T1 image (one .nii.gz)
    IXI_sample/IXI002-Guys-0828/label/IXI002-Guys-0828-...nii.gz   brain mask (one .nii.gz)

``sites.csv`` is FLamby's split (Patient ID, Manufacturer = centre 0 Guys / 1 HH / 2 IOP,
train/test): Guys 249/62, HH 145/36, IOP 59/15. Guys -> site-1, HH -> site-2, IOP -> site-3.
"""

from __future__ import annotations

import csv
import glob
import os
import re

from flap_sam.datasets.conversion import ConversionError, RawCase

SPLIT_FILE = os.path.join(os.path.dirname(__file__), "sites.csv")
CENTRES = ("Guys", "HH", "IOP")
SUBJECT = re.compile(r"^IXI(\d{3})-(Guys|HH|IOP)-\d+$")


def site_name(centre: str) -> str:
    return f"site-{CENTRES.index(centre) + 1}"


def read_split() -> dict[int, tuple[str, str]]:
    """patient id -> (centre name, train|test) for the 566 IXI-Tiny subjects."""
    with open(SPLIT_FILE, encoding="utf-8") as f:
        return {int(r["Patient ID"]): (CENTRES[int(r["Manufacturer"])], r["Split"]) for r in csv.DictReader(f)}


def subjects_folder(raw: str) -> str:
    """The folder that holds the ``IXI<id>-<centre>-<n>`` subject folders."""
    if not os.path.isdir(raw):
        raise ConversionError(f"--raw {raw}: not a folder")
    for candidate in (raw, os.path.join(raw, "IXI_sample"), *glob.glob(os.path.join(raw, "*", "IXI_sample"))):
        if os.path.isdir(candidate) and any(SUBJECT.match(n) for n in os.listdir(candidate)):
            return os.path.abspath(candidate)
    raise ConversionError(f"--raw {raw}: no IXI<id>-<Guys|HH|IOP>-<n> subject folders (looked in it and in IXI_sample/)")


def _single_nifti(folder: str) -> tuple[str | None, str | None]:
    """(path, problem): the one .nii.gz file of a subject's T1/ or label/ folder."""
    files = sorted(glob.glob(os.path.join(folder, "*.nii.gz")))
    if len(files) == 1:
        return files[0], None
    return None, f"{folder}: expected one .nii.gz file, found {len(files)}"


def find_cases(raw: str, sites: list[str] | None = None) -> tuple[list[RawCase], list[str], dict[str, str]]:
    """The IXI-Tiny subjects of the selected sites; returns (cases, problems, site -> centre)."""
    root = subjects_folder(raw)
    found = {}
    for name in sorted(os.listdir(root)):
        match = SUBJECT.match(name)
        if match:
            found[int(match.group(1))] = (name, match.group(2))
    cases, problems, centres = [], [], {}
    for patient, (centre, split) in sorted(read_split().items()):
        site = site_name(centre)
        if sites and site not in sites:
            continue
        centres[site] = centre
        case_id = f"IXI{patient:03d}"
        if patient not in found:
            problems.append(f"{case_id}: no subject folder {case_id}-{centre}-* in {root}")
            continue
        folder, folder_centre = found[patient]
        if folder_centre != centre:
            problems.append(f"{case_id}: folder {folder} says centre {folder_centre}, the published split says {centre}")
            continue
        image, image_problem = _single_nifti(os.path.join(root, folder, "T1"))
        label, label_problem = _single_nifti(os.path.join(root, folder, "label"))
        if image_problem or label_problem or image is None or label is None:
            problems.append(f"{case_id}: {image_problem or label_problem}")
            continue
        cases.append(RawCase(case_id, site, split, image, label))
    return cases, problems, centres
