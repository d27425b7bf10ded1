"""A real ``nvflare simulator`` run of jobs/kits_lora: test-size SAM, demo data, 2 sites, 3 rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.model.factory import ModelSpec, exchange_schema
from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator, scalars

ROUNDS = 3


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kits_lora")
    job = copy_job("kits_lora", tmp, {**TEST_MODEL, **TEST_TRAINING, "num_rounds": ROUNDS})
    result = run_simulator(job, tmp / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp / "demo")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / "ws" / "server" / "simulate_job", result.stdout + result.stderr


@pytest.mark.slow
def test_persisted_global_model_holds_exactly_the_preset_tensors(finished_run):
    job_dir, _ = finished_run
    expected = exchange_schema(ModelSpec("vit_test", 64, 2, "flap", 4))
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        state = torch.load(job_dir / "app_server" / name, weights_only=True)["model"]
        assert set(state) == set(expected), name
        assert all(tuple(state[k].shape) == expected[k] for k in expected)
        assert any(".lora_B." in k and state[k].abs().sum() > 0 for k in state), "LoRA B should have trained away from 0"


@pytest.mark.slow
def test_validation_dice_every_round_and_training_helps(finished_run):
    job_dir, log = finished_run
    before, after = [], []
    for site in ("site-1", "site-2"):
        dice = scalars(job_dir / "tb_events" / site, "val_dice")
        assert sorted(dice) == list(range(ROUNDS)), f"{site}: val_dice rounds {sorted(dice)}"
        assert len(scalars(job_dir / "tb_events" / site, "train_loss")) == ROUNDS
        before.append(dice[0])
        after.append(dice[ROUNDS - 1])
    assert np.mean(after) > np.mean(before) + 0.05, f"Dice before {before}, after {after}"
    assert "result blocked" not in log


@pytest.mark.slow
def test_bad_data_root_stops_the_site_at_start_with_one_line(tmp_path):
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "data_root": str(tmp_path / "absent")})
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"site site-1 cannot start: data_root {tmp_path / 'absent'}: no datalist found" in log
    assert "local steps" not in log  # nothing trained
