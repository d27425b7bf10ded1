"""The client result filter (the real NVFlare Filter API) keeps everything but the preset's tensors on site."""

from __future__ import annotations

import logging

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from flap_sam.federated.filters import PresetResultFilter
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, export_weights
from flap_sam.model.presets import exchanged_names

SETTINGS = {"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}
SPEC = ModelSpec(model_type="vit_test", image_size=64, num_classes=2, preset="flap", rank=4)  # kits: 2 classes


def _train_result(extra: dict | None = None) -> Shareable:
    model = build_model(SPEC)
    weights = export_weights(model, exchanged_names(model, SPEC.preset_obj))
    weights.update(extra or {})
    return DXO(DataKind.WEIGHTS, data=weights, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 7}).to_shareable()


def test_frozen_encoder_weight_does_not_leave_the_site(caplog):
    frozen = "image_encoder.blocks.0.attn.qkv.weight"
    result = _train_result({frozen: np.zeros((192, 64), np.float32)})
    with caplog.at_level(logging.ERROR):
        out = PresetResultFilter(SETTINGS).process(result, FLContext())
    dxo = from_shareable(out)
    assert frozen not in dxo.data
    assert set(dxo.data) == set(exchange_schema(SPEC))
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 7
    assert any(frozen in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_misshaped_allowed_name_and_unknown_payloads_are_blocked():
    name = "mask_decoder.mask_tokens.weight"
    out = from_shareable(PresetResultFilter(SETTINGS).process(_train_result({name: np.zeros((99, 1), np.float32)}), FLContext()))
    assert name not in out.data
    for kind in (DataKind.COLLECTION, DataKind.STATISTICS):
        blocked = PresetResultFilter(SETTINGS).process(DXO(kind, data={"x": 1}).to_shareable(), FLContext())
        assert blocked.get_return_code() == ReturnCode.EXECUTION_RESULT_ERROR
        assert "DXO" not in str(dict(blocked))
    not_dxo = Shareable()
    not_dxo["raw_image"] = np.zeros((4, 4))
    out = PresetResultFilter(SETTINGS).process(not_dxo, FLContext())
    assert out.get_return_code() == ReturnCode.EXECUTION_RESULT_ERROR and "raw_image" not in out


def test_metrics_pass_only_as_numbers():
    metrics = DXO(DataKind.METRICS, data={"val_dice": 0.5, "worst_case": "case_00021.nii.gz", "map": np.zeros(3)})
    out = from_shareable(PresetResultFilter(SETTINGS).process(metrics.to_shareable(), FLContext()))
    assert out.data == {"val_dice": 0.5}


def test_other_preset_settings_change_the_schema():
    flap = PresetResultFilter(SETTINGS).schema
    lora_dec = PresetResultFilter({**SETTINGS, "preset": "lora_dec"}).schema
    assert set(flap) < set(lora_dec)


def test_an_error_result_keeps_only_its_code_and_a_known_start_up_error_kind():
    from flap_sam.federated.filters import SITE_ERROR_HEADER

    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(SITE_ERROR_HEADER, "data")
    failed.set_header("details", "image /data/patient_smith/ct.nii.gz: cannot be read")
    out = PresetResultFilter(SETTINGS).process(failed, FLContext())
    assert out.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert out.get_header(SITE_ERROR_HEADER) == "data" and out.get_header("details") is None
    failed.set_header(SITE_ERROR_HEADER, "/data/patient_smith")  # not a known kind: dropped
    assert PresetResultFilter(SETTINGS).process(failed, FLContext()).get_header(SITE_ERROR_HEADER) is None


def test_the_reply_is_fresh_no_header_of_the_incoming_result_leaves():
    result = _train_result()
    result.set_header("learner_note", "/data/site-3/imagesTr/patient_doe_0042.nii.gz")
    result.set_header("debug_image", np.zeros((4, 4), np.float32))
    out = PresetResultFilter(SETTINGS).process(result, FLContext())
    assert out is not result
    assert out.get_header("learner_note") is None and out.get_header("debug_image") is None
    assert set(from_shareable(out).data) == set(exchange_schema(SPEC))


def test_a_start_up_error_leaves_the_site_as_its_category_only():
    """What the server may learn of a site's failed start: a fixed category, the most specific first (DataError and
    CheckpointError are ValueErrors too); anything unforeseen is internal."""
    from flap_sam.errors import CheckpointError, DataError
    from flap_sam.federated.filters import SITE_ERROR_KINDS, BaseMismatchError, site_error_kind

    kinds = {
        DataError("x.nii.gz: NaN"): "data",
        CheckpointError("sam.pth: truncated"): "checkpoint",
        BaseMismatchError("another base"): "base",
        ValueError("lr: -1"): "settings",
        RuntimeError("CUDA out of memory"): "internal",
        KeyError("x"): "internal",
    }
    assert {type(e).__name__: site_error_kind(e) for e in kinds} == {type(e).__name__: k for e, k in kinds.items()}
    assert set(kinds.values()) <= set(SITE_ERROR_KINDS)


def test_a_lower_rank_factor_is_the_schemas_factor_at_that_rank_only():
    from flap_sam.federated.filters import lower_rank_shape

    a, b = "blk.attn.qkv.lora_A.q", "blk.attn.qkv.lora_B.q"
    assert lower_rank_shape(a, (2, 64), (4, 64)) and lower_rank_shape(b, (48, 2), (48, 4))
    assert lower_rank_shape(a, (1, 64), (4, 64))  # rank 1 is a rank
    assert not lower_rank_shape(a, (4, 64), (4, 64))  # the job's own rank is not lower
    assert not lower_rank_shape(a, (8, 64), (4, 64))  # above it
    assert not lower_rank_shape(a, (0, 64), (4, 64))  # no rank at all
    assert not lower_rank_shape(a, (2, 32), (4, 64))  # the other dimension must stay the layer's
    assert not lower_rank_shape(b, (2, 48), (48, 4))  # B's rank is its second axis
    assert not lower_rank_shape("mask_decoder.mask_tokens.weight", (2, 64), (4, 64))  # not a LoRA factor


def test_only_plain_metadata_may_travel():
    from flap_sam.federated.filters import _plain, is_number

    assert all(_plain(v) for v in (None, "x", 1, 2.5, np.float32(1), np.int64(3), [1, "a", None], (1, 2), {"a": [1, {"b": 2.0}]}))
    assert not any(
        _plain(v) for v in (np.zeros(2), b"raw", {1: "a"}, [np.zeros(1)], {"a": np.zeros(1)}, ({"a": b"x"},), {"a": {"b": object()}})
    )
    assert is_number(True) and is_number(np.float16(1)) and not is_number("1") and not is_number(None)
