"""A hospital's own task in the Decathlon layout: what its ``dataset.json`` describes, as job settings
(``classes``, ``modality``, ``label_map``), and its labelled cases for ``flap-sam prepare decathlon``.

A ``dataset.json`` holds ``labels`` ({"0": "background", "1": "edema", ...}), ``modality``
({"0": "CT"} or one entry per MRI sequence of a 4D image) and ``training`` (image/label pairs). Cases are the
``training`` entries (the ``test`` entries have no labels); all belong to one site, the hospital's own. The
shared converter checks every case and carves the deterministic validation split.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from flap_sam.datasets.conversion import RawCase

CT_NAMES = {"ct"}


@dataclass(frozen=True)
class DecathlonTask:
    """What a ``dataset.json`` says about the task.

    Attributes:
        path: the ``dataset.json`` file.
        classes: foreground class names (label order), made valid setting names ("non-enhancing tumor" -> "non_enhancing_tumor").
        label_values: the file's label value of each class (1, 2, ... for the usual layout).
        modality: ``ct`` or ``mri``.
        sequences: the sequence (channel) names of the images, in channel order.
    """

    path: str
    classes: tuple[str, ...]
    label_values: tuple[int, ...]
    modality: str
    sequences: tuple[str, ...]

    @property
    def label_map(self) -> tuple[tuple[int, int], ...]:
        """Source value -> class index for values that are not already the class index."""
        return tuple((v, i) for i, v in enumerate(self.label_values, start=1) if v != i)

    def settings(self, channel=None) -> dict:
        """The job settings of this task; a multi-sequence task needs ``channel``.

        Raises:
            ValueError: one line naming the file when the images hold several sequences and no channel is given.
        """
        if len(self.sequences) > 1 and (channel is None or channel == ""):
            listed = ", ".join(f"{i} {name}" for i, name in enumerate(self.sequences))
            raise ValueError(f"{self.path}: the images hold {len(self.sequences)} sequences ({listed}); choose one with channel=N")
        settings: dict[str, str | int] = {"classes": ",".join(self.classes), "modality": self.modality}
        if self.label_map:
            settings["label_map"] = ",".join(f"{s}:{t}" for s, t in self.label_map)
        if channel is not None and channel != "":
            settings["channel"] = int(channel)
        return settings


def _setting_name(label: str) -> str:
    name = re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")
    return name if name and name[0].isalpha() else f"class_{name}"


def read_task(path: str) -> DecathlonTask:
    """Read a Decathlon ``dataset.json`` (the file, or the task folder that holds it).

    Raises:
        ValueError: one line naming the file when it is missing, not JSON, or lacks ``labels`` / ``modality``.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "dataset.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    labels, modality = meta.get("labels"), meta.get("modality")
    if not isinstance(labels, dict) or not isinstance(modality, dict) or not modality:
        raise ValueError(f"{path}: a Decathlon dataset.json needs 'labels' and 'modality' objects")
    try:
        foreground = sorted((int(k), str(v)) for k, v in labels.items() if int(k) != 0)
        sequences = tuple(str(v) for _, v in sorted((int(k), v) for k, v in modality.items()))
    except ValueError:
        raise ValueError(f"{path}: 'labels' and 'modality' keys must be integers") from None
    if not foreground:
        raise ValueError(f"{path}: 'labels' names no foreground class")
    classes = tuple(_setting_name(name) for _, name in foreground)
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: label names {[n for _, n in foreground]} do not give distinct class names")
    kind = "ct" if all(s.strip().lower() in CT_NAMES for s in sequences) else "mri"
    return DecathlonTask(path, classes, tuple(v for v, _ in foreground), kind, sequences)


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
