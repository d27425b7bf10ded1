"""The model and task settings of a job, resolved and validated once: the ``JobSpec`` every party builds.

The task is a setting of the job: ``dataset`` (``kits`` | ``ixi`` | ``prostate``) is the shortcut
for the three built-in tasks, and ``classes``, ``modality``, ``label_map`` and ``ct_window`` set in
a job override what its ``dataset`` implies, so any shipped job can start a hospital's own task.
The job's configs hand the same ``job_spec`` block (``settings.conf``) to the Learner, the result
filter and the server's adapter model, which each build a ``JobSpec`` from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from flap_sam.data.profiles import DatasetProfile, get_profile
from flap_sam.model.factory import ModelSpec
from flap_sam.training.schema import block_keys, checked_value, package_defaults

MODALITIES = ("ct", "mri")
CUSTOM_TASK = "custom"  # the task name of a job whose classes or modality differ from its dataset's
SETTINGS = block_keys("job_spec")  # the job_spec block
_CLASS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _items(value, setting: str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; ``""`` / None -> []."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    raise ValueError(f"{setting}: expected a comma-separated list, got {value!r}")


def parse_classes(value) -> tuple[str, ...] | None:
    """Foreground class names in label order (label 1 first); None when not set."""
    names = _items(value, "classes")
    if not names:
        return None
    bad = [n for n in names if not _CLASS_NAME.match(n)]
    if bad:
        raise ValueError(f"classes: {bad[0]!r} is not a valid class name (letters, digits and _, starting with a letter)")
    if len(set(names)) != len(names):
        raise ValueError(f"classes: a name appears twice in {names}")
    return tuple(names)


def parse_label_map(value) -> tuple[tuple[int, int], ...] | None:
    """``"2:1,3:1"``, ``{"2": 1}`` or ``[[2, 1]]`` -> ``((2, 1),)``; None when not set."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for item in _items(value, "label_map"):
            source, sep, target = item.partition(":")
            if not sep:
                raise ValueError(f"label_map: {item!r} is not SOURCE:CLASS (e.g. 2:1)")
            pairs.append((source, target))
    else:
        pairs = list(value)
    try:
        return tuple(sorted((int(s), int(t)) for s, t in pairs))
    except (TypeError, ValueError):
        raise ValueError(f"label_map: {value!r} must map label values to class indices, e.g. 2:1") from None


def parse_ct_window(value) -> tuple[float, float] | None:
    """``"-79,304"`` or ``[-79, 304]`` -> ``(-79.0, 304.0)`` in HU; None when not set."""
    items = _items(value, "ct_window")
    if not items:
        return None
    try:
        low, high = (float(v) for v in items)
    except ValueError:
        raise ValueError(f"ct_window: {value!r} must be two numbers LOW,HIGH in HU") from None
    if not low < high:
        raise ValueError(f"ct_window: {value!r}: LOW must be below HIGH")
    return low, high


def parse_channel(value) -> int | None:
    """The volume of 4D images to use: ``""`` / None -> None (4D images are refused), else an index >= 0."""
    if value is None or value == "":
        return None
    try:
        channel = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"channel: {value!r} is not an index (0, 1, ...)") from None
    if channel < 0:
        raise ValueError(f"channel: {channel} is negative")
    return channel


@dataclass(frozen=True)
class JobSpec:
    """The model (``ModelSpec``) and the task (``DatasetProfile``) of a job; identical at every party.

    Attributes:
        model: model settings; its ``num_classes`` is the task's class count.
        task: classes (label order), modality, label map and CT window of the task.
    """

    model: ModelSpec
    task: DatasetProfile

    @classmethod
    def from_settings(cls, settings: Mapping) -> JobSpec:
        """Build and validate the spec from a job's settings (the ``job_spec`` block, or any mapping with some of
        its keys: the others are the package defaults).

        Raises:
            ValueError: one line naming the setting that is unknown or invalid.
        """
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"job_spec: unknown setting(s) {unknown}; known: {list(SETTINGS)}")
        settings = {**{k: v for k, v in package_defaults().items() if k in SETTINGS}, **settings}
        base = get_profile(checked_value("dataset", settings["dataset"]))
        classes = parse_classes(settings.get("classes")) or base.class_names
        modality = str(settings.get("modality") or base.modality)
        if modality not in MODALITIES:
            raise ValueError(f"modality: {modality!r} is not one of {list(MODALITIES)}")
        label_map = parse_label_map(settings.get("label_map"))
        if label_map is None:
            label_map = base.label_map if classes == base.class_names else ()
        bad = [(s, t) for s, t in label_map if not 0 <= t <= len(classes)]
        if bad:
            raise ValueError(f"label_map: {bad[0][0]}:{bad[0][1]} maps to a class index outside 0..{len(classes)} ({len(classes)} classes)")
        ct_window = parse_ct_window(settings.get("ct_window"))
        if ct_window is None and modality == base.modality:
            ct_window = base.ct_window
        # A task of its own (other classes or modality) is not the built-in dataset: no demo data, no dataset metric.
        name = base.name if (classes, modality) == (base.class_names, base.modality) else CUSTOM_TASK
        task = DatasetProfile(name, modality, classes, ct_window, label_map, parse_channel(settings.get("channel")))
        model = ModelSpec(
            checked_value("model_type", settings["model_type"]),
            checked_value("image_size", settings["image_size"]),
            task.num_classes,
            checked_value("preset", settings["preset"]),
            checked_value("rank", settings["rank"]),
            checked_value("lora_scale", settings["lora_scale"]),
            checked_value("slice_channels", settings["slice_channels"]),
        )
        return cls(model, task)
