"""Round-trip error of each transport mode against fp32, on the adapter a site really sends."""

from __future__ import annotations

import numpy as np

from flap_sam.federated.transport import decode_tensor, encode_tensor
from flap_sam.federated.weights import export_weights
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.model.presets import exchanged_names


def built_adapter(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The exchanged tensors of the model every party builds (random SAM weights, LoRA B = 0)."""
    model = build_model(spec)
    return export_weights(model, exchanged_names(model, spec.preset_obj))


def _per_tensor_int8(value: np.ndarray) -> np.ndarray:
    """The earlier int8 codec (one scale per tensor), for comparison only."""
    peak = float(np.abs(value).max()) if value.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(value / scale), -127, 127).astype(np.float32) * np.float32(scale)


def round_trip_errors(payload: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per mode: ``rel_rms`` (‖x̂ − x‖ / ‖x‖ over the whole payload), ``worst_tensor_rel_rms`` and ``max_abs``."""
    def round_trip(name: str, value: np.ndarray, mode: str) -> np.ndarray:
        wire, scales = encode_tensor(name, value, mode)
        return decode_tensor(wire, mode, scales)

    restored = {mode: {name: round_trip(name, value, mode) for name, value in payload.items()} for mode in ("fp16", "bf16", "int8")}
    restored["int8 per-tensor"] = {name: _per_tensor_int8(value) for name, value in payload.items()}
    total = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in payload.values()))
    errors = {}
    for mode, back in restored.items():
        diffs = {name: back[name].astype(np.float64) - payload[name] for name in payload}
        per_tensor = [np.linalg.norm(d) / max(np.linalg.norm(payload[n]), 1e-30) for n, d in diffs.items() if np.abs(payload[n]).max() > 0]
        errors[mode] = {
            "rel_rms": float(np.sqrt(sum(float((d ** 2).sum()) for d in diffs.values())) / total),
            "worst_tensor_rel_rms": float(max(per_tensor)),
            "max_abs": float(max(np.abs(d).max() for d in diffs.values())),
        }
    return errors
