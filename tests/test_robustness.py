"""``flap-sam robustness`` in the real simulator: a Byzantine site under FedSECA, the matrix files, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from flap_sam.cli.main import main
from flap_sam.model.factory import ModelSpec, exchange_schema

from jobtools import TEST_MODEL, TEST_TRAINING

SETTINGS = {**TEST_MODEL, **TEST_TRAINING, "num_rounds": 2, "max_steps_per_round": 10, "cpu_threads": 1}


@pytest.mark.slow
def test_a_sign_flipping_site_under_fedseca_in_the_simulator(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLAP_SAM_DEMO_ROOT", str(tmp_path / "demo"))
    out = tmp_path / "matrix"
    assert (
        main(
            [
                "robustness",
                "kits_lora",
                "--aggregations",
                "fedseca",
                "--attacks",
                "sign_flip",
                "--sites",
                "3",
                "--byzantine",
                "1",
                "--out",
                str(out),
                "--set",
                *(f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()),
            ]
        )
        == 0
    )
    runs = json.loads((out / "robustness.json").read_text())["runs"]
    assert [(r["aggregation"], r["attack"], r["byzantine"]) for r in runs] == [
        ("fedseca", "none", []),
        ("fedseca", "sign_flip", ["site-3"]),
    ]
    assert all(len(r["val_dice"]) == 2 and 0.0 <= r["test_dice"] <= 1.0 for r in runs)
    table = (out / "robustness.md").read_text()
    assert "| aggregation | none | sign_flip |" in table and (out / "robustness.png").stat().st_size > 0

    job_dir = out / "runs" / "fedseca-sign_flip" / "server" / "simulate_job"
    saved = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)
    expected = exchange_schema(ModelSpec("vit_test", 64, 2, "flap", 4))
    assert set(saved["model"]) == set(expected) and all(tuple(saved["model"][k].shape) == expected[k] for k in expected)
    assert saved["meta_props"]["flap_sam_attack"] == {"attack": "sign_flip", "sites": ["site-3"], "strength": 4.0}
    log = (out / "runs" / "fedseca-sign_flip" / "server" / "log.txt").read_text()
    assert log.count("ATTACK SIMULATION sign_flip (strength 4) by site-3 (sites in this round: site-1, site-2, site-3)") == 2
    assert log.count("FedSECA: vote weights") == 2


def test_an_attack_needs_its_sites_and_robustness_needs_honest_ones(tmp_path, capsys):
    assert main(["job", "kits_lora", "--out", str(tmp_path / "j"), "--set", "attack=ipm"]) == 2
    assert "attack = ipm needs attack_sites" in capsys.readouterr().err
    assert (
        main(
            [
                "robustness",
                "kits_lora",
                "--aggregations",
                "median",
                "--attacks",
                "ipm",
                "--sites",
                "2",
                "--byzantine",
                "2",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "needs at least one honest and one Byzantine site" in capsys.readouterr().err
