"""``flap-sam``: dataset preparation, demo data, jobs, baselines, evaluation, inference, reports, benchmarks.

One error rule for every command: a bad input raises ``ValueError`` (or the project's
subclasses ``DataError``, ``CheckpointError``) with one line naming the file or setting and
what is wrong; ``main`` prints it after the command's name and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flap_sam.cli import bench, demo_data, evaluate, infer, job, monitor, params, prepare, report, robustness, scale, simulate, sweep, train

COMMANDS = {
    "prepare": (prepare, "turn a public dataset (KiTS19, IXI-Tiny, prostate MRI) into per-site datalists"),
    "params": (params, "trainable and exchanged parameters and bytes per preset"),
    "demo-data": (demo_data, "write the built-in synthetic demo data"),
    "job": (job, "copy a job with settings changed (preset, data_root, rounds ...)"),
    "simulate": (simulate, "run a job folder in FLARE's simulator with the sites' component allow-list"),
    "evaluate": (evaluate, "per-volume, per-class Dice of a site's test split (CSV + Markdown)"),
    "monitor": (monitor, "submit and follow a job with an admin startup kit (POC or provisioned)"),
    "bench": (bench, "measure wire bytes, step time, memory and aggregation time per preset (prints a table)"),
    "infer": (infer, "segment a NIfTI volume with SAM + a persisted adapter"),
    "train": (train, "local or pooled baseline: the job's recipe on one or several sites' data, without FLARE"),
    "sweep": (sweep, "one simulator run per preset (and transport) of a job, resumable, then the report"),
    "scale": (scale, "one simulator federation per site count: the server's memory, round and aggregation time, bytes"),
    "robustness": (robustness, "one simulator run per aggregation and attack (Byzantine sites), then the Dice table"),
    "report": (report, "report.md and figures (Dice per round, bytes, Dice against bytes) from runs and baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flap-sam", description="Federated LoRA fine-tuning of SAM on 3D medical images")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0].run(args)
    except ValueError as e:  # DataError, CheckpointError and every setting check are ValueErrors
        print(f"flap-sam {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
