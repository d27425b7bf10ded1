"""``flap-sam prepare decathlon``: a hospital's Decathlon-layout task folder -> its site's datalist.

Cases are the ``training`` entries of ``dataset.json`` (the ``test`` entries have no labels);
all belong to one site, the hospital's own. The shared converter checks every case and carves
the deterministic validation split.
"""

from __future__ import annotations

import json
import os

from flap_sam.datasets.conversion import RawCase
from flap_sam.datasets.decathlon.task import read_task


def find_cases(raw: str, site: str) -> tuple[list[RawCase], list[str]]:
    """The task folder's labelled cases for ``site``; returns (cases, problems)."""
    task = read_task(raw)
    root = os.path.dirname(os.path.abspath(task.path))
    with open(task.path, encoding="utf-8") as f:
        training = json.load(f).get("training") or []
    cases, problems = [], []
    for entry in training:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{task.path}: a training entry without image and label: {entry!r}"[:200])
            continue
        image, label = (os.path.normpath(os.path.join(root, entry[k])) for k in ("image", "label"))
        case_id = os.path.basename(image).removesuffix(".gz").removesuffix(".nii")
        cases.append(RawCase(case_id, site, "train", image, label))
    return cases, problems
