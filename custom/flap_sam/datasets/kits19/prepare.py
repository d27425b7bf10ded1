"""``flap-sam prepare kits19``: KiTS19 as distributed -> one datalist per Fed-KiTS site.

Raw layout (the KiTS19 repository's ``data/`` folder)::

    RAW/case_00021/imaging.nii.gz        CT in HU
    RAW/case_00021/segmentation.nii.gz   0 background, 1 kidney, 2 tumour

``sites.csv`` is FLamby's Fed-KiTS assignment of 96 cases to 6 centres with its train/test
split (74/22). Centre ``k`` becomes ``site-{k+1}``.
"""

from __future__ import annotations

import csv
import os

from flap_sam.datasets.conversion import ConversionError, RawCase

SPLIT_FILE = os.path.join(os.path.dirname(__file__), "sites.csv")
IMAGE, LABEL = "imaging.nii.gz", "segmentation.nii.gz"


def site_name(centre_id: int) -> str:
    return f"site-{centre_id + 1}"


def read_split() -> list[tuple[str, int, str]]:
    """(case id, centre 0-5, train|test) for the 96 Fed-KiTS cases."""
    with open(SPLIT_FILE, encoding="utf-8") as f:
        return [(row["case_ids"], int(row["site_ids"]), row["train_test_split"]) for row in csv.DictReader(f)]


def find_cases(raw: str, sites: list[str] | None = None) -> tuple[list[RawCase], list[str], dict[str, str]]:
    """The Fed-KiTS cases of the selected sites in ``raw``; returns (cases, problems, site -> centre)."""
    if not os.path.isdir(raw):
        raise ConversionError(f"--raw {raw}: not a folder")
    if not any(name.startswith("case_") for name in os.listdir(raw)):
        raise ConversionError(f"--raw {raw}: no case_XXXXX folders; point --raw at the KiTS19 'data' folder")
    cases, problems, centres = [], [], {}
    for case_id, centre, split in read_split():
        site = site_name(centre)
        if sites and site not in sites:
            continue
        centres[site] = f"Fed-KiTS centre {centre}"
        folder = os.path.join(os.path.abspath(raw), case_id)
        paths = [os.path.join(folder, IMAGE), os.path.join(folder, LABEL)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if not os.path.isdir(folder):
            problems.append(f"{case_id}: folder {folder} not found")
        elif missing:
            problems.append(f"{case_id}: {', '.join(missing)} not found")
        else:
            cases.append(RawCase(case_id, site, split, *paths))
    return cases, problems, centres
