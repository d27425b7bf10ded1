"""Real ``nvflare simulator`` runs of the jobs: test-size SAM, demo data of each job's modality.

jobs/kits_lora: 2 sites, 3 rounds (learning, persisted adapter, cross-site evaluation);
jobs/ixi_lora (3 sites) and jobs/prostate_lora: one round each; a bad data root.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from flap_sam.data.demo import demo_site_dir
from flap_sam.federated.progress import PROGRESS_AT_END
from flap_sam.federated.resume import read_adapter
from flap_sam.model.factory import ModelSpec, exchange_schema

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator, scalars

ROUNDS = 3


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kits_lora")
    # The memory and loader settings are on, as a GPU site would use them: same gradients, batches from a worker.
    # progress_every_s: a report within every round (the default, 30 s, is longer than this test's rounds)
    job = copy_job(
        "kits_lora",
        tmp,
        {**TEST_MODEL, **TEST_TRAINING, "num_rounds": ROUNDS, "checkpointing": "encoder", "data_workers": 1, "progress_every_s": 0.5},
    )
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
    assert read_adapter(str(job_dir / "app_server" / "FL_global_model.pt"))[1] == ROUNDS  # what resume_from reads


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
    assert log.count("attention fused, 1 data worker(s)") >= 2  # the settings reached both sites
    assert log.count("memory: checkpointing encoder, cpu_return_memory") >= 2


@pytest.mark.slow
def test_a_site_reports_its_progress_within_each_round_to_its_log_and_to_the_server(finished_run):
    job_dir, _ = finished_run
    workspace = job_dir.parents[1]
    pattern = r"- round (\d+): (\d+)/(\d+) steps, loss [\d.]+, [\d.]+ s a step, about \d+ s left"
    for site in ("site-1", "site-2"):
        lines = re.findall(pattern, (workspace / site / "log.txt").read_text())
        assert {int(r) for r, _, _ in lines} == set(range(ROUNDS)), site
        assert all(0 < int(done) < int(steps) for _, done, steps in lines)
    end = json.loads((workspace / "server" / "log.txt").read_text().split(PROGRESS_AT_END)[-1].splitlines()[0])
    assert end["progress_reports"]["site-1"] > 0 and end["progress_reports"]["site-2"] > 0
    assert end["training"] == {}  # each report was cleared when its site's result arrived


@pytest.mark.slow
def test_bad_data_root_stops_the_site_at_start_with_one_line(tmp_path):
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "data_root": str(tmp_path / "absent")})
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"site site-1 cannot start: data_root {tmp_path / 'absent'}: no datalist found" in log
    assert "local steps" not in log  # nothing trained


@pytest.mark.slow
def test_a_job_resumed_from_a_persisted_adapter_runs_only_the_rounds_left(finished_run, tmp_path):
    job_dir, _first_log = finished_run
    adapter = tmp_path / "interrupted.pt"  # the simulator wipes its workspace: keep the adapter outside
    adapter.write_bytes((job_dir / "app_server" / "FL_global_model.pt").read_bytes())
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "num_rounds": ROUNDS + 1, "resume_from": str(adapter)})
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(job_dir.parents[2] / "demo")})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"resuming at round {ROUNDS} of {ROUNDS + 1}" in log
    resumed_dir = tmp_path / "ws" / "server" / "simulate_job"
    start_dice = []
    for site in ("site-1", "site-2"):
        dice = scalars(resumed_dir / "tb_events" / site, "val_dice")
        assert list(dice) == [ROUNDS], f"{site} validated rounds {list(dice)}"  # only the round that was left
        start_dice.append(dice[ROUNDS] - scalars(job_dir / "tb_events" / site, "val_dice")[0])
    assert np.mean(start_dice) > 0.05, f"the resumed job did not start from the trained adapter: {start_dice}"
    # The lr goes on along the federation's curve (the last round's end: near 0), not from a new warm-up.
    assert scalars(resumed_dir / "tb_events" / "site-1", "lr")[ROUNDS] < 0.2 * TEST_TRAINING["lr"]
    assert read_adapter(str(resumed_dir / "app_server" / "FL_global_model.pt"))[1] == ROUNDS + 1


@pytest.mark.slow
def test_resuming_from_an_adapter_of_other_settings_stops_at_start(finished_run, tmp_path):
    job_dir, _ = finished_run
    job = copy_job(
        "kits_lora",
        tmp_path,
        {
            **TEST_MODEL,
            **TEST_TRAINING,
            "rank": 8,
            "num_rounds": ROUNDS + 1,
            "resume_from": str(job_dir / "app_server" / "FL_global_model.pt"),
        },
    )
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "holds another adapter than this job's" in log and "use the same model settings" in log
    assert "local steps" not in log  # nothing trained


@pytest.mark.slow
def test_an_unreadable_resume_file_stops_the_server_at_start(finished_run, tmp_path):
    job_dir, _ = finished_run
    cut = tmp_path / "cut.pt"  # a persisted adapter cut off halfway
    whole = (job_dir / "app_server" / "FL_global_model.pt").read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "num_rounds": ROUNDS + 1, "resume_from": str(cut)})
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{cut}: cannot be read as a persisted adapter" in log
    assert "local steps" not in log  # it did not start again from round 0


@pytest.mark.slow
def test_a_site_that_fails_on_a_named_volume_keeps_the_name_on_the_site(tmp_path):
    """The volume's name is in the site's own log.txt only: not in its error_log.txt (which FLARE
    streams to the server in provisioned deployments), not in the server's logs."""
    data = tmp_path / "data"
    data.mkdir()
    missing = "imagesTr/patient_doe_0042.nii.gz"
    (data / "datalist.json").write_text(
        json.dumps(
            {
                "training": [{"image": missing, "label": "labelsTr/patient_doe_0042.nii.gz"}],
                "validation": [{"image": missing, "label": "labelsTr/patient_doe_0042.nii.gz"}],
            }
        )
    )
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "data_root": str(data)})
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    assert result.returncode != 0
    ws = tmp_path / "ws"
    assert "patient_doe_0042" in (ws / "site-1" / "log.txt").read_text()
    for private in [ws / "site-1" / "error_log.txt", ws / "server" / "log.txt", ws / "server" / "error_log.txt"]:
        assert "patient_doe_0042" not in private.read_text(), private
    # Both sites fail the same way; whichever reports first ends the job.
    assert re.search(
        r"site site-[12] failed task train: it could not start: its data failed the start-up checks",
        (ws / "server" / "log.txt").read_text(),
    )


@pytest.mark.slow
def test_a_site_whose_training_diverges_sends_no_update(tmp_path):
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "num_rounds": 1, "max_steps_per_round": 3, "lr": 1e30})
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}, timeout=300)
    log = result.stdout + result.stderr
    assert "local training diverged" in log and "no update is sent" in log
    assert re.search(r"site site-[12] failed task train: its local training diverged \(non-finite weights\)", log)
    assert "leaving out the update" not in log  # nothing non-finite reached the server to be left out
    assert "exact LoRA aggregation" not in log


@pytest.mark.slow
def test_a_shipped_demo_job_refuses_to_train_real_data_on_the_demo_budget(tmp_path):
    """A user who edits data_root in a shipped job by hand (not with flap-sam job) gets a one-line error."""
    import shutil

    from jobtools import REPO

    job = tmp_path / "kits_lora"
    shutil.copytree(REPO / "jobs" / "kits_lora", job)
    with open(job / "app" / "config" / "config_fed_client.conf", "a") as f:
        f.write(f'model_type = vit_test\nimage_size = 64\nrank = 4\ndata_root = "{tmp_path}"\n')
    with open(job / "app" / "config" / "config_fed_server.conf", "a") as f:
        f.write("model_type = vit_test\nimage_size = 64\nrank = 4\n")
    result = run_simulator(job, tmp_path / "ws", 2, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "this job runs the demo's short budget (demo_budget = true)" in log
    assert "local steps" not in log


BOTH_MODELS = ["SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]


def _cross_site_results(job_dir, sites, class_names, models=BOTH_MODELS):
    results = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(results) == sorted(sites)
    for site in sites:
        assert sorted(results[site]) == models, site
        for scores in results[site].values():
            assert set(scores) == {"dice", "volumes", *(f"dice_{c}" for c in class_names)}
            assert 0.0 <= scores["dice"] <= 1.0 and scores["volumes"] == 1  # the demo's one test volume
    return results


@pytest.mark.slow
def test_cross_site_evaluation_scores_the_global_adapters_on_every_site(finished_run):
    job_dir, _ = finished_run
    results = _cross_site_results(job_dir, ["site-1", "site-2"], ["kidney", "tumour"])
    assert np.mean([results[s]["SRV_best_FL_global_model.pt"]["dice"] for s in results]) > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("job, sites, class_names", [("ixi_lora", 3, ["brain"]), ("prostate_lora", 2, ["prostate"])])
def test_mri_job_runs_a_round_on_its_demo_data(tmp_path, job, sites, class_names):
    settings = {**TEST_MODEL, **TEST_TRAINING, "max_steps_per_round": 10, "num_rounds": 1, "min_clients": sites}
    result = run_simulator(copy_job(job, tmp_path, settings), tmp_path / "ws", sites, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_dir = tmp_path / "ws" / "server" / "simulate_job"
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert set(state) == set(exchange_schema(ModelSpec("vit_test", 64, 1, "flap", 4)))  # one foreground class
    dataset = job.split("_")[0]
    assert os.path.isfile(os.path.join(demo_site_dir(dataset, "site-1", str(tmp_path / "demo")), "datalist.json"))  # the job's own data
    site_names = [f"site-{i}" for i in range(1, sites + 1)]
    for site in site_names:
        assert list(scalars(job_dir / "tb_events" / site, f"val_dice_{class_names[0]}")) == [0]
    # One round: no later validation has picked a best model yet, so only the final one is scored.
    _cross_site_results(job_dir, site_names, class_names, models=["SRV_FL_global_model.pt"])


def _traffic_run(tmp_path, name, **settings):
    base = {**TEST_MODEL, **TEST_TRAINING, "rank": 64, "max_steps_per_round": 3, "num_rounds": 1}
    job = copy_job("kits_lora", tmp_path / name, {**base, **settings})
    result = run_simulator(job, tmp_path / name / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_dir = tmp_path / name / "ws" / "server" / "simulate_job"
    return json.loads((job_dir / "app_server" / "traffic_summary.json").read_text()), job_dir, result.stdout + result.stderr


@pytest.mark.slow
def test_fp16_transport_halves_the_measured_bytes(tmp_path):
    fp32, _, _ = _traffic_run(tmp_path, "fp32")
    fp16, job_dir, log = _traffic_run(tmp_path, "fp16", transport="fp16", aggregation="lora_exact", fedprox_mu=0.01)
    for summary in (fp32, fp16):
        assert sorted(summary["sites"]) == ["site-1", "site-2"]
        assert set(summary["sites"]["site-1"]["train"]["0"]) == {"sent", "received", "raw_float32_sent", "raw_float32_received"}
    raw = fp32["sites"]["site-1"]["train"]["0"]["raw_float32_received"]  # the adapter as float32 (351,520 bytes)
    assert fp32["sites"]["site-1"]["train"]["0"]["sent"] > raw  # wire bytes include FLARE's headers
    for direction in ("sent", "received"):
        ratio = fp16["totals"][direction] / fp32["totals"][direction]
        assert 0.5 < ratio < 0.56, f"{direction}: fp16/fp32 = {ratio:.3f}"  # half, plus fixed message headers
    assert "round 0: exact LoRA aggregation; sites site-1, site-2" in log
    assert "round 0: train sent" in log and "round 0: train received" in log  # each site's round log
    assert list(scalars(job_dir / "tb_events" / "site-1", "bytes_sent")) == [0]
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values())  # restored to the training dtype


@pytest.mark.slow
def test_the_scale_command_runs_a_federation_per_site_count_and_tabulates_the_server(tmp_path):
    """``flap-sam scale`` on 2 and 4 sites: one real simulator federation each; the table's shape and the numbers'
    kinds (not one machine's times): every round finished, bytes grow with the sites, the long run's memory per round."""
    from flap_sam.cli.main import main

    out = tmp_path / "scale"
    assert main(["scale", "--sites", "2", "4", "--rounds", "3", "--out", str(out)]) == 0
    record = json.loads((out / "scale.json").read_text())
    runs = record["runs"]
    assert [r["sites"] for r in runs] == [2, 4] and all(r["rounds"] == 3 and len(r["server_mib_at_round_end"]) == 3 for r in runs)
    assert all(r["peak_server_mib"] > 50 and 0 < r["aggregation_s"] < r["round_s"] for r in runs)
    assert runs[1]["received_mb_per_round"] == pytest.approx(2 * runs[0]["received_mb_per_round"], rel=0.05)  # each site sends one update
    table = (out / "scale.md").read_text()
    assert "| sites | server peak MiB | round s (median) | aggregation s (median) | MB received a round |" in table
    assert "| growth exponent (1 = linear) |" in table


def test_the_long_runs_memory_table_and_its_growth_per_round():
    """``--memory-rounds``' table: every tenth round's server memory and the slope over the second half, in KiB a round."""
    from flap_sam.benchmark.federation_scale import ScaleRun, _growth, memory_table

    mib = [900.0 + min(r, 10) * 5 + (r >= 10) * 0.5 * (r - 10) / 1024 for r in range(40)]  # fills, then +0.5 KiB a round
    run = ScaleRun(8, 40, 100.0, max(mib), 2.0, 0.01, 0.6, tuple(mib), _growth(mib))
    assert run.memory_growth_kib_per_round == pytest.approx(0.5, abs=0.01)
    table = memory_table(run)
    assert "| after round | server MiB |" in table and "| 1 | 900 |" in table and "| 40 |" in table
    assert "| growth over the second half (KiB a round), 8 sites | 0.5 |" in table
    assert _growth([900.0, 901.0]) is None  # too few rounds to fit a slope
