"""MONAI Decathlon-style datalists: ``{"training": [{"image", "label"}], "validation": [...]}``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flap_sam.errors import DataError
from flap_sam.files import write_json


@dataclass(frozen=True)
class Case:
    """One volume of a site: absolute paths; ``label`` may be None for inference-only lists.

    ``image`` is a file or a folder (a DICOM series), or a tuple of files (a DICOM series given file by file).
    """

    image: str | tuple[str, ...]
    label: str | None


def find_datalist(data_root: str, site_name: str, datalist: str | None = None) -> str:
    """The datalist a site uses.

    ``datalist`` if given (relative paths are relative to ``data_root``); otherwise
    ``<data_root>/<site_name>.json`` (several sites prepared on one machine), then
    ``<data_root>/datalist.json`` (one hospital, one data root).
    """
    if datalist:
        path = datalist if os.path.isabs(datalist) else os.path.join(data_root, datalist)
        if not os.path.isfile(path):
            raise DataError(f"datalist {path}: file not found")
        return path
    for candidate in (os.path.join(data_root, f"{site_name}.json"), os.path.join(data_root, "datalist.json")):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"data_root {data_root}: no datalist found (looked for {site_name}.json and datalist.json)")


def load_datalist(
    path: str, data_root: str | None = None, require_labels: bool = True, require_training: bool = True
) -> dict[str, list[Case]]:
    """Read and check a datalist; returns ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths.

    Paths inside the file are relative to ``data_root`` (default: the datalist's folder).
    Raises ``DataError`` for a missing/invalid file, malformed entries or, with ``require_training``
    (a site that trains), an empty ``training`` list; a site that only scores (a held-out site) may have none.
    """
    root = data_root if data_root is not None else os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise DataError(f"datalist {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"datalist {path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise DataError(f"datalist {path}: expected an object with 'training' and 'validation' lists")
    result: dict[str, list[Case]] = {}
    listed: dict[str | tuple[str, ...], str] = {}  # image -> where it is listed first
    for section in ("training", "validation", "test"):
        entries = content.get(section, [])
        if not isinstance(entries, list):
            raise DataError(f"datalist {path}: '{section}' must be a list")
        cases = []
        for i, entry in enumerate(entries):
            where = f"datalist {path}: {section}[{i}]"
            image = entry.get("image") if isinstance(entry, dict) else None
            if isinstance(image, list) and image and all(isinstance(f, str) and f for f in image):
                image = tuple(_inside(root, f, f"{where}: image") for f in image)  # a DICOM series, file by file
            elif isinstance(image, str) and image:
                image = _inside(root, image, f"{where}: image")
            else:
                raise DataError(f"{where} needs an 'image' path (or a list of a DICOM series' files)")
            if image in listed:  # a case trained on and scored, or trained on twice, corrupts the result silently
                raise DataError(f"{where}: image {entry['image']} is also {listed[image]}; list each case once")
            listed[image] = f"{section}[{i}]"
            label = entry.get("label")
            if label is None and require_labels:
                raise DataError(f"{where} needs a 'label' path")
            if label is not None and not (isinstance(label, str) and label):
                raise DataError(f"{where}: 'label' must be a path, got {label!r}")
            cases.append(Case(image, _inside(root, label, f"{where}: label") if label else None))
        result[section] = cases
    if require_training and not result["training"]:
        raise DataError(f"datalist {path}: the 'training' list is empty or absent")
    return result


def _inside(root: str, path: str, what: str) -> str:
    """``path`` made absolute; a relative one must stay inside ``root`` (an absolute one may name a file anywhere)."""
    if os.path.isabs(path):
        return os.path.normpath(path)
    absolute = os.path.normpath(os.path.join(os.path.abspath(root), path))
    if os.path.relpath(absolute, os.path.abspath(root)).split(os.sep)[0] == os.pardir:
        raise DataError(f"{what} {path} is outside the data root {root} (an absolute path may name a file elsewhere)")
    return absolute


def write_datalist(path: str, training: list[dict], validation: list[dict], test: list[dict] | None = None) -> None:
    """Write a datalist atomically (a reader never sees half a file)."""
    content = {"training": training, "validation": validation}
    if test is not None:
        content["test"] = test
    write_json(path, content)


def write_labelled_site(out_dir: str, cases: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]], n_train: int, n_val: int) -> str:
    """Write a site's cases as NIfTI files and their ``datalist.json``; returns the datalist's path.

    Args:
        cases: ``(file name, image (X, Y, Z), label (X, Y, Z), affine 4x4)`` in order: the first ``n_train`` train,
            the next ``n_val`` validate, the rest test. Written to ``imagesTr/`` and ``labelsTr/`` under ``out_dir``.
    """
    import nibabel as nib

    for folder in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    entries = []
    for name, image, label, affine in cases:
        nib.save(nib.Nifti1Image(image, affine), os.path.join(out_dir, "imagesTr", name))
        nib.save(nib.Nifti1Image(label, affine), os.path.join(out_dir, "labelsTr", name))
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    path = os.path.join(out_dir, "datalist.json")
    write_datalist(path, entries[:n_train], entries[n_train : n_train + n_val], entries[n_train + n_val :])
    return path
