"""No update can poison the global model: the server checks every contribution, through every
codec and both aggregations; a site refuses to encode non-finite tensors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from flap_sam.federated.lora_aggregation import FlapSamAggregator
from flap_sam.federated.transport import MODES, TransportCodec, encode_tensor
from flap_sam.model.factory import ModelSpec, build_model, export_weights
from flap_sam.model.presets import exchanged_names
from flap_sam.training.schema import choices_of

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)
ROUND = 3


@pytest.fixture(scope="module")
def global_weights():
    model = build_model(SPEC)
    weights = export_weights(model, exchanged_names(model, SPEC.preset_obj))
    rng = np.random.default_rng(1)
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in weights.items()}


def _server_ctx(global_weights) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(
        AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in global_weights.items()}, {}), private=True, sticky=False
    )
    ctx.set_prop(AppConstants.CURRENT_ROUND, ROUND, private=True, sticky=False)
    return ctx


def _arrived(site: str, weights: dict, steps, mode: str) -> Shareable:
    """A site's train result as the server's filters hand it to the aggregator: encoded by the site's
    codec (``mode``), decoded by the server's. Bad values are put into the wire arrays, as a site
    that bypassed its own checks would send them."""
    clean = {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in weights.items()}
    sent = TransportCodec(mode, "encode").process(
        DXO(DataKind.WEIGHTS, data=clean, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps}).to_shareable(), FLContext()
    )
    if mode != "int8":
        dxo = from_shareable(sent)
        for name, value in weights.items():
            bad = ~np.isfinite(value)
            if bad.any():
                wire = dxo.data[name]
                wire[bad] = (
                    value[bad].astype(np.float16)
                    if mode == "fp16"
                    else (value[bad].astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
                    if mode == "bf16"
                    else value[bad]
                )
        sent = dxo.update_shareable(sent)
    else:
        dxo = from_shareable(sent)
        scales = dxo.meta["flap_sam_transport"]["scales"]
        for name, value in weights.items():
            if not np.isfinite(value).all():
                scales[name] = [float("nan")] * len(scales[name])  # a poisoned scale decodes to NaN
        sent = dxo.update_shareable(sent)
    received = TransportCodec(mode, "decode").process(sent, FLContext())
    received.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    received.add_cookie(AppConstants.CONTRIBUTION_ROUND, ROUND)
    return received


def _aggregate(aggregation, global_weights, contributions, mode):
    aggregator = FlapSamAggregator(aggregation)
    ctx = _server_ctx(global_weights)
    aggregator.handle_event(EventType.START_RUN, ctx)  # NVFlare's aggregator sets itself up here
    accepted = [aggregator.accept(_arrived(site, w, steps, mode), ctx) for site, w, steps in contributions]
    return accepted, from_shareable(aggregator.aggregate(ctx)).data


def _poisoned(global_weights, kind):
    w = {k: v + np.float32(0.01) for k, v in global_weights.items()}
    name = "mask_decoder.mask_tokens.weight"
    if kind == "nan":
        w[name] = w[name].copy()
        w[name][0, 0] = np.nan
    elif kind == "inf":
        w[name] = w[name].copy()
        w[name][0, 0] = np.inf
    elif kind == "extra_name":
        w["image_encoder.patch_embed.proj.weight"] = np.zeros((4, 4), np.float32)
    elif kind == "missing_name":
        del w[name]
    elif kind == "wrong_shape":
        w[name] = np.zeros((1, 1), np.float32)
    return w


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aggregation", choices_of("aggregation"))
@pytest.mark.parametrize("kind", ["nan", "inf", "extra_name", "missing_name", "wrong_shape", "zero_weight"])
def test_a_bad_update_is_left_out_with_the_site_and_reason(kind, aggregation, mode, global_weights, caplog):
    if mode == "int8" and kind == "inf":
        pytest.skip("int8 has no code for Inf: a poisoned scale is the NaN case")
    good = {k: v + np.float32(0.01) for k, v in global_weights.items()}
    bad = _poisoned(global_weights, kind) if kind != "zero_weight" else good
    with caplog.at_level(logging.ERROR):
        accepted, result = _aggregate(
            aggregation, global_weights, [("site-1", good, 4), ("site-2", bad, 0 if kind == "zero_weight" else 4)], mode
        )
    assert accepted == [True, False]
    assert any("leaving out the update of site-2" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert set(result) == set(global_weights)
    assert all(np.isfinite(v).all() for v in result.values())
    # Only site-1 counted: the non-LoRA tensors are its values (within the transport's error).
    name = "mask_decoder.mask_tokens.weight"
    assert np.allclose(result[name], good[name], atol=0.02)


@pytest.mark.parametrize("aggregation", choices_of("aggregation"))
def test_no_usable_update_keeps_the_previous_global_model(aggregation, global_weights, caplog):
    with caplog.at_level(logging.WARNING):
        accepted, result = _aggregate(
            aggregation,
            global_weights,
            [("site-1", _poisoned(global_weights, "nan"), 4), ("site-2", _poisoned(global_weights, "wrong_shape"), 4)],
            "fp32",
        )
    assert accepted == [False, False]
    assert all(np.array_equal(result[k], global_weights[k]) for k in global_weights)
    assert any("the global model stays as it was" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_site_never_encodes_a_non_finite_tensor(mode, value):
    with pytest.raises(ValueError, match="non-finite"):
        encode_tensor("w", np.array([1.0, value, -2.0], np.float32), mode)


def test_int8_keeps_a_channel_of_small_values_precise_next_to_a_large_one():
    x = np.stack([np.linspace(-1e-3, 1e-3, 64), np.linspace(-10, 10, 64)]).astype(np.float32)  # (2, 64): 2 channels
    from flap_sam.federated.transport import decode_tensor

    q, scales = encode_tensor("w", x, "int8")
    back = decode_tensor(q, "int8", scales)
    assert len(scales) == 2
    assert np.abs(back[0] - x[0]).max() <= 1e-3 / 254 * 1.001  # a per-tensor scale would give up to 10/254 here
    assert np.abs(back[1] - x[1]).max() <= 10 / 254 * 1.001


@pytest.mark.parametrize("aggregation", choices_of("aggregation"))
def test_a_late_result_and_a_second_result_of_a_site_count_for_no_round(aggregation, global_weights):
    """FLARE's aggregators (collect-and-assemble for lora_exact and the robust rules, in-time for average)
    take one result per site and round: another round's result and a site's second one are refused and
    leave the aggregate as the first results make it."""
    first = {k: v + np.float32(0.01) for k, v in global_weights.items()}
    other = {k: v + np.float32(0.05) for k, v in global_weights.items()}
    aggregator = FlapSamAggregator(aggregation)
    ctx = _server_ctx(global_weights)
    aggregator.handle_event(EventType.START_RUN, ctx)
    late = _arrived("site-3", other, 4, "fp32")
    late.add_cookie(AppConstants.CONTRIBUTION_ROUND, ROUND - 1)
    accepted = [
        aggregator.accept(_arrived("site-1", first, 4, "fp32"), ctx),
        aggregator.accept(_arrived("site-2", first, 4, "fp32"), ctx),
        aggregator.accept(_arrived("site-2", other, 4, "fp32"), ctx),
        aggregator.accept(late, ctx),
    ]
    result = from_shareable(aggregator.aggregate(ctx)).data
    assert accepted == [True, True, False, False]
    _, only_first = _aggregate(aggregation, global_weights, [("site-1", first, 4), ("site-2", first, 4)], "fp32")
    assert all(np.array_equal(result[k], only_first[k]) for k in global_weights)
    assert not all(np.array_equal(result[k], global_weights[k]) for k in global_weights)  # the first results did count


@pytest.mark.parametrize("aggregation", ["average", "lora_exact"])
def test_the_sites_weights_reach_the_rule_given_when_the_aggregator_is_made(aggregation, global_weights):
    """``aggregation_weights`` (x local steps) weigh the sites: NVFlare's ``average`` gets them through its
    constructor at the run's start, the exact rule through its assembler; a site not named weighs 1."""
    aggregator = FlapSamAggregator(aggregation, aggregation_weights={"site-1": 3.0})
    ctx = _server_ctx(global_weights)
    aggregator.handle_event(EventType.START_RUN, ctx)
    name = "mask_decoder.mask_tokens.weight"  # averaged by both rules (not a LoRA factor)
    one = {k: v + np.float32(0.01) for k, v in global_weights.items()}
    two = {k: v - np.float32(0.03) for k, v in global_weights.items()}
    assert all(aggregator.accept(_arrived(site, w, 4, "fp32"), ctx) for site, w in (("site-1", one), ("site-2", two)))
    result = from_shareable(aggregator.aggregate(ctx)).data
    np.testing.assert_allclose(result[name], (3 * one[name] + two[name]) / 4, atol=1e-6)
