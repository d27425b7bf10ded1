"""One site's round payload, measured: its wire bytes per transport (serialised the way FLARE sends it),
its round-trip error per transport against fp32, and the server's time to aggregate N of them."""

from __future__ import annotations

import time

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.utils.decomposers import flare_decomposers
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from nvflare.app_common.decomposers import common_decomposers

from flap_sam.federated.aggregation_rules import aggregate_exact
from flap_sam.federated.traffic import serialized_size
from flap_sam.federated.transport import TransportCodec, decode_tensor, encode_tensor
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, export_weights
from flap_sam.model.presets import exchanged_names

flare_decomposers.register()
common_decomposers.register()


# ---- payloads ----


def random_payload(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The preset's exchanged tensors (names and shapes from the schema) filled with N(0, 0.02) float32."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.02, shape).astype(np.float32) for name, shape in exchange_schema(spec).items()}


def wire_bytes(payload: dict[str, np.ndarray], mode: str) -> int:
    """Bytes of the site's train result after the transport codec, as FOBS serialises it."""
    result = DXO(DataKind.WEIGHTS, data=payload, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1}).to_shareable()
    return serialized_size(TransportCodec(mode, "encode").process(result, FLContext()))


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
            "rel_rms": float(np.sqrt(sum(float((d**2).sum()) for d in diffs.values())) / total),
            "worst_tensor_rel_rms": float(max(per_tensor)),
            "max_abs": float(max(np.abs(d).max() for d in diffs.values())),
        }
    return errors


# ---- server aggregation time for N sites: NVFlare's weighted averaging and exact LoRA aggregation ----


def time_averaging(payloads: list[dict[str, np.ndarray]]) -> float:
    """Seconds for NVFlare's ``WeightedAggregationHelper`` (what the ``average`` setting runs) over all payloads."""
    start = time.perf_counter()
    helper = WeightedAggregationHelper()
    for i, payload in enumerate(payloads):
        helper.add(payload, weight=1.0, contributor_name=f"site-{i + 1}", contribution_round=0)
    helper.get_result()
    return time.perf_counter() - start


def time_exact_lora(payloads: list[dict[str, np.ndarray]]) -> float:
    start = time.perf_counter()
    aggregate_exact([(1.0, p) for p in payloads])
    return time.perf_counter() - start


# ---- how the server's aggregation grows with the number of sites ----

AGGREGATION_RULES = ("average", "lora_exact", "median", "trimmed_mean", "fedseca", "lora_exact_mixed_ranks")
MIXED_RANKS = (4, 8, 16, 32)  # site_ranks cycled over the sites for lora_exact_mixed_ranks (capped at the job's rank)


def time_rule(rule: str, payloads: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]) -> float:
    """Seconds for one aggregation ``rule`` (``AGGREGATION_RULES``) of ``payloads``, sites that started from ``reference``."""
    from flap_sam.federated.aggregation_rules import ROBUST_AGGREGATIONS, aggregate_robust
    from flap_sam.model.lora import at_rank

    if rule == "average":
        return time_averaging(payloads)
    if rule == "lora_exact":
        return time_exact_lora(payloads)
    if rule == "lora_exact_mixed_ranks":
        mixed = [at_rank(p, MIXED_RANKS[i % len(MIXED_RANKS)]) for i, p in enumerate(payloads)]
        start = time.perf_counter()
        aggregate_exact([(1.0, p) for p in mixed], reference)
        return time.perf_counter() - start
    if rule in ROBUST_AGGREGATIONS:
        start = time.perf_counter()
        aggregate_robust(rule, payloads, reference)
        return time.perf_counter() - start
    raise ValueError(f"rule {rule!r} is not one of {list(AGGREGATION_RULES)}")


def aggregation_growth(spec: ModelSpec, site_counts: list[int]) -> list[dict]:
    """Per site count: each rule's seconds and the bytes the server receives in a round (fp32 on the wire).

    The payloads are the preset's exchanged tensors filled with noise (the arithmetic does not depend on
    the values); ``reference`` is the global model the sites started from.
    """
    reference = random_payload(spec, seed=10_000)
    per_site = wire_bytes(reference, "fp32")
    rows = []
    for n in site_counts:
        payloads = [random_payload(spec, seed=i) for i in range(n)]
        rows.append(
            {"sites": n, "received_bytes": n * per_site, **{rule: time_rule(rule, payloads, reference) for rule in AGGREGATION_RULES}}
        )
        del payloads
    return rows


def growth_exponent(rows: list[dict], key: str) -> float | None:
    """The slope of log(``key``) against log(sites): 1 is linear growth, 2 quadratic (None below two counts)."""
    points = [(np.log(r["sites"]), np.log(max(r[key], 1e-9))) for r in rows]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])
