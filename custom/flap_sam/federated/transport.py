"""Compressed transport of exchanged tensors, both directions: fp32 (off), fp16, bf16, int8.

The same ``TransportCodec`` filter is configured four times from one ``transport`` setting:
the server encodes the global model it sends and decodes what sites return; each site
decodes what it receives and encodes what it returns (after the preset filter). Decoded
tensors are float32 again, the dtype training and aggregation use.

Modes (numpy only, so they run on any CPU and GPU machine):

* ``fp16``: IEEE half; relative error <= 2**-11, values beyond +-65504 saturate (checked).
* ``bf16``: the upper 16 bits of float32 with round-to-nearest-even, sent as ``uint16``;
  relative error <= 2**-8, full float32 range.
* ``int8``: symmetric per-tensor quantisation, ``q = round(x / s)`` with ``s = max|x| / 127``;
  absolute error <= s / 2. The scales travel in the DXO meta (plain floats).

NVFlare's own ``ModelQuantizer`` needs bitsandbytes and a GPU for 8-bit, hence this filter.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

MODES = ("fp32", "fp16", "bf16", "int8")
CODEC_META_KEY = "flap_sam_transport"  # DXO meta: {"mode": str, "scales": {name: float}} while encoded
_FP16_MAX = float(np.finfo(np.float16).max)


def encode_tensor(name: str, value: np.ndarray, mode: str) -> tuple[np.ndarray, float | None]:
    """One float32 tensor -> (wire array, int8 scale or None)."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    if mode == "fp16":
        if value.size and float(np.abs(value).max()) > _FP16_MAX:
            raise ValueError(f"tensor {name}: values beyond the float16 range; use transport bf16 or fp32")
        return value.astype(np.float16), None
    if mode == "bf16":
        bits = value.view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even on the dropped 16 bits
        return (rounded >> 16).astype(np.uint16), None
    if mode == "int8":
        peak = float(np.abs(value).max()) if value.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        return np.clip(np.rint(value / scale), -127, 127).astype(np.int8), scale
    raise ValueError(f"transport mode '{mode}' is unknown; choose one of {MODES}")


def decode_tensor(value: np.ndarray, mode: str, scale: float | None = None) -> np.ndarray:
    """A wire array -> float32."""
    if mode == "fp16":
        return value.astype(np.float32)
    if mode == "bf16":
        return (value.astype(np.uint32) << 16).view(np.float32)
    if mode == "int8":
        return value.astype(np.float32) * np.float32(scale)
    raise ValueError(f"transport mode '{mode}' is unknown; choose one of {MODES}")


def encode_weights(weights: dict[str, np.ndarray], mode: str) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a payload -> (wire arrays, meta entry)."""
    encoded, scales = {}, {}
    for name, value in weights.items():
        encoded[name], scale = encode_tensor(name, value, mode)
        if scale is not None:
            scales[name] = scale
    return encoded, {"mode": mode, "scales": scales}


def decode_weights(weights: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    mode, scales = meta["mode"], meta.get("scales", {})
    return {name: decode_tensor(value, mode, scales.get(name)) for name, value in weights.items()}


class TransportCodec(Filter):
    """Encode or decode the WEIGHTS of a task payload; other payloads pass unchanged.

    Args:
        mode: ``fp32`` (pass-through), ``fp16``, ``bf16`` or ``int8`` (the job's ``transport`` setting).
        action: ``encode`` (before sending) or ``decode`` (after receiving).
    """

    def __init__(self, mode: str = "fp32", action: str = "encode") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"transport '{mode}' is unknown; choose one of {MODES}")
        if action not in ("encode", "decode"):
            raise ValueError(f"action must be 'encode' or 'decode', got '{action}'")
        self.mode, self.action = mode, action

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self.mode == "fp32":
            return shareable
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable  # not a DXO (an error reply): nothing to convert
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) or not dxo.data:
            return shareable
        meta = dict(dxo.meta or {})
        if self.action == "encode":
            dxo.data, meta[CODEC_META_KEY] = encode_weights(dxo.data, self.mode)
        else:
            codec = meta.pop(CODEC_META_KEY, None)
            if codec is None or codec.get("mode") != self.mode:
                raise ValueError(f"payload transport {codec and codec.get('mode')!r} differs from this side's '{self.mode}'; "
                                 "set the same 'transport' on server and sites")
            dxo.data = decode_weights(dxo.data, codec)
        dxo.meta = meta
        # A new Shareable: on the server the same task data object goes to every site.
        out = Shareable()
        out.update(shareable)
        return dxo.update_shareable(out)
