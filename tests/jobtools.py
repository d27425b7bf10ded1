"""Helpers for tests that run the real FLARE simulator on a copy of a job with changed settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nvflare.fuel.utils.config_factory import ConfigFactory
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]

# The test-size model and the settings under which it learns the demo task within a few rounds.
TEST_MODEL = {"model_type": "vit_test", "image_size": 64, "rank": 4}
TEST_TRAINING = {"batch_size": 4, "local_epochs": 3.0, "max_steps_per_round": 60, "lr": 0.01, "poly_power": 1.0, "augment": False}


def copy_job(name: str, dest: Path, settings: dict | None = None) -> Path:
    """Copy ``jobs/<name>`` to ``dest`` and change settings at the end of both config files, as a user would.

    Every setting must already exist (in the job or the shared defaults), so a typo fails here.
    """
    job = dest / name
    shutil.copytree(REPO / "jobs" / name, job)
    settings = settings or {}
    known = set(job_settings(job))
    unknown = set(settings) - known
    assert not unknown, f"{name} has no setting {unknown}"
    for side in ("server", "client"):
        with open(job / "app" / "config" / f"config_fed_{side}.conf", "a", encoding="utf-8") as f:
            f.write("\n# changed by the test\n")
            for key, value in settings.items():
                f.write(f"{key} = {json.dumps(value)}\n")
    return job


def job_settings(job: Path) -> dict:
    """The resolved top-level settings of a job (both sides; the client's values win on a clash)."""
    resolved = {}
    for side in ("server", "client"):
        config = ConfigFactory.load_config(str(job / "app" / "config" / f"config_fed_{side}.conf")).to_dict()
        resolved.update({k: v for k, v in config.items() if not isinstance(v, (list, dict))})
    return resolved


def run_simulator(job: Path, workspace: Path, n_clients: int, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``nvflare simulator JOB -w WS -n N -t N`` in a subprocess; returns the completed process."""
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-n", str(n_clients), "-t", str(n_clients)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard scalar tag in a folder of event files."""
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}
