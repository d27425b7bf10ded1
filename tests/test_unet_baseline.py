"""The MONAI U-Net baseline is one model family more (``model/encoders/unet.py``): built, trained, filtered,
aggregated and persisted by the same components as SAM, its whole state exchanged and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext

from flap_sam.cli.main import main
from flap_sam.federated.adapter_model import AdapterModel
from flap_sam.federated.filters import PresetResultFilter
from flap_sam.model.adapter_file import base_fingerprint
from flap_sam.model.encoders import FAMILIES, family_of
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, export_weights, refuses_random_base
from flap_sam.model.presets import exchanged_names
from flap_sam.training.settings import base_recipe

from jobtools import TEST_TRAINING, scalars

SPEC = ModelSpec("unet", 64, 3, "fft", 32)  # chest CT: lung, vertebrae, ribs
SETTINGS = {"model_type": "unet", "image_size": 64, "dataset": "chest_ct", "preset": "fft", "rank": 32}


def test_the_unet_is_nvflares_example_shape_behind_sams_forward_and_its_whole_state_travels():
    model = build_model(SPEC, None, "cpu", attention="fused", checkpointing="encoder")
    assert family_of(model) is FAMILIES["unet"]
    reference = UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 1_626_425
    # Its whole state is its parameters (instance norms keep no running statistics), and all of it trains and travels.
    names = exchanged_names(model, SPEC.preset_obj)
    assert names == list(model.state_dict()) == [n for n, _ in model.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())
    assert exchange_schema(SPEC) == {n: tuple(p.shape) for n, p in model.named_parameters()}
    logits = model(torch.rand(2, 3, 64, 64))
    assert tuple(logits.shape) == (2, 4, 64, 64)  # full resolution, background first
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\)"):
        model(torch.rand(2, 1, 64, 64))


def test_only_fft_applies_and_a_job_that_asks_for_another_preset_is_refused_before_it_is_written(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^preset 'flap' does not apply to model_type unet; choose one of \['fft'\]$"):
        ModelSpec("unet", 64, 3, "flap", 32)
    assert main(["job", "chest_ct_lora", "--out", str(tmp_path / "bad"), "--set", "model_type=unet"]) == 2
    assert "preset 'flap' does not apply to model_type unet" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["job", "chest_ct_lora", "--out", str(tmp_path / "good"), "--set", "model_type=unet", "preset=fft"]) == 0


def test_it_trains_from_scratch_by_design_with_its_own_recipe():
    """A random U-Net on real data is the baseline, not a mistake; a random SAM on real data stays refused."""
    assert not refuses_random_base("unet", None, demo_data=False, random_weights=False)
    assert refuses_random_base("vit_b", None, demo_data=False, random_weights=False)
    assert base_recipe("unet")["lr"] == FAMILIES["unet"].recipe["lr"] != base_recipe("lite_medsam")["lr"]
    # Every party builds the same start: the server's fingerprint is each site's.
    first, second = (build_model(SPEC) for _ in range(2))
    names = exchanged_names(first, SPEC.preset_obj)
    assert base_fingerprint(first, names, False) == base_fingerprint(second, names, False)
    assert base_fingerprint(first, names, False)["source"] == "random"


def test_the_result_filter_lets_out_the_whole_unet_and_nothing_else_and_the_server_keeps_it():
    model = build_model(SPEC)
    weights = export_weights(model, exchanged_names(model, SPEC.preset_obj))
    leaked = {**weights, "image": np.zeros((64, 64), np.float32), "net.model.0.conv.unit0.conv.weight_copy": np.zeros(3, np.float32)}
    result = DXO(DataKind.WEIGHTS, data=leaked, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 3}).to_shareable()
    out = from_shareable(PresetResultFilter(SETTINGS).process(result, FLContext()))
    assert set(out.data) == set(weights)
    assert all(np.array_equal(out.data[k], weights[k]) for k in weights)
    server = AdapterModel(SETTINGS)
    assert list(server.state_dict()) == list(model.state_dict())
    assert all(torch.equal(server.state_dict()[k], v) for k, v in model.state_dict().items())  # the same start as every site


@pytest.mark.slow
def test_a_sweep_runs_the_unet_federation_on_the_real_ct_demo_scores_the_held_out_site_and_reports_it(tmp_path, monkeypatch, capsys):
    """``flap-sam sweep chest_ct_lora --models unet --presets fft flap --held-out ...``: FLARE's simulator, 3 sites,
    FedAvg of the whole U-Net on one labelled volume per site; the held-out scanner scores the final model."""
    monkeypatch.setenv("FLAP_SAM_DEMO_ROOT", str(tmp_path / "demo"))
    assert main(["demo-data", "--dataset", "chest_ct", "--site-names", "heldout"]) == 0
    held_out = tmp_path / "demo" / "chest_ct-ctchest4-v1" / "heldout" / "datalist.json"
    settings = {**TEST_TRAINING, "num_rounds": 3, "max_steps_per_round": 15, "lr": 0.003}
    assert (
        main(
            [
                "sweep",
                "chest_ct_lora",
                "--models",
                "unet",
                "--presets",
                "fft",
                "flap",
                "--train-volumes",
                "1",
                "--held-out",
                str(held_out),
                "--out",
                str(tmp_path / "sweep"),
                "--run-timeout",
                "900",
                "--set",
                *(f"{k}={json.dumps(v)}" for k, v in settings.items()),
            ]
        )
        == 0
    )
    assert "unet-flap: not run (unet trains with preset fft only)" in capsys.readouterr().out
    job_dir = tmp_path / "sweep" / "runs" / "unet-fft-fp32-v1" / "server" / "simulate_job"
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert {k: tuple(v.shape) for k, v in state.items()} == exchange_schema(SPEC)
    for site in ("site-1", "site-2", "site-3"):
        dice = scalars(job_dir / "tb_events" / site, "val_dice_lung")
        assert sorted(dice) == [0, 1, 2] and dice[2] > dice[0] + 0.2, f"{site}: lung Dice {dice}"
    cross = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(cross) == ["site-1", "site-2", "site-3"]  # the held-out site never joined
    # What it cost and how the held-out scanner scores it, in the run's folder and in the report's side-by-side table.
    cost = json.loads((job_dir / "run_cost.json").read_text())
    assert cost["cpu_s"] > 0 and cost["peak_process_rss_bytes"] > 100e6
    held = (job_dir / "held_out" / "dice.csv").read_text().splitlines()
    assert held[0].startswith("case,dice_lung,dice_vertebrae,dice_ribs,mean_dice") and held[-1].startswith("mean,")
    [run] = json.loads((tmp_path / "sweep" / "report" / "report.json").read_text())["runs"]
    assert (run["model_type"], run["preset"], run["train_volumes"]) == ("unet", "fft", 1)
    assert run["held_out"]["dice_lung"] == pytest.approx(float(held[-1].split(",")[1]), abs=1e-4)
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert f"| unet-fft-fp32-v1 | unet | fft | 1 | {run['held_out']['dice_lung']:.4f} |" in report
