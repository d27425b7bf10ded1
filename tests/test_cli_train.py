"""`flap-sam train`: which sites a baseline trains on, and never on a random base by accident."""

from __future__ import annotations

import json

import pytest

from flap_sam.cli.main import main
from flap_sam.cli.train import datalist_sites

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job


def test_each_datalist_is_its_own_site():
    assert datalist_sites(["/d/site-3.json", "/e/kits/site-1/datalist.json", "mine=/f/datalist.json"]) == {
        "site-3": "/d/site-3.json",
        "site-1": "/e/kits/site-1/datalist.json",
        "mine": "/f/datalist.json",
    }
    assert datalist_sites(["/data/run=2/site-4.json"]) == {"site-4": "/data/run=2/site-4.json"}  # '=' in a folder


def test_two_datalists_that_would_be_one_site_are_refused_in_one_line():
    with pytest.raises(
        ValueError, match=r"^--datalist: /a/site-1.json and /b/site-1.json would both be site 'site-1'; name them: NAME=FILE$"
    ):
        datalist_sites(["/a/site-1.json", "/b/site-1.json"])
    with pytest.raises(ValueError, match="would both be site 'x'"):
        datalist_sites(["x=/a/datalist.json", "x=/b/datalist.json"])


def test_a_pooled_baseline_over_two_same_named_datalists_trains_on_both(tmp_path, capsys):
    assert main(["demo-data", "--dataset", "kits", "--sites", "2", "--out", str(tmp_path / "d")]) == 0
    files = [str(tmp_path / "d" / "kits-v3" / site / "datalist.json") for site in ("site-1", "site-2")]
    settings = {**TEST_MODEL, **TEST_TRAINING, "max_steps_per_round": 1, "final_inference": "centre", "random_weights": False}

    # Real data and a ViT without checkpoint: refused before anything is trained.
    job = copy_job("kits_lora", tmp_path / "a", settings)
    assert main(["train", "--job", str(job), "--datalist", *files, "--epochs", "1", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "RANDOM weights" in err and "model_type=lite_medsam" in err and "random_weights=true" in err and "\n" not in err
    assert not (tmp_path / "none").exists()

    job = copy_job("kits_lora", tmp_path / "b", {**settings, "random_weights": True})  # as a test means it
    assert main(["train", "--job", str(job), "--datalist", *files, "--epochs", "1", "--out", str(tmp_path / "pooled")]) == 0
    baseline = json.loads((tmp_path / "pooled" / "baseline.json").read_text())
    assert (baseline["kind"], baseline["sites"]) == ("pooled", ["site-1", "site-2"])


def test_a_relative_datalist_is_the_path_the_user_typed(tmp_path, capsys, monkeypatch):
    """``--datalist bad/x.json`` is looked for at ./bad/x.json (it was <its folder>/bad/x.json)."""
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING})
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--job", str(job), "--datalist", "bad/x.json", "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"flap-sam train: datalist {tmp_path / 'bad' / 'x.json'}: file not found"
