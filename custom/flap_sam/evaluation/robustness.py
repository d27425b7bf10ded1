"""The robustness matrix: final test Dice of the honest sites per aggregation and attack (``flap-sam robustness``).

Reads each run's own files (as ``flap_sam.evaluation.report`` does) and writes ``robustness.json``
(one entry per run), ``robustness.md`` (aggregations as rows, attacks as columns, each robust
aggregation's difference to FedSECA) and ``robustness.png``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from flap_sam.evaluation.report import read_run
from flap_sam.files import markdown_table, write_json, write_text


@dataclass
class RobustnessRun:
    """One federation of the matrix: Dice of the honest sites only (a Byzantine site's own score says nothing)."""

    aggregation: str
    attack: str
    byzantine: list[str]
    sites: int
    test_dice: float  # the final adapter's cross-site test Dice, mean over honest sites
    val_dice: list[float]  # per round, the global model's validation Dice, mean over honest sites


def read_robustness_run(job_dir: str, aggregation: str, attack: str, byzantine: list[str], sites: int) -> RobustnessRun:
    run = read_run(job_dir, f"{aggregation}-{attack}")
    honest = [s for s in sorted(run.val_dice) if s not in byzantine]
    rounds = sorted({r for s in honest for r in run.val_dice[s]})
    val = [sum(run.val_dice[s].get(r, math.nan) for s in honest) / len(honest) for r in rounds]
    tests = [d for s, d in run.test_dice_per_site.items() if s not in byzantine]
    return RobustnessRun(aggregation, attack, byzantine, sites, sum(tests) / len(tests) if tests else math.nan, val)


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def robustness_table(runs: list[RobustnessRun]) -> str:
    """Aggregations as rows, attacks as columns, the final test Dice (the best of each column in bold)."""
    aggregations = list(dict.fromkeys(r.aggregation for r in runs))
    attacks = list(dict.fromkeys(r.attack for r in runs))
    dice = {(r.aggregation, r.attack): r.test_dice for r in runs}
    best = {k: max((dice.get((a, k), -1.0) for a in aggregations), default=-1.0) for k in attacks}
    rows = [
        [a, *(f"**{_cell(dice.get((a, k)))}**" if dice.get((a, k)) == best[k] else _cell(dice.get((a, k))) for k in attacks)]
        for a in aggregations
    ]
    return markdown_table(["aggregation", *attacks], rows)


def fedseca_comparison(runs: list[RobustnessRun]) -> str:
    """Each other aggregation's Dice minus FedSECA's, per attack (positive: it did better than FedSECA)."""
    dice = {(r.aggregation, r.attack): r.test_dice for r in runs}
    attacks = list(dict.fromkeys(r.attack for r in runs))
    others = [a for a in dict.fromkeys(r.aggregation for r in runs) if a != "fedseca"]
    if not others or not any(a == "fedseca" for a, _ in dice):
        return ""
    rows = [
        [a, *(f"{dice[(a, k)] - dice[('fedseca', k)]:+.3f}" if (a, k) in dice and ("fedseca", k) in dice else "-" for k in attacks)]
        for a in others
    ]
    return markdown_table(["minus fedseca", *attacks], rows)


def _plot(runs: list[RobustnessRun], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregations = list(dict.fromkeys(r.aggregation for r in runs))
    attacks = list(dict.fromkeys(r.attack for r in runs))
    dice = {(r.aggregation, r.attack): r.test_dice for r in runs}
    width = 0.8 / max(1, len(aggregations))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(attacks)), 4))
    for i, a in enumerate(aggregations):
        ax.bar([k + i * width for k in range(len(attacks))], [dice.get((a, k), 0.0) for k in attacks], width, label=a)
    ax.set_xticks([k + width * (len(aggregations) - 1) / 2 for k in range(len(attacks))], attacks)
    ax.set(ylabel="final test Dice, honest sites", title="Dice under attack, per aggregation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_robustness(runs: list[RobustnessRun], out: str, command: str) -> str:
    """``robustness.json``, ``robustness.md`` and ``robustness.png`` in ``out``; returns the Markdown's path."""
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "robustness.json"), {"runs": [asdict(r) for r in runs]})
    _plot(runs, os.path.join(out, "robustness.png"))
    byzantine = sorted({s for r in runs for s in r.byzantine})
    lines = [
        "# Robustness: final test Dice of the honest sites",
        "",
        f"`{command}`",
        "",
        (
            f"{runs[0].sites} sites, Byzantine: {', '.join(byzantine) or 'none'}. Each cell is one simulator federation; "
            "the best of each column is bold."
        ),
        "",
        robustness_table(runs),
        "",
    ]
    comparison = fedseca_comparison(runs)
    if comparison:
        lines += ["Each aggregation against FedSECA (its Dice minus FedSECA's; positive: better than FedSECA):", "", comparison, ""]
    lines += ["![Dice under attack](robustness.png)", ""]
    path = os.path.join(out, "robustness.md")
    write_text(path, "\n".join(lines))
    return path
