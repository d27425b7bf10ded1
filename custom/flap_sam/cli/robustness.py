"""``flap-sam robustness JOB --aggregations A... --attacks K... --byzantine N --sites M --out DIR``: what an attacker does.

Runs one simulator federation of JOB per aggregation and attack (``none`` always included, as
the reference), the last N of M sites Byzantine, into ``DIR/runs/<aggregation>-<attack>/``; a
run that finished (its ``DONE`` file) is not run again, so a stopped matrix goes on where it
stopped. Then writes ``DIR/robustness.json``, ``DIR/robustness.md`` and ``DIR/robustness.png``
(``flap_sam.evaluation.robustness``). Attacks run in the simulator only (``flap_sam.measurement.attacks``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess

from flap_sam.files import simulator_job, write_text

DONE = "DONE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder or the name of a shipped job")
    parser.add_argument("--aggregations", nargs="+", required=True, help="values of the aggregation setting (docs/settings.md)")
    parser.add_argument("--attacks", nargs="+", required=True, help="values of the attack setting; none is always run too")
    parser.add_argument("--byzantine", type=int, default=1, help="Byzantine sites: the last N (default 1)")
    parser.add_argument("--sites", type=int, default=4, help="simulated sites (default 4)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings for every run, as flap-sam job")
    parser.add_argument("--run-timeout", type=float, default=0, help="seconds a run may take before it is stopped (0: no limit)")


def run(args: argparse.Namespace) -> int:
    from flap_sam.evaluation.robustness import read_robustness_run, write_robustness
    from flap_sam.jobs.simulator import output_tail, run_simulator
    from flap_sam.jobs.writer import parse_settings, source_job, write_job
    from flap_sam.training.schema import choices_of

    for flag, given, known in (
        ("--aggregations", args.aggregations, choices_of("aggregation")),
        ("--attacks", args.attacks, choices_of("attack")),
    ):
        unknown = [v for v in given if v not in known]
        if unknown:  # before the first run, not hours into the matrix
            raise ValueError(f"{flag} {' '.join(unknown)}: not a value of the setting; choose from {', '.join(known)}")
    if not 0 < args.byzantine < args.sites:
        raise ValueError(f"--byzantine {args.byzantine}: needs at least one honest and one Byzantine site of --sites {args.sites}")
    source = source_job(args.job)
    common = {**parse_settings(args.set), "min_clients": args.sites}
    byzantine = [f"site-{i}" for i in range(args.sites - args.byzantine + 1, args.sites + 1)]
    attacks = ["none", *(a for a in dict.fromkeys(args.attacks) if a != "none")]
    runs = []
    for aggregation in dict.fromkeys(args.aggregations):
        for attack in attacks:
            name = f"{aggregation}-{attack}"
            workspace = os.path.join(args.out, "runs", name)
            attackers = byzantine if attack != "none" else []
            if not os.path.isfile(os.path.join(workspace, DONE)):
                job = os.path.join(args.out, "jobs", name)
                shutil.rmtree(job, ignore_errors=True)
                shutil.rmtree(workspace, ignore_errors=True)
                write_job(source, job, {**common, "aggregation": aggregation, "attack": attack, "attack_sites": ",".join(attackers)})
                print(f"{name}: running in the simulator ({args.sites} sites, Byzantine: {', '.join(attackers) or 'none'}) ...", flush=True)
                try:
                    result = run_simulator(job, workspace, args.sites, timeout=args.run_timeout or None)
                except subprocess.TimeoutExpired:
                    raise ValueError(
                        f"robustness run {name}: no result after {args.run_timeout:.0f} s; its log is in {workspace}"
                    ) from None
                if result.returncode != 0:
                    raise ValueError(f"robustness run {name} failed; its log is in {workspace}: {output_tail(result)}")
                write_text(os.path.join(workspace, DONE), "finished\n")
            runs.append(read_robustness_run(simulator_job(workspace), aggregation, attack, attackers, args.sites))
            print(f"{name}: final test Dice of the honest sites {runs[-1].test_dice:.4f}", flush=True)
    command = "flap-sam robustness " + shlex.join(
        [
            args.job,
            "--aggregations",
            *args.aggregations,
            "--attacks",
            *args.attacks,
            "--byzantine",
            str(args.byzantine),
            "--sites",
            str(args.sites),
            "--out",
            args.out,
            *(["--set", *args.set] if args.set else []),
        ]
    )
    print(f"wrote {write_robustness(runs, args.out, command)}")
    return 0
