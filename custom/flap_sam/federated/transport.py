"""Compressed transport of exchanged tensors, both directions: fp32 (off), fp16, bf16, int8.

The same ``TransportCodec`` filter is configured four times from one ``transport`` setting:
the server encodes the global model it sends and decodes what sites return; each site
decodes what it receives and encodes what it returns (after the preset filter). Decoded
tensors are float32 again, the dtype training and aggregation use.

Modes (numpy only, so they run on any CPU and GPU machine):

* ``fp16``: IEEE half; relative error <= 2**-11, values beyond +-65504 saturate (checked).
* ``bf16``: the upper 16 bits of float32 with round-to-nearest-even, sent as ``uint16``;
  relative error <= 2**-8, full float32 range.
* ``int8``: symmetric per-channel quantisation, ``q = round(x / s_c)`` with
  ``s_c = max|x_c| / 127`` for each channel c (one slice along the smaller of the first two
  axes, e.g. the rank axis of a LoRA factor; a 1-D tensor is one channel); absolute error
  <= s_c / 2, so a channel of small values keeps its precision next to a channel of large
  ones. The scales travel in the DXO meta (lists of plain floats).

Only finite tensors are encoded: a NaN or Inf refuses to leave (int8 would otherwise turn it
into 0 or the largest code without a trace). What the server decodes is checked again, with
every other property of a contribution, by the aggregator (``flap_sam.federated.contributions``).

NVFlare's own ``ModelQuantizer`` needs bitsandbytes and a GPU for 8-bit, hence this filter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flap_sam.training.schema import checked_value, choices_of, package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()

MODES = choices_of("transport")  # what encode_tensor / decode_tensor implement
CODEC_META_KEY = "flap_sam_transport"  # DXO meta: {"mode": str, "scales": {name: float}} while encoded
_FP16_MAX = float(np.finfo(np.float16).max)


def channel_axis(shape: tuple[int, ...]) -> int | None:
    """The axis int8 keeps one scale per index of: the smaller of the first two (None: one scale per tensor)."""
    if len(shape) < 2:
        return None
    return 0 if shape[0] <= shape[1] else 1


def _channel_peaks(value: np.ndarray) -> np.ndarray:
    """max |x| per channel (see ``channel_axis``), shape (channels,); (1,) for a 1-D or empty tensor."""
    axis = channel_axis(value.shape)
    if axis is None or value.size == 0:
        return np.array([float(np.abs(value).max()) if value.size else 0.0], dtype=np.float64)
    other = tuple(i for i in range(value.ndim) if i != axis)
    return np.abs(value).max(axis=other).astype(np.float64)


def _broadcast_scales(scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    axis = channel_axis(shape)
    if axis is None:
        return scales.reshape(())
    view = [1] * len(shape)
    view[axis] = -1
    return scales.reshape(view)


def encode_tensor(name: str, value: np.ndarray, mode: str) -> tuple[np.ndarray, list[float] | None]:
    """One float32 tensor -> (wire array, int8 scales per channel or None).

    Raises:
        ValueError: the tensor holds NaN or Inf (never sent), or exceeds float16's range in ``fp16``.
    """
    value = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(value).all():
        raise ValueError(f"tensor {name}: {int((~np.isfinite(value)).sum())} non-finite value(s); refusing to send it")
    if mode == "fp16":
        if value.size and float(np.abs(value).max()) > _FP16_MAX:
            raise ValueError(f"tensor {name}: values beyond the float16 range; use transport bf16 or fp32")
        return value.astype(np.float16), None
    if mode == "bf16":
        bits = value.view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even on the dropped 16 bits
        return (rounded >> 16).astype(np.uint16), None
    if mode == "int8":
        peaks = _channel_peaks(value)
        scales = np.where(peaks > 0, peaks / 127.0, 1.0)
        q = np.clip(np.rint(value / _broadcast_scales(scales, value.shape)), -127, 127).astype(np.int8)
        return q, [float(x) for x in scales]
    raise ValueError(f"transport mode '{mode}' is unknown; choose one of {MODES}")


def decode_tensor(value: np.ndarray, mode: str, scales: list[float] | float | None = None) -> np.ndarray:
    """A wire array -> float32 (NaN/Inf that arrive stay visible to the aggregator's checks)."""
    if mode == "fp16":
        return value.astype(np.float32)
    if mode == "bf16":
        return (value.astype(np.uint32) << 16).view(np.float32)
    if mode == "int8":
        per_channel = np.atleast_1d(np.asarray(scales, dtype=np.float32))
        axis = channel_axis(value.shape)
        expected = 1 if axis is None else value.shape[axis]
        if per_channel.shape != (expected,):
            raise ValueError(f"int8 tensor of shape {value.shape}: {per_channel.size} scale(s), expected {expected}")
        return value.astype(np.float32) * _broadcast_scales(per_channel, value.shape)
    raise ValueError(f"transport mode '{mode}' is unknown; choose one of {MODES}")


def encode_weights(weights: dict[str, np.ndarray], mode: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All tensors of a payload -> (wire arrays, meta entry)."""
    encoded, scales = {}, {}
    for name, value in weights.items():
        encoded[name], scale = encode_tensor(name, value, mode)
        if scale is not None:
            scales[name] = scale
    return encoded, {"mode": mode, "scales": scales}


def decode_weights(weights: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    mode, scales = meta["mode"], meta.get("scales", {})
    return {name: decode_tensor(value, mode, scales.get(name)) for name, value in weights.items()}


class TransportCodec(DXOFilter):
    """Encode or decode the WEIGHTS (or WEIGHT_DIFF) of a task payload; other payloads pass unchanged.

    FLARE's ``DXOFilter`` unwraps the DXO, skips other data kinds and records the filter in the
    DXO's filter history; this class only converts the tensors.

    Args:
        mode: ``fp32`` (pass-through), ``fp16``, ``bf16`` or ``int8`` (the job's ``transport`` setting).
        action: ``encode`` (before sending) or ``decode`` (after receiving).
    """

    def __init__(self, mode: str = DEFAULT["transport"], action: str = "encode") -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=None)
        checked_value("transport", mode)
        if action not in ("encode", "decode"):
            raise ValueError(f"action must be 'encode' or 'decode', got '{action}'")
        self.mode, self.action = mode, action

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self.mode == "fp32":
            return shareable
        # A new Shareable: DXOFilter writes its result into the one it is given, and on the server the
        # same task data object goes to every site.
        copy = Shareable()
        copy.update(shareable)
        return super().process(copy, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        meta = dict(dxo.meta or {})
        if self.action == "encode":
            dxo.data, meta[CODEC_META_KEY] = encode_weights(dxo.data, self.mode)
        else:
            codec = meta.pop(CODEC_META_KEY, None)
            if codec is None or codec.get("mode") != self.mode:
                raise ValueError(
                    f"payload transport {codec and codec.get('mode')!r} differs from this side's '{self.mode}'; "
                    "set the same 'transport' on server and sites"
                )
            dxo.data = decode_weights(dxo.data, codec)
        dxo.meta = meta
        return dxo
