"""Sites at their own LoRA rank (``site_ranks``): the maths, the checks, the filters, and a real simulator run.

The model tests build the real segment-anything modules (test size); the federation runs FLARE's simulator.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_copy
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from flap_sam.cli.main import main
from flap_sam.cli.sweep import rank_settings
from flap_sam.evaluation.report import read_run
from flap_sam.federated.aggregation_rules import aggregate_exact, aggregate_robust
from flap_sam.federated.contributions import contribution_problem
from flap_sam.federated.filters import PresetResultFilter
from flap_sam.federated.lora_aggregation import FlapSamAggregator
from flap_sam.federated.site_ranks import SiteRankFilter, record_site_rank, recorded_site_ranks
from flap_sam.federated.transport import TransportCodec
from flap_sam.files import RANK_BANDS_FILE
from flap_sam.jobs.settings import check_settings
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, export_weights
from flap_sam.model.lora import at_rank, lora_pairs, lower_lora_rank, payload_rank, refactorize
from flap_sam.model.presets import exchanged_names
from flap_sam.training.settings import SiteSettings

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator
from modeltools import noisy_payload

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)
AVERAGE_REFUSAL = "aggregation = average needs every site at the job's rank"


def _global_model(seed: int = 0) -> dict:
    """A trained-looking global model of SPEC: noisy tensors, every LoRA pair in the SVD form the aggregation leaves."""
    weights = noisy_payload(SPEC, seed)
    for a_name, b_name in lora_pairs(weights).values():
        weights[b_name], weights[a_name] = refactorize([weights[b_name]], [weights[a_name]], [1.0], 4)
    return weights


def _product(weights: dict, pair: tuple[str, str]) -> np.ndarray:
    a_name, b_name = pair
    return weights[b_name].astype(np.float64) @ weights[a_name].astype(np.float64)


def test_at_rank_is_the_best_approximation_and_leaves_a_model_at_that_rank_alone():
    weights = noisy_payload(SPEC, 1)
    lowered = at_rank(weights, 2)
    assert payload_rank(weights) == 4 and payload_rank(lowered) == 2
    for pair in lora_pairs(weights).values():
        u, s, vh = np.linalg.svd(_product(weights, pair))
        np.testing.assert_allclose(_product(lowered, pair), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
    assert all(lowered[n] is weights[n] for n in weights if ".lora_" not in n)  # the rest passes as it is
    assert all(at_rank(lowered, 2)[n] is lowered[n] for n in lowered)  # a model at the rank is not touched


def test_with_every_site_at_the_global_rank_the_aggregation_is_todays_to_the_bit():
    contributions = [(3.0, noisy_payload(SPEC, 2)), (1.0, noisy_payload(SPEC, 3))]
    with_reference, without = aggregate_exact(contributions, _global_model()), aggregate_exact(contributions)
    assert all(np.array_equal(with_reference[n], without[n]) for n in without)


def test_a_lower_rank_site_keeps_the_part_of_the_global_adapter_it_could_not_hold():
    """Sites that send back what they received leave the global model as it was; averaging the products would not."""
    reference = _global_model()
    low, full = at_rank(reference, 1), dict(reference)
    result = aggregate_exact([(1.0, low), (1.0, full)], reference)
    assert payload_rank(result) == 4
    for pair in lora_pairs(reference).values():
        before = _product(reference, pair)
        np.testing.assert_allclose(_product(result, pair), before, atol=1e-5 * np.abs(before).max())
        products_averaged = 0.5 * (_product(low, pair) + before)  # what the products alone would give
        assert np.abs(products_averaged - before).max() > 1e-2 * np.abs(before).max()


def test_a_site_at_a_lower_rank_moves_the_global_model_by_its_change():
    reference = _global_model()
    start = at_rank(reference, 2)
    pair = next(iter(lora_pairs(reference).values()))
    moved = dict(start)
    moved[pair[1]] = start[pair[1]] + 0.1  # the site changed one pair
    result = aggregate_exact([(1.0, moved)], reference)
    expected = _product(reference, pair) + _product(moved, pair) - _product(start, pair)
    np.testing.assert_allclose(_product(result, pair), expected, atol=1e-4)


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean", "fedseca"])
def test_robust_aggregations_take_each_sites_change_against_what_it_received(aggregation):
    reference = _global_model()
    sites = [at_rank(reference, 1), at_rank(reference, 2), dict(reference), dict(reference), at_rank(reference, 3)]
    result, _ = aggregate_robust(aggregation, sites, reference, trim_fraction=0.2)
    for pair in lora_pairs(reference).values():
        np.testing.assert_allclose(_product(result, pair), _product(reference, pair), atol=1e-4)


def test_the_server_takes_a_lower_rank_and_refuses_a_higher_one_or_one_average_cannot_take():
    reference = _global_model()
    assert contribution_problem(at_rank(reference, 2), 10, reference) is None
    assert AVERAGE_REFUSAL in contribution_problem(at_rank(reference, 2), 10, reference, AVERAGE_REFUSAL)
    assert contribution_problem(dict(reference), 10, reference, AVERAGE_REFUSAL) is None
    higher = _global_model()
    for a_name, b_name in lora_pairs(higher).values():
        higher[a_name], higher[b_name] = np.vstack([higher[a_name]] * 2), np.hstack([higher[b_name]] * 2)
    assert "its LoRA rank 8 is above the global model's 4" in contribution_problem(higher, 10, reference)
    mixed = at_rank(reference, 2)
    a_name = next(iter(lora_pairs(mixed).values()))[0]
    mixed[a_name] = reference[a_name]  # this pair's A at rank 4, its B at rank 2
    assert "do not chain" in contribution_problem(mixed, 10, reference)


def test_the_sites_result_filter_lets_a_lower_rank_out_and_nothing_larger():
    spec = {"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}
    weights = at_rank(noisy_payload(SPEC, 4), 2)
    out = from_shareable(PresetResultFilter(spec).process(DXO(DataKind.WEIGHTS, data=weights).to_shareable(), FLContext()))
    assert set(out.data) == set(weights) and payload_rank(out.data) == 2
    a_name = next(iter(lora_pairs(weights).values()))[0]
    wider = {**weights, a_name: np.zeros((5, weights[a_name].shape[1]), np.float32)}
    out = from_shareable(PresetResultFilter(spec).process(DXO(DataKind.WEIGHTS, data=wider).to_shareable(), FLContext()))
    assert a_name not in out.data


def test_a_site_lowered_to_its_rank_computes_the_base_model_and_exchanges_the_same_names():
    torch.manual_seed(0)
    model = build_model(SPEC)
    names = exchanged_names(model, SPEC.preset_obj)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(image)
    assert lower_lora_rank(model, 2) > 0
    with torch.no_grad():
        np.testing.assert_allclose(model(image).numpy(), before.numpy(), atol=1e-6)  # B is still zero
    assert exchanged_names(model, SPEC.preset_obj) == names
    weights = export_weights(model, names)
    assert payload_rank(weights) == 2 and set(weights) == set(exchange_schema(SPEC))
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


def test_a_site_reads_its_rank_and_may_set_it_in_its_own_file():
    site = SiteSettings.from_settings({**_site_block(), "site_ranks": {"site-1": "2"}})
    assert site.lora_rank("site-1", SPEC) == 2 and site.lora_rank("site-2", SPEC) == 4
    local = site.with_overrides({"site_ranks": {"site-2": 3}}, where="flap_sam_site.json: ")
    assert local.lora_rank("site-2", SPEC) == 3
    with pytest.raises(ValueError, match="site-2 at rank 8 is above the job's rank 4"):
        site.with_overrides({"site_ranks": {"site-2": 8}}, where="x: ").lora_rank("site-2", SPEC)


def _site_block() -> dict:
    return dataclasses.asdict(check_settings({}).site)


def test_the_server_sends_each_site_its_rank_and_leaves_the_other_sites_copies_alone():
    reference = _global_model()
    task = DXO(DataKind.WEIGHTS, data=reference, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1}).to_shareable()
    fl_ctx = FLContext()
    record_site_rank(fl_ctx, "site-1", 2)
    sent = {}
    for site in ("site-1", "site-2"):
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False)
        fl_ctx.set_peer_context(peer)
        sent[site] = from_shareable(SiteRankFilter().process(make_copy(task), fl_ctx)).data
    assert payload_rank(sent["site-1"]) == 2 and payload_rank(sent["site-2"]) == 4
    assert all(sent["site-2"][n] is reference[n] for n in reference)
    assert payload_rank(from_shareable(task).data) == 4


@pytest.mark.slow
def test_a_mixed_rank_federation_keeps_the_jobs_rank_and_sends_each_site_its_own(tmp_path):
    """kits_lora, 2 sites, 2 rounds: site-1 at rank 2 of the job's 4 (named in the job; a site may name itself locally),
    each rank component averaged over the sites that train it (``rank_weighting = supplied``)."""
    settings = {"num_rounds": 2, "max_steps_per_round": 10, "site_ranks": {"site-1": 2}, "rank_weighting": "supplied"}
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, **settings})
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    app = tmp_path / "ws" / "server" / "simulate_job" / "app_server"
    state = torch.load(app / "FL_global_model.pt", weights_only=True)["model"]
    schema = exchange_schema(SPEC)
    assert {n: tuple(t.shape) for n, t in state.items()} == schema  # the global adapter has the job's rank
    assert "site_ranks: this site trains and exchanges LoRA at rank 2 (the job's: 4)" in log
    assert "exact LoRA aggregation of sites at LoRA ranks {'site-1': 2, 'site-2': 4} (rank_weighting supplied)" in log
    bands = json.loads((app / RANK_BANDS_FILE).read_text())  # the global update's energy by rank band, each round
    assert bands["bands"] == [[0, 2], [2, 4]] and set(bands["rounds"]) == {"0", "1"}
    assert all(sum(shares) == pytest.approx(1.0, abs=1e-5) and min(shares) > 0 for shares in bands["rounds"].values())
    assert "the update's energy per rank band 1-2 " in log
    assert "result blocked" not in log and "leaving out" not in log
    # On the wire (float32 bytes of what was serialised): half the LoRA values less for site-1, both ways,
    # except the first model the server sent, before it knew site-1's rank.
    lora_bytes = 4 * sum(int(np.prod(shape)) for name, shape in schema.items() if ".lora_" in name)
    traffic = json.loads((app / "traffic_summary.json").read_text())["sites"]
    for round_ in ("0", "1"):
        one, two = traffic["site-1"]["train"][round_], traffic["site-2"]["train"][round_]
        assert two["raw_float32_received"] - one["raw_float32_received"] == lora_bytes // 2
        assert two["raw_float32_sent"] - one["raw_float32_sent"] == (lora_bytes // 2 if round_ == "1" else 0)
    run = read_run(str(app.parent), "mixed")  # the report's per-site row
    assert run.lora_ranks == {"site-1": 2, "site-2": 4} and run.bytes_per_site["site-1"] < run.bytes_per_site["site-2"]
    assert set(run.test_dice_per_site) == {"site-1", "site-2"}


def test_a_sweep_over_ranks_names_each_sites_rank_and_refuses_a_rank_per_site_that_does_not_fit():
    assert rank_settings("32", 3) == ("32", {"rank": 32})
    assert rank_settings("4,8,32", 3) == ("4-8-32", {"rank": 32, "site_ranks": {"site-1": 4, "site-2": 8}})
    with pytest.raises(ValueError, match="--ranks 4,32: 2 ranks for 3 sites"):
        rank_settings("4,32", 3)
    with pytest.raises(ValueError, match="--ranks 4,x: not whole numbers"):
        rank_settings("4,x", 2)


def test_params_prints_the_bytes_of_a_site_at_each_rank(capsys):
    assert main(["params", "--model", "vit_b", "--preset", "flap", "--rank", "32", "--classes", "2", "--site-ranks", "4", "32"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in ("4 ", "32")}
    assert rows["32"][1] == "1,862,208" and int(rows["4"][1].replace(",", "")) < 1_862_208
    assert main(["params", "--rank", "8", "--site-ranks", "16"]) == 2
    assert "--site-ranks: 16 is not between 1 and the rank 8" in capsys.readouterr().err


def _server_ctx(reference: dict) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(
        AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in reference.items()}, {}), private=True, sticky=False
    )
    ctx.set_prop(AppConstants.CURRENT_ROUND, 1, private=True, sticky=False)
    return ctx


def _result(site: str, kind: str, data: dict, transport: str) -> Shareable:
    sent = TransportCodec(transport, "encode").process(
        DXO(kind, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 5}).to_shareable(), FLContext()
    )
    received = TransportCodec(transport, "decode").process(sent, FLContext())
    received.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    received.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)
    return received


@pytest.mark.parametrize("transport", ["fp32", "fp16", "int8"])
def test_a_lower_rank_sites_privacy_difference_is_applied_to_what_it_received_through_every_transport(transport):
    reference = _global_model()
    received = at_rank(reference, 2)
    trained = {k: (v + np.float32(0.05)).astype(np.float32) for k, v in received.items()}
    difference = {k: trained[k] - received[k] for k in trained}  # what a site with privacy on sends (WEIGHT_DIFF)
    aggregator = FlapSamAggregator("lora_exact")
    ctx = _server_ctx(reference)
    aggregator.handle_event(EventType.START_RUN, ctx)
    assert aggregator.accept(_result("site-1", DataKind.WEIGHT_DIFF, difference, transport), ctx)
    result = from_shareable(aggregator.aggregate(ctx)).data
    assert payload_rank(result) == 4 and recorded_site_ranks(ctx) == {"site-1": 2}
    tolerance = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}[transport]
    for pair in lora_pairs(reference).values():
        expected = _product(reference, pair) + _product(trained, pair) - _product(received, pair)
        np.testing.assert_allclose(_product(result, pair), expected, atol=tolerance * np.abs(expected).max())


def test_the_average_aggregation_leaves_out_a_lower_rank_site_with_one_line(caplog):
    reference = _global_model()
    aggregator = FlapSamAggregator("average")
    ctx = _server_ctx(reference)
    aggregator.handle_event(EventType.START_RUN, ctx)
    with caplog.at_level(logging.ERROR):
        assert not aggregator.accept(_result("site-1", DataKind.WEIGHTS, at_rank(reference, 2), "fp32"), ctx)
    assert "leaving out the update of site-1: its LoRA rank is 2, the global model's 4: aggregation = average" in caplog.text
