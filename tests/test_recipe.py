"""The Job API way in: each shipped job as a FLARE recipe (``jobs/<job>/job.py``), equal in effect to the job folder."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flap_sam.jobs.recipe import FlapSamRecipe, resolved_config
from flap_sam.jobs.writer import jobs_folder, write_job
from flap_sam.model.factory import ModelSpec, exchange_schema

from jobtools import TEST_MODEL, TEST_TRAINING, scalars

REPO = Path(__file__).resolve().parents[1]


def _exported(recipe: FlapSamRecipe, out: Path, side: str) -> dict:
    recipe.export(str(out))
    [job] = os.listdir(out)
    return json.loads((out / job / "app" / "config" / f"config_fed_{side}.json").read_text())


@pytest.mark.parametrize("job", ["kits_lora", "ixi_lora", "prostate_lora", "chest_ct_lora"])
def test_an_exported_recipe_holds_the_shipped_jobs_components_and_settings(job, tmp_path):
    shipped = os.path.join(jobs_folder(), job)
    for side in ("server", "client"):
        exported = _exported(FlapSamRecipe(job), tmp_path / f"plain_{side}", side)
        assert exported == resolved_config(shipped, side), side


def test_a_recipe_for_provisioned_sites_carries_no_code_and_names_its_scope(tmp_path):
    for env, has_marker in (("prod", False), ("sim", True)):
        FlapSamRecipe("kits_lora", env=env, scope="flap_percentile", privacy="percentile").export(str(tmp_path / env))
        [job] = os.listdir(tmp_path / env)
        assert json.loads((tmp_path / env / job / "meta.json").read_text())["scope"] == "flap_percentile"
        assert any((tmp_path / env / job).rglob("custom")) == has_marker, env  # the simulator's BYOC marker only outside prod
    with pytest.raises(ValueError, match="env 'cloud': choose one of"):
        FlapSamRecipe("kits_lora", env="cloud")


def test_recipe_settings_equal_those_of_flap_sam_job(tmp_path):
    settings = {"preset": "lora_dec", "num_rounds": 7, "data_root": "/data/kits", "transport": "int8"}
    folder = write_job(os.path.join(jobs_folder(), "kits_lora"), str(tmp_path / "job"), settings)
    for side in ("server", "client"):
        exported = _exported(FlapSamRecipe("kits_lora", **settings), tmp_path / f"recipe_{side}", side)
        assert exported == resolved_config(folder, side)
        assert exported["batch_size"] == 24  # real data: the recipe's defaults, not the demo's budget
    with pytest.raises(ValueError, match="no setting presett"):
        FlapSamRecipe("kits_lora", presett="flap")
    keywords = inspect.signature(FlapSamRecipe).parameters  # every setting, with the package default
    assert keywords["batch_size"].default == 24 and keywords["privacy"].default == "none" and "data_workers" in keywords


@pytest.mark.slow
def test_job_py_runs_the_demo_in_flares_simulator_env(tmp_path):
    settings = [f"{k}={json.dumps(v)}" for k, v in {**TEST_MODEL, **TEST_TRAINING, "num_rounds": 2}.items()]
    env = {**os.environ, "FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "kits_lora" / "job.py"), "--set", *settings, "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_dir = tmp_path / "ws" / "kits_lora" / "server" / "simulate_job"
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert set(state) == set(exchange_schema(ModelSpec("vit_test", 64, 2, "flap", 4)))
    for site in ("site-1", "site-2"):
        assert sorted(scalars(job_dir / "tb_events" / site, "val_dice")) == [0, 1]
    cross = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(cross) == ["site-1", "site-2"] and all("dice" in v["SRV_FL_global_model.pt"] for v in cross.values())
