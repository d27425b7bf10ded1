"""Per-volume Dice tables, as the paper and FLamby report them."""

from __future__ import annotations

import csv
import os

import numpy as np

from flap_sam.data.profiles import DatasetProfile
from flap_sam.datasets.kits19.metric import flamby_kits_dice
from flap_sam.training.metrics import dice_per_class

# Dataset-specific metrics reported next to the per-class Dice: column name -> fn(prediction, label).
DATASET_METRICS = {"kits": {"flamby_dice": flamby_kits_dice}}


def score_volume(prediction: np.ndarray, label: np.ndarray, profile: DatasetProfile) -> dict[str, float]:
    """Scores of one volume: ``dice_<class>`` per foreground class, their ``mean_dice``, and the dataset's own metrics.

    Args:
        prediction, label: (X, Y, Z) class-index arrays on the same grid.
    """
    per_class = dice_per_class(prediction, label, profile.num_classes)
    scores = {f"dice_{name}": float(v) for name, v in zip(profile.class_names, per_class)}
    scores["mean_dice"] = float(per_class.mean())
    for column, metric in DATASET_METRICS.get(profile.name, {}).items():
        scores[column] = metric(prediction, label)
    return scores


def summarize(rows: list[dict]) -> dict:
    """The ``mean`` row: every numeric column averaged over volumes (the paper: mean over volumes, then classes)."""
    columns = [k for k in rows[0] if k != "case"]
    return {"case": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in columns}}


def write_tables(rows: list[dict], out_dir: str, stem: str = "dice") -> tuple[str, str]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (per volume + mean row) into ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    table = rows + [summarize(rows)]
    csv_path, md_path = os.path.join(out_dir, f"{stem}.csv"), os.path.join(out_dir, f"{stem}.md")
    with open(csv_path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in table)
    os.replace(csv_path + ".tmp", csv_path)
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(markdown_table(table) + "\n")
    os.replace(md_path + ".tmp", md_path)
    return csv_path, md_path


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)
