"""``flap-sam job``: a shipped job copied with settings changed, resolved the way FLARE reads it."""

from __future__ import annotations

import json

from flap_sam.cli.main import main
from flap_sam.jobs.writer import job_settings, read_job

from jobtools import REPO


def test_job_copy_resolves_the_new_settings_on_both_sides(tmp_path, capsys):
    out = tmp_path / "kits_lora_dec"
    assert (
        main(
            [
                "job",
                "kits_lora",
                "--out",
                str(out),
                "--set",
                "preset=lora_dec",
                "num_rounds=25",
                "min_clients=6",
                "data_root=/data/fed_kits",
            ]
        )
        == 0
    )
    settings = job_settings(str(out))
    assert (settings["preset"], settings["num_rounds"], settings["data_root"], settings["dataset"]) == (
        "lora_dec",
        25,
        "/data/fed_kits",
        "kits",
    )
    assert json.loads((out / "meta.json").read_text())["min_clients"] == 6


def test_a_setting_only_one_side_of_the_shipped_job_sets_is_kept_in_the_copy(tmp_path, capsys):
    """ixi_lora's server asks for its 3 sites; the client side's package default (2) must not undo that."""
    assert job_settings(str(REPO / "jobs" / "ixi_lora"))["min_clients"] == 3
    out = tmp_path / "ixi"
    assert main(["job", "ixi_lora", "--out", str(out), "--set", "num_rounds=3"]) == 0
    assert job_settings(str(out))["min_clients"] == 3 and json.loads((out / "meta.json").read_text())["min_clients"] == 3


def test_job_copy_refuses_an_unknown_setting(tmp_path, capsys):
    assert main(["job", "ixi_lora", "--out", str(tmp_path / "x"), "--set", "presett=flap"]) == 2
    assert "no setting presett" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


RECIPE = {
    "num_rounds": 25,
    "batch_size": 24,
    "max_steps_per_round": 0,
    "local_epochs": 1.0,
    "weight_decay": 0.1,
    "aggregation": "lora_exact",
    "demo_budget": False,
    "lr": "auto",
    "warmup_steps": "auto",
    "poly_power": "auto",
}
PAPER_SCHEDULE = (0.0008, 250, 7.0)  # what auto is for the paper's model (lr, warm-up steps, poly power)


def _schedule(job) -> tuple:
    training = read_job(str(job)).training
    return training.lr, training.warmup_steps, training.poly_power


def test_a_job_on_real_data_runs_the_papers_recipe_without_retyping_it(tmp_path, capsys):
    out = tmp_path / "fed_kits"
    assert (
        main(
            [
                "job",
                "kits_lora",
                "--out",
                str(out),
                "--set",
                "data_root=/data/fed_kits",
                "min_clients=6",
                "checkpoint=/models/sam_vit_b_01ec64.pth",
                "server_checkpoint=/models/sam_vit_b_01ec64.pth",
            ]
        )
        == 0
    )
    settings = job_settings(str(out))
    assert {k: settings[k] for k in RECIPE} == RECIPE
    assert _schedule(out) == PAPER_SCHEDULE
    assert "demo.conf" not in (out / "app" / "config" / "config_fed_client.conf").read_text()


def test_the_shipped_demo_keeps_its_short_budget_and_explicit_settings_win(tmp_path, capsys):
    shipped = job_settings(str(REPO / "jobs" / "kits_lora"))
    assert (shipped["num_rounds"], shipped["batch_size"], shipped["max_steps_per_round"], shipped["warmup_steps"]) == (8, 2, 10, 2)
    assert (shipped["model_type"], shipped["image_size"], shipped["checkpoint"]) == ("lite_medsam", 64, "")  # a pretrained base
    assert shipped["demo_budget"] is True and shipped["aggregation"] == "lora_exact"
    out = tmp_path / "real_short"
    assert main(["job", "ixi_lora", "--out", str(out), "--set", "data_root=/data/ixi", "num_rounds=3"]) == 0
    settings = job_settings(str(out))
    assert (settings["num_rounds"], settings["batch_size"], settings["demo_budget"]) == (3, 24, False)
    assert (settings["model_type"], settings["image_size"]) == ("vit_b", 224)  # the paper's model, not the demo's
    # ... which has no weights unless the job or each site names the official file: said when the job is written.
    err = capsys.readouterr().err
    assert "note: this job names no checkpoint for vit_b" in err and "model_type=lite_medsam" in err


def test_a_job_for_sites_that_set_their_data_root_locally_drops_the_demo_budget(tmp_path, capsys):
    out = tmp_path / "site_local"
    assert main(["job", "kits_lora", "--out", str(out), "--set", "demo_budget=false", "min_clients=6"]) == 0
    settings = job_settings(str(out))
    assert {k: settings[k] for k in RECIPE} == RECIPE and settings["data_root"] == "demo"
    assert _schedule(out) == PAPER_SCHEDULE
