"""Helpers for tests that run the real FLARE simulator on a copy of a job with changed settings."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flap_sam.jobs.simulator import run_simulator  # noqa: F401 (the tests import it from here)
from flap_sam.jobs.writer import write_job

REPO = Path(__file__).resolve().parents[1]

# The test-size model and the settings under which it learns the demo task within a few rounds.
# vit_test has no pretrained weights: a job that gives it generated data other than the demo's says so.
TEST_MODEL = {"model_type": "vit_test", "image_size": 64, "rank": 4, "random_weights": True}
TEST_TRAINING = {"batch_size": 4, "local_epochs": 3.0, "max_steps_per_round": 60, "lr": 0.01, "poly_power": 1.0, "augment": False}


def copy_job(name: str, dest: Path, settings: dict | None = None) -> Path:
    """``flap-sam job jobs/<name> --out dest/<name> --set ...``: a copy with settings changed, as a user makes it."""
    return Path(write_job(str(REPO / "jobs" / name), str(dest / name), settings or {}))


def scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard scalar tag in a folder of event files."""
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}


def save_tiny_checkpoint(path: Path, image_size: int = 256, num_classes: int = 3, seed: int = 0) -> Path:
    """A ``vit_test`` checkpoint laid out like the official release (``Sam.state_dict()``, 3 multimask
    outputs), made with the project's own builder: the real SAM checkpoints cannot be downloaded here."""
    import torch

    from flap_sam.model.sam_builder import build_sam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam("vit_test", image_size, num_classes)
    torch.save(sam.state_dict(), path)
    return path


def server_job_log(folder) -> str:
    """The server's logs under ``folder``: its kit's, and a downloaded job result's (the job's own server log)."""
    return "".join(p.read_text(errors="replace") for p in Path(folder).rglob("log.txt") if "site-" not in str(p))
