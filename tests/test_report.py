"""The researcher's evidence on the demo: a sweep of two presets, a local and a pooled baseline, and the report."""

from __future__ import annotations

import json
import math

import pytest

from flap_sam.cli.main import main

from jobtools import TEST_MODEL, TEST_TRAINING

ROUNDS = 2
SETTINGS = {**TEST_MODEL, **TEST_TRAINING, "num_rounds": ROUNDS, "local_epochs": 1.0}


def _set(settings: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


@pytest.mark.slow
def test_sweep_baselines_and_report_on_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLAP_SAM_DEMO_ROOT", str(tmp_path / "demo"))
    sweep = tmp_path / "sweep"
    assert main(["job", "kits_lora", "--out", str(tmp_path / "job"), "--set", *_set(SETTINGS)]) == 0
    for kind, sites in (("local", ["site-1"]), ("pooled", ["site-1", "site-2"])):
        assert main(["train", "--job", str(tmp_path / "job"), "--sites", *sites, "--out", str(tmp_path / kind)]) == 0
        log = json.loads((tmp_path / kind / "train_log.json").read_text())
        baseline = json.loads((tmp_path / kind / "baseline.json").read_text())
        assert len(log) == ROUNDS and all(math.isfinite(e["train_loss"]) for e in log)
        assert baseline["best_val_dice"] == max(e["val_dice"] for e in log)  # the kept adapter is the best epoch's
    assert (
        main(
            [
                "sweep",
                "kits_lora",
                "--presets",
                "flap",
                "dec_ft",
                "--out",
                str(sweep),
                "--set",
                *_set(SETTINGS),
                "--run-timeout",
                "600",
                "--baselines",
                str(tmp_path / "local"),
                str(tmp_path / "pooled"),
            ]
        )
        == 0
    )
    report = json.loads((sweep / "report" / "report.json").read_text())
    assert sorted(r["name"] for r in report["runs"]) == ["dec_ft-fp32", "flap-fp32"]
    for run in report["runs"]:  # the report's numbers are the workspaces' own
        job_dir = sweep / "runs" / run["name"] / "server" / "simulate_job"
        traffic = json.loads((job_dir / "app_server" / "traffic_summary.json").read_text())
        assert run["total_bytes"] == traffic["totals"]["sent"] + traffic["totals"]["received"]
        cross = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
        expected = sum(v["SRV_FL_global_model.pt"]["dice"] for v in cross.values()) / len(cross)
        assert run["test_dice"] == pytest.approx(expected)
        assert sorted(map(int, run["val_dice"]["site-1"])) == list(range(ROUNDS))
        assert (
            f"| {run['name']} | vit_test | {run['preset']} | fp32 | {ROUNDS} | {run['total_bytes']:,} | {run['test_dice']:.4f} |"
            in (sweep / "report" / "report.md").read_text()
        )
    flap, dec = (next(r for r in report["runs"] if r["preset"] == p) for p in ("flap", "dec_ft"))
    assert flap["total_bytes"] < dec["total_bytes"]  # flap sends fewer tensors than the whole decoder
    kinds = {b["kind"]: b for b in report["baselines"]}
    assert set(kinds) == {"local", "pooled"} and kinds["pooled"]["sites"] == ["site-1", "site-2"]
    assert kinds["local"]["test_dice"] == json.loads((tmp_path / "local" / "baseline.json").read_text())["test_dice"]
    for png in ["dice_vs_bytes.png", "run_flap-fp32.png", "run_dec_ft-fp32.png"]:
        assert (sweep / "report" / png).stat().st_size > 10_000, png
    # A second sweep goes on where the first stopped: nothing runs again.
    capsys.readouterr()
    assert main(["sweep", "kits_lora", "--presets", "flap", "dec_ft", "--out", str(sweep), "--set", *_set(SETTINGS)]) == 0
    assert capsys.readouterr().out.count("finished before, not run again") == 2
