"""The learning-rate schedule of a federation: warm-up then polynomial decay over every round's steps.

Pure arithmetic (no torch, no FLARE), like ``flap_sam.federated.aggregation_rules``: a site's optimizer
(``LocalTrainer``) takes its factor at each global step, and the global step follows from the round the
server sends (``federation_steps``), so one smooth curve spans the federation, through restarts.
"""

from __future__ import annotations

# Warm-up never takes more than this share of the federation's steps: a short budget (4 rounds of 20
# steps) must not sit in the paper's 250-step warm-up; the paper's own federations (25 local epochs of
# about 40 steps and more) keep their 250 steps.
MAX_WARMUP_SHARE = 0.25


def fitted_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up a federation of ``total_steps`` runs: ``warmup_steps``, at most ``MAX_WARMUP_SHARE`` of the steps."""
    return min(warmup_steps, int(MAX_WARMUP_SHARE * total_steps))


def warmup_poly_factor(step: int, warmup_steps: int, total_steps: int, power: float = 7.0) -> float:
    """Multiplier of the base lr at global ``step`` (0-based) of ``total_steps``.

    With ``w = fitted_warmup(warmup_steps, total_steps)``: ``(step + 1) / w`` during warm-up, reaching 1
    at the last warm-up step; then ``(1 - (step - w) / (total_steps - w)) ** power``, which starts at 1
    where warm-up ends, so the curve has no jump and reaches 0 at the federation's last step, whatever its
    length (the paper: 250 warm-up steps, power 7). Never below 0.
    """
    warmup = fitted_warmup(warmup_steps, total_steps)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    return max(0.0, 1.0 - (step - warmup) / decay_steps) ** power


def federation_steps(current_round: int, num_rounds: int, steps_per_round: int) -> tuple[int, int]:
    """(first global step of ``current_round``, total steps of the federation) for a site.

    The global step follows from the round the server sends, not from a counter of the site's
    process, so the schedule is the same through a server restart, a resumed job and a site
    that rejoins.
    """
    return current_round * steps_per_round, num_rounds * steps_per_round
