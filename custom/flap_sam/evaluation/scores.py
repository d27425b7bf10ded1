"""Per-volume Dice and HD95 tables, as the paper, FLamby and clinical readers report them."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import torch

from flap_sam.data.profiles import DatasetProfile
from flap_sam.datasets.kits19.metric import flamby_kits_dice
from flap_sam.files import records_table, write_text
from flap_sam.training.inference import dice_per_class

# Dataset-specific metrics reported next to the per-class Dice: column name -> fn(prediction, label).
DATASET_METRICS = {"kits": {"flamby_dice": flamby_kits_dice}}


def hd95_per_class(prediction: np.ndarray, label: np.ndarray, num_classes: int, spacing: tuple[float, ...]) -> np.ndarray:
    """95th percentile Hausdorff distance per foreground class in millimetres (MONAI's metric), shape (num_classes,).

    Distances are between the class's surfaces in prediction and label, on the volume's own
    voxel spacing. A class absent from both scores 0 mm; a class present in only one of them has
    no defined distance and scores NaN (left out of the means).

    Args:
        prediction, label: (X, Y, Z) class-index arrays on the same grid.
        spacing: voxel size in mm along X, Y, Z.
    """
    from monai.metrics import compute_hausdorff_distance

    scores = np.zeros(num_classes)
    for c in range(1, num_classes + 1):
        pred, true = prediction == c, label == c
        if not pred.any() and not true.any():
            continue
        if not pred.any() or not true.any():
            scores[c - 1] = np.nan
            continue
        as_batch = lambda mask: torch.from_numpy(np.ascontiguousarray(mask))[None, None]
        scores[c - 1] = float(
            compute_hausdorff_distance(as_batch(pred), as_batch(true), include_background=True, percentile=95, spacing=list(spacing))
        )
    return scores


def score_volume(
    prediction: np.ndarray, label: np.ndarray, profile: DatasetProfile, spacing: tuple[float, ...] | None = None
) -> dict[str, float]:
    """Scores of one volume: ``dice_<class>`` per foreground class, their ``mean_dice``, with ``spacing``
    also ``hd95_<class>`` (mm), and the dataset's own metrics.

    Args:
        prediction, label: (X, Y, Z) class-index arrays on the same grid.
        spacing: voxel size in mm (the volume's own); None leaves out HD95.
    """
    per_class = dice_per_class(prediction, label, profile.num_classes)
    scores = {f"dice_{name}": float(v) for name, v in zip(profile.class_names, per_class)}
    scores["mean_dice"] = float(per_class.mean())
    if spacing is not None:
        hd95 = hd95_per_class(prediction, label, profile.num_classes, spacing)
        scores.update({f"hd95_{name}": float(v) for name, v in zip(profile.class_names, hd95)})
    for column, metric in DATASET_METRICS.get(profile.name, {}).items():
        scores[column] = metric(prediction, label)
    return scores


def summarize(rows: list[dict]) -> dict:
    """The ``mean`` row: every numeric column averaged over volumes (the paper: mean over volumes, then classes).

    NaN entries (an HD95 with the class in only one of prediction and label) are left out of the mean.
    """
    columns = [k for k in rows[0] if k != "case"]
    mean = lambda values: float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
    return {"case": "mean", **{k: mean(np.array([r[k] for r in rows], dtype=float)) for k in columns}}


def write_tables(rows: list[dict], out_dir: str, stem: str = "dice") -> tuple[str, str]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (per volume + mean row) into ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    table = rows + [summarize(rows)]
    csv_path, md_path = os.path.join(out_dir, f"{stem}.csv"), os.path.join(out_dir, f"{stem}.md")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in table)
    write_text(csv_path, text.getvalue(), newline="")
    write_text(md_path, records_table(table) + "\n")
    return csv_path, md_path
