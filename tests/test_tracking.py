"""Experiment tracking of the user's choice, through FLARE's receivers: MLflow to a local file store, offline."""

from __future__ import annotations

import os

import pytest

from flap_sam.federated.tracking import TrackingReceiver

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator


def test_an_unknown_tracker_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^tracking: 'comet' is not one of \['tensorboard', 'mlflow', 'wandb'\]$"):
        TrackingReceiver("comet")


@pytest.mark.slow
def test_mlflow_tracking_gets_each_sites_metrics_from_a_simulator_run(tmp_path):
    from mlflow.tracking import MlflowClient

    job = copy_job(
        "kits_lora",
        tmp_path,
        {
            **TEST_MODEL,
            **TEST_TRAINING,
            "num_rounds": 2,
            "max_steps_per_round": 3,
            "tracking": "mlflow",
            "tracking_experiment": "fed-kits-demo",
        },
    )
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    store = tmp_path / "ws" / "server" / "simulate_job" / "mlruns"
    assert store.is_dir(), "no MLflow file store in the server's job folder"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("fed-kits-demo")
    runs = client.search_runs([experiment.experiment_id])
    by_site = {run.data.tags.get("site", run.info.run_name): run for run in runs}
    assert len(runs) == 2, by_site.keys()
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_dice")
        assert sorted(m.step for m in history) == [0, 1], run.info.run_name
        assert client.get_metric_history(run.info.run_id, "train_loss")
