"""A personal part that trains at each site and never leaves it (preset ``flap_personal``, FedPer-style).

The model tests build the real segment-anything modules (test size); the federation runs FLARE's simulator.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext

from flap_sam.evaluation.report import read_run, write_report
from flap_sam.federated.filters import PresetResultFilter
from flap_sam.federated.site_policy import SitePolicyFilter
from flap_sam.files import PERSONAL_ADAPTER_FILE
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, export_weights
from flap_sam.model.presets import PRESETS, exchanged_names, personal_names

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator

SPEC = ModelSpec("vit_test", 64, 2, "flap_personal", 4)
DECODER_OUTPUT = ("mask_decoder.output_upscaling.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.mask_tokens.")


def test_the_personal_part_trains_and_no_rule_lets_it_out():
    model = build_model(SPEC)
    personal, exchanged = personal_names(model, SPEC.preset_obj), exchanged_names(model, SPEC.preset_obj)
    assert personal and all(name.startswith(DECODER_OUTPUT) for name in personal)
    assert all(".lora_" in name for name in exchanged) and not set(personal) & set(exchange_schema(SPEC))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(personal) | set(exchanged)
    # flap exchanges what flap_personal keeps: the same decoder parts, trained the same way
    assert set(exchanged_names(build_model(ModelSpec("vit_test", 64, 2, "flap", 4)), PRESETS["flap"])) == set(exchanged) | set(personal)


def test_a_payload_holding_a_personal_tensor_is_stopped_by_the_jobs_filter_and_the_sites_policy():
    model = build_model(SPEC)
    leaked = export_weights(model, exchanged_names(model, SPEC.preset_obj) + personal_names(model, SPEC.preset_obj)[:1])
    spec = {"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap_personal", "rank": 4}
    out = from_shareable(PresetResultFilter(spec).process(DXO(DataKind.WEIGHTS, data=leaked).to_shareable(), FLContext()))
    assert set(out.data) == set(exchange_schema(SPEC))
    refused = SitePolicyFilter(["flap_personal"]).process(DXO(DataKind.WEIGHTS, data=leaked).to_shareable(), FLContext())
    assert refused.get_return_code() == ReturnCode.EXECUTION_RESULT_ERROR


@pytest.mark.slow
def test_a_personalised_federation_keeps_each_sites_part_on_the_site_and_scores_both_models(tmp_path):
    job = copy_job(
        "kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "preset": "flap_personal", "num_rounds": 2, "max_steps_per_round": 10}
    )
    ws = tmp_path / "ws"
    result = run_simulator(job, ws, 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    job_dir = ws / "server" / "simulate_job"
    schema = exchange_schema(SPEC)
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert {n: tuple(t.shape) for n, t in state.items()} == schema
    # On the wire: every result the server received held exactly the schema's float32 bytes, nothing more.
    schema_bytes = 4 * sum(int(np.prod(shape)) for shape in schema.values())
    traffic = json.loads((job_dir / "app_server" / "traffic_summary.json").read_text())["sites"]
    for site in ("site-1", "site-2"):
        assert [traffic[site]["train"][r]["raw_float32_received"] for r in ("0", "1")] == [schema_bytes] * 2
    # The personal part: saved on each site, nowhere on the server, and trained away from the base.
    files = sorted(p.relative_to(ws).parts[0] for p in ws.rglob(PERSONAL_ADAPTER_FILE))
    assert files == ["site-1", "site-2"]
    torch.manual_seed(0)  # the sites' seed: the base values they built
    base = dict(build_model(SPEC).named_parameters())
    for path in ws.rglob(PERSONAL_ADAPTER_FILE):
        saved = torch.load(path, weights_only=True)["model"]
        assert saved and all(name.startswith(DECODER_OUTPUT) for name in saved)
        assert any(not torch.allclose(tensor, base[name].detach()) for name, tensor in saved.items())
    results = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    for site in ("site-1", "site-2"):
        final = results[site]["SRV_FL_global_model.pt"]
        assert final["personal_dice"] != final["dice"]  # two models scored: the global one alone, and with the part
    # The report's per-site table shows both, from the same file.
    run = read_run(str(job_dir), "personal")
    assert run.personal_dice_per_site == {s: results[s]["SRV_FL_global_model.pt"]["personal_dice"] for s in ("site-1", "site-2")}
    assert run.test_dice_per_site == {s: results[s]["SRV_FL_global_model.pt"]["dice"] for s in ("site-1", "site-2")}
    report = tmp_path / "report" / "report.md"
    write_report([run], [], str(report.parent))
    rows = [line for line in report.read_text().splitlines() if line.startswith("| personal | site-1 |")]
    assert len(rows) == 1 and f"{run.personal_dice_per_site['site-1']:.4f}" in rows[0]
    mean = sum(run.personal_dice_per_site.values()) / 2
    assert run.test_dice_summary == f"mean test Dice {run.test_dice:.4f} (global model; personalised {mean:.4f})"
