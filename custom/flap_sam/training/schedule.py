"""The reference recipe's learning-rate schedule: linear warm-up, then poly decay."""

from __future__ import annotations


def warmup_poly_factor(step: int, warmup_steps: int, total_steps: int, power: float = 7.0) -> float:
    """Multiplier of the base lr at global ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during warm-up, then ``(1 - step / total_steps) ** power``
    (the recipe: warm-up 250 iterations, power 7); never below 0.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power
