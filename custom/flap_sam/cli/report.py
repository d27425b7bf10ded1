"""``flap-sam report RUN [RUN ...] --out DIR``: report.md and PNG figures from runs, sweeps and baselines.

A RUN is a simulator workspace, a POC or production job result, a sweep's folder, or a
baseline folder of ``flap-sam train`` (see ``flap_sam.evaluation.report``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="simulator workspaces, job results, sweep folders, baseline folders")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the figures")


def run(args: argparse.Namespace) -> int:
    from flap_sam.evaluation.report import collect, write_report

    runs, baselines = collect(args.runs)
    path = write_report(runs, baselines, args.out)
    print(f"wrote {path}: {len(runs)} federated run(s), {len(baselines)} baseline(s)")
    for r in runs:
        print(f"  {r.name}: {r.label}, {r.total_bytes:,} bytes, {r.test_dice_summary}")
    for b in baselines:
        print(f"  {b.name}: {b.kind} baseline of {', '.join(b.sites)}, test Dice {b.test_dice:.4f}")
    return 0
