"""The server's check of each site's update before it may enter the aggregate.

One diverged or malicious site must not poison the global model: an update enters only if it
holds exactly the global model's tensors (names, shapes), in float32, with every value finite,
and a positive finite weight (its number of local steps). Where the aggregation takes them, the
LoRA pairs of a site at a lower rank (``site_ranks``) have that rank: A (r, in), B (out, r), r at
most the global model's.
"""

from __future__ import annotations

import numbers

import numpy as np

from flap_sam.model.lora import factor_shape_at_rank, payload_rank


def contribution_problem(weights: object, steps: object, reference: dict[str, np.ndarray], lower_ranks: str | None = None) -> str | None:
    """Why a site's update may not be aggregated, in one line; None when it may.

    Args:
        weights: the update as decoded on the server, ``{name: array}``.
        steps: its aggregation weight (``NUM_STEPS_CURRENT_ROUND``).
        reference: the current global model, ``{name: array}``: the names and shapes to match.
        lower_ranks: None when the aggregation takes LoRA pairs of a lower rank than the global model's,
            else why it does not (said when a site sends them).
    """
    if not isinstance(steps, numbers.Real) or isinstance(steps, bool) or not np.isfinite(float(steps)) or steps <= 0:
        return f"its weight (local steps) is {steps!r}, not a positive number"
    if not isinstance(weights, dict) or not weights:
        return "it holds no tensors"
    missing, extra = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
    if missing or extra:
        return f"its tensors differ from the global model's (missing {missing[:3]}, unexpected {extra[:3]})"
    try:
        rank, global_rank = payload_rank(weights), payload_rank(reference)
    except ValueError as e:
        return str(e)
    if rank is not None and global_rank is not None and rank != global_rank:
        if rank > global_rank:
            return f"its LoRA rank {rank} is above the global model's {global_rank}"
        if lower_ranks is not None:
            return f"its LoRA rank is {rank}, the global model's {global_rank}: {lower_ranks}"
    for name, value in weights.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return f"tensor {name} is {getattr(value, 'dtype', type(value).__name__)}, not float32"
        expected = np.shape(reference[name])
        if value.shape != expected and value.shape != factor_shape_at_rank(name, expected, rank):
            return f"tensor {name} has shape {value.shape}, the global model's is {expected}"
        finite = np.isfinite(value)
        if not finite.all():
            return f"tensor {name} holds {int((~finite).sum())} non-finite value(s)"
    return None
