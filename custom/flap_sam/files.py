"""The files the package writes: atomically, as Markdown tables, under the names a run's readers expect.

Atomic writes: each write goes to a temporary file beside the target, named uniquely per process and
call (two writers of the same file never share it), and replaces the target in one ``os.replace``,
so a reader (or a crash) never sees half a file. Every module of the package writes through these.

What a FLAP-SAM run leaves in its job folder (the simulator's ``<workspace>/server/simulate_job``, a
deployment's ``<server workspace>/<job id>``), named once here for every writer and reader:

* ``app_server/FL_global_model.pt``: the adapter after the last round (FLARE's persistor name),
  ``best_FL_global_model.pt`` the one with the best validation Dice; ``flap-sam train`` writes
  its baselines under the same names;
* ``app_server/traffic_summary.json``: bytes per site, task and round (``TrafficMeter``);
* ``cross_site_val/cross_val_results.json``: each site's Dice of each global model, the final one
  named ``SRV_FL_global_model.pt``;
* ``tb_events/<site>/``: the sites' metrics as TensorBoard events.

A site's own app folder (a preset with a personal part) holds ``personal_adapter.pt``: the tensors
that trained there and never left it; it exists on that site only.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence

SERVER_APP = "app_server"
SIMULATOR_JOB = os.path.join("server", "simulate_job")  # a simulator workspace's job folder
GLOBAL_MODEL_FILE = "FL_global_model.pt"
BEST_MODEL_FILE = "best_FL_global_model.pt"
FINAL_MODEL = "SRV_FL_global_model.pt"  # the server's final model, as cross-site evaluation names it
TRAFFIC_FILE = "traffic_summary.json"
CROSS_SITE_FILE = os.path.join("cross_site_val", "cross_val_results.json")
TB_FOLDER = "tb_events"
RUN_COST_FILE = "run_cost.json"  # in a sweep run's job folder: wall and CPU seconds, peak process memory
HELD_OUT_FOLDER = "held_out"  # in a sweep run's job folder: the final model scored on a site that never trained (dice.csv)
RANK_BANDS_FILE = "rank_bands.json"  # in the server's app folder: the global update's energy per rank band, each round (site_ranks)
PERSONAL_ADAPTER_FILE = "personal_adapter.pt"  # in a site's app folder: its personal part (never sent)


def simulator_job(workspace: str) -> str:
    """The job folder of a finished ``nvflare simulator JOB -w workspace`` run."""
    return os.path.join(workspace, SIMULATOR_JOB)


def write_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(temporary_path)``, then move the temporary file onto ``path``; on failure nothing is left behind.

    Args:
        suffix: ending of the temporary name, for writers that choose a format by it (``.nii.gz``).
    """
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str, newline: str | None = None) -> None:
    """``text`` into ``path`` (UTF-8), atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)

    write_atomically(path, write)


def _plain(value):
    """JSON for the values results hold besides plain ones: numpy numbers and arrays; anything else as text."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str, content, sort_keys: bool = False) -> None:
    """``content`` as indented JSON into ``path``, atomically (numpy numbers become plain numbers)."""
    write_text(path, json.dumps(content, indent=2, sort_keys=sort_keys, default=_plain))


def save_torch(obj, path: str) -> None:
    """``torch.save(obj)`` into ``path``, atomically."""
    import torch

    write_atomically(path, lambda tmp: torch.save(obj, tmp))


# ---- Markdown tables, as every report, summary and benchmark prints them ----


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], float_format: str | None = None) -> str:
    """A Markdown table of ``rows`` under ``header`` (no trailing newline).

    Args:
        float_format: format of float cells (e.g. ``".4f"``); None: ``str`` like every other cell.
    """

    def cell(value) -> str:
        return format(value, float_format) if float_format and isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def records_table(records: Sequence[dict], float_format: str = ".4f") -> str:
    """A Markdown table of dicts with the same keys: the keys are the header."""
    columns = list(records[0])
    return markdown_table(columns, ([r[c] for c in columns] for r in records), float_format)
