"""Compressed transport: each mode's round trip within its tolerance, and clear errors on mismatches."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext

from flap_sam.federated.transport import (
    CODEC_META_KEY,
    MODES,
    TransportCodec,
    channel_axis,
    decode_tensor,
    decode_weights,
    encode_tensor,
    encode_weights,
)
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


@pytest.mark.parametrize(
    ("shape", "axis"), [((5,), None), ((), None), ((3, 4), 0), ((4, 3), 1), ((4, 4), 0), ((2, 3, 4), 0), ((3, 2, 1), 1)]
)
def test_int8_keeps_one_scale_per_index_of_the_smaller_of_the_first_two_axes(shape, axis):
    assert channel_axis(shape) == axis
    value = np.arange(1, int(np.prod(shape)) + 1, dtype=np.float32).reshape(shape)
    q, scales = encode_tensor("w", value, "int8")
    peaks = [value.max()] if axis is None else np.abs(value).max(axis=tuple(i for i in range(value.ndim) if i != axis))
    np.testing.assert_allclose(scales, np.asarray(peaks, np.float64) / 127.0)
    assert all(isinstance(s, float) for s in scales)
    np.testing.assert_allclose(decode_tensor(q, "int8", scales), value, atol=max(scales) / 2 + 1e-6)


def test_int8_channels_of_zeros_get_scale_one_and_come_back_as_zeros():
    value = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], np.float32)  # channel axis 0: row 0 is all zeros
    q, scales = encode_tensor("w", value, "int8")
    assert scales == [1.0, 2.0 / 127.0]
    assert q.dtype == np.int8 and q[1].tolist() == [64, -127, 32]  # rint(1 / (2/127)) = 64 (63.5 to even)
    assert decode_tensor(q, "int8", scales)[0].tolist() == [0.0, 0.0, 0.0]
    empty_q, empty_scales = encode_tensor("e", np.zeros((0,), np.float32), "int8")
    assert empty_scales == [1.0] and empty_q.shape == (0,)
    assert encode_tensor("s", np.zeros((1,), np.float32), "int8")[1] == [1.0]  # one zero value: no division by zero


def test_a_tensor_is_sent_as_float32_whatever_its_dtype():
    value = np.array([[1.0, -2.5], [3.25, 0.0]], np.float64)
    for mode in ("fp16", "bf16", "int8"):
        wire, scales = encode_tensor("w", value, mode)
        assert wire.shape == value.shape, mode
        np.testing.assert_allclose(decode_tensor(wire, mode, scales), value, atol=0.02)


def test_float16s_largest_value_is_sent_and_a_larger_one_refused():
    assert encode_tensor("edge", np.array([65504.0, -65504.0], np.float32), "fp16")[0].tolist() == [65504.0, -65504.0]
    with pytest.raises(ValueError, match=r"^tensor huge: values beyond the float16 range; use transport bf16 or fp32$"):
        encode_tensor("huge", np.array([70000.0], np.float32), "fp16")


def test_errors_name_the_tensor_the_count_and_the_mode():
    with pytest.raises(ValueError, match=r"^tensor lora_a: 2 non-finite value\(s\); refusing to send it$"):
        encode_weights({"ok": np.ones(2, np.float32), "lora_a": np.array([np.nan, 1.0, np.inf], np.float32)}, "fp16")
    with pytest.raises(ValueError, match=r"^transport mode 'int4' is unknown; choose one of \("):
        encode_tensor("w", np.ones(2, np.float32), "int4")
    with pytest.raises(ValueError, match=r"^transport mode 'int4' is unknown; choose one of \("):
        decode_tensor(np.ones(2, np.float32), "int4")
    with pytest.raises(ValueError, match=r"^int8 tensor of shape \(2, 3\): 3 scale\(s\), expected 2$"):
        decode_tensor(np.ones((2, 3), np.int8), "int8", [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"^action must be 'encode' or 'decode', got 'send'$"):
        TransportCodec("fp16", "send")


def test_a_payload_without_int8_scales_decodes_and_fp32_passes_through_unchanged():
    weights = {"w": np.array([1.5, -2.0], np.float32)}
    wire, meta = encode_weights(weights, "fp16")
    assert meta == {"mode": "fp16", "scales": {}}
    assert decode_weights(wire, {"mode": "fp16"})["w"].tolist() == [1.5, -2.0]
    task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    assert TransportCodec("fp32", "encode").process(task, FLContext()) is task


def test_only_weights_and_weight_differences_are_converted():
    metrics = DXO(DataKind.METRICS, data={"dice": np.array([0.5], np.float32)}).to_shareable()
    out = from_shareable(TransportCodec("fp16", "encode").process(metrics, FLContext()))
    assert out.data["dice"].dtype == np.float32
    diff = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(2, np.float32)}).to_shareable()
    assert from_shareable(TransportCodec("fp16", "encode").process(diff, FLContext())).data["w"].dtype == np.float16


@pytest.mark.parametrize("sent_meta", [None, {"mode": "bf16"}])
def test_a_payload_sent_another_way_is_refused_naming_both_modes(sent_meta):
    meta = {} if sent_meta is None else {CODEC_META_KEY: sent_meta}
    payload = DXO(DataKind.WEIGHTS, data={"w": np.ones(2, np.float16)}, meta=meta).to_shareable()
    expected = "None" if sent_meta is None else "'bf16'"
    with pytest.raises(ValueError, match=rf"^payload transport {expected} differs from this side's 'fp16'; set the same"):
        TransportCodec("fp16", "decode").process(payload, FLContext())
