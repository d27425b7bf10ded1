"""``flap-sam prepare prostate``: the six-site prostate MRI collection -> one datalist per site.

Raw layout::

    RAW/RUNMC/Case00.nii.gz                T2 MRI
    RAW/RUNMC/Case00_segmentation.nii.gz   prostate (label 1 or 2; the prostate profile maps 2 -> 1)
    RAW/BMC/...  RAW/I2CVB/...  RAW/UCL/...  RAW/BIDMC/...  RAW/HK/...

``sites.json`` gives each site's case count and held-out test cases (the reference code's);
every other case trains. RUNMC, BMC, I2CVB, UCL, BIDMC, HK -> site-1 .. site-6.
"""

from __future__ import annotations

import json
import os
import re

from flap_sam.datasets.conversion import ConversionError, RawCase

SPLIT_FILE = os.path.join(os.path.dirname(__file__), "sites.json")
CENTRES = ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK")
IMAGE = re.compile(r"^Case(\d+)\.nii\.gz$", re.IGNORECASE)
LABEL = re.compile(r"^Case(\d+)_segmentation\.nii\.gz$", re.IGNORECASE)


def site_name(centre: str) -> str:
    return f"site-{CENTRES.index(centre) + 1}"


def read_split() -> dict[str, dict]:
    """centre -> {"cases": count, "test": [case numbers as 2-digit strings]}."""
    with open(SPLIT_FILE, encoding="utf-8") as f:
        return json.load(f)["sites"]


def _files(folder: str, pattern: re.Pattern) -> dict[str, str]:
    return {m.group(1): os.path.join(folder, n) for n in sorted(os.listdir(folder)) if (m := pattern.match(n))}


def find_cases(raw: str, sites: list[str] | None = None) -> tuple[list[RawCase], list[str], dict[str, str]]:
    """The cases of the selected sites; returns (cases, problems, site -> centre)."""
    if not os.path.isdir(raw):
        raise ConversionError(f"--raw {raw}: not a folder")
    if not any(os.path.isdir(os.path.join(raw, c)) for c in CENTRES):
        raise ConversionError(f"--raw {raw}: none of the site folders {', '.join(CENTRES)}")
    cases, problems, centres = [], [], {}
    for centre, spec in read_split().items():
        site = site_name(centre)
        if sites and site not in sites:
            continue
        centres[site] = centre
        folder = os.path.join(os.path.abspath(raw), centre)
        if not os.path.isdir(folder):
            problems.append(f"{centre}: folder {folder} not found")
            continue
        images, labels = _files(folder, IMAGE), _files(folder, LABEL)
        for number in sorted(set(images) ^ set(labels)):
            what = "segmentation" if number in images else "image"
            problems.append(f"{centre}/Case{number}: {what} file missing in {folder}")
        numbers = sorted(set(images) & set(labels))
        if len(images) != spec["cases"]:
            problems.append(f"{centre}: {len(images)} cases in {folder}, the collection has {spec['cases']}")
        for number in spec["test"]:
            if number not in images:
                problems.append(f"{centre}/Case{number}: held-out test case not found in {folder}")
        for number in numbers:
            split = "test" if number in spec["test"] else "train"
            cases.append(RawCase(f"{centre}/Case{number}", site, split, images[number], labels[number]))
    return cases, problems, centres
