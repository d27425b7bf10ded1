"""The reference recipe's learning-rate schedule over the whole federation: linear warm-up, then poly decay."""

from __future__ import annotations


def warmup_poly_factor(step: int, warmup_steps: int, total_steps: int, power: float = 7.0) -> float:
    """Multiplier of the base lr at global ``step`` (0-based) of ``total_steps``.

    ``(step + 1) / warmup_steps`` during warm-up, reaching 1 at the last warm-up step; then
    ``(1 - (step - warmup_steps) / (total_steps - warmup_steps)) ** power``, which starts at 1
    where warm-up ends, so the curve has no jump (the recipe: 250 warm-up steps, power 7).
    Never below 0.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / decay_steps) ** power


def federation_steps(current_round: int, num_rounds: int, steps_per_round: int) -> tuple[int, int]:
    """(first global step of ``current_round``, total steps of the federation) for a site.

    The global step follows from the round the server sends, not from a counter of the site's
    process, so the schedule is the same through a server restart, a resumed job and a site
    that rejoins.
    """
    return current_round * steps_per_round, num_rounds * steps_per_round
