"""Server aggregation time for N sites: NVFlare's weighted averaging and exact LoRA aggregation."""

from __future__ import annotations

import time

import numpy as np
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

from flap_sam.federated.lora_aggregation import aggregate_exact


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
