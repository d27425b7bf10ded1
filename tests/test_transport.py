"""Compressed transport: each mode's round trip within its tolerance, and clear errors on mismatches."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext

from flap_sam.federated.transport import MODES, TransportCodec, decode_tensor, encode_tensor
from flap_sam.model.factory import ModelSpec

from modeltools import noisy_payload

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


# Worst-case error of one value x after a round trip: relative for the float modes, absolute for int8.
def _tolerance(mode, value):
    if mode == "fp16":
        return np.abs(value) * 2.0**-11 + 2.0**-24
    if mode == "bf16":
        return np.abs(value) * 2.0**-8
    return np.full_like(value, np.abs(value).max() / 127 / 2 + 1e-7)


@pytest.mark.parametrize("mode", ["fp16", "bf16", "int8"])
def test_codec_round_trip_keeps_names_shapes_and_values_within_tolerance(mode):
    weights = noisy_payload(SPEC)
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 3}
    sent = TransportCodec(mode, "encode").process(DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable(), FLContext())
    wire = from_shareable(sent)
    assert {v.dtype.itemsize for v in wire.data.values()} == {1 if mode == "int8" else 2}
    back = from_shareable(TransportCodec(mode, "decode").process(sent, FLContext()))
    history = back.meta.pop(MetaKey.FILTER_HISTORY)  # FLARE's DXOFilter records each filter that changed the DXO
    assert history == ["TransportCodec", "TransportCodec"]
    assert set(back.data) == set(weights) and back.meta == meta
    for name, value in weights.items():
        restored = back.data[name]
        assert restored.dtype == np.float32 and restored.shape == value.shape
        assert np.all(np.abs(restored - value) <= _tolerance(mode, value)), name


def test_encoding_does_not_change_the_servers_shared_task_data():
    weights = noisy_payload(SPEC)
    task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    TransportCodec("fp16", "encode").process(task, FLContext())
    assert from_shareable(task).data["mask_decoder.mask_tokens.weight"].dtype == np.float32  # the next site gets fp32 to encode


def test_mismatched_transport_settings_fail_with_a_clear_error():
    sent = TransportCodec("fp16", "encode").process(DXO(DataKind.WEIGHTS, data=noisy_payload(SPEC)).to_shareable(), FLContext())
    with pytest.raises(ValueError, match="set the same 'transport' on server and sites"):
        TransportCodec("int8", "decode").process(sent, FLContext())


def test_fp16_refuses_values_out_of_its_range():
    with pytest.raises(ValueError, match="beyond the float16 range"):
        encode_tensor("big", np.array([1e6], np.float32), "fp16")
    assert "fp32" in MODES


def test_bf16_rounds_to_nearest():
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -3.14159], np.float32)
    y = decode_tensor(encode_tensor("x", x, "bf16")[0], "bf16")
    assert y[0] == 1.0 and y[1] == 1.0 + 4 * 2.0**-8  # ties to even
    assert abs(y[2] - x[2]) <= abs(x[2]) * 2.0**-8
