"""``flap-sam sweep JOB --presets flap lora_dec ... --out DIR``: the paper's preset table as one command.

Writes one job per preset (and per transport, with ``--transports``, and per set of LoRA ranks, with
``--ranks``: ``32`` every site at rank 32, ``4,8,32`` site-1 at 4, site-2 at 8, site-3 at 32 of a
rank-32 job, ``site_ranks``) into ``DIR/jobs/`` and runs
each in FLARE's simulator, one after another, into ``DIR/runs/<preset>-<transport>/``. A run
that finished (its ``DONE`` file) is not run again, so a sweep that stopped goes on where it
stopped. Then it writes the report of all runs (and of ``--baselines`` folders) to ``DIR/report/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess


DONE = "DONE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder or the name of a shipped job")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--transports", nargs="+", default=None, help="transport modes to sweep too (default: the job's)")
    parser.add_argument("--ranks", nargs="+", default=None, metavar="R[,R...]",
                        help="LoRA ranks to sweep too: R (every site at R) or one rank per site, site-1 first (site_ranks; "
                             "the job's rank is the largest)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings for every run, as flap-sam job")
    parser.add_argument("--sites", type=int, default=None, help="simulated sites (default: the job's min_clients)")
    parser.add_argument("--baselines", nargs="*", default=[], help="baseline folders (flap-sam train) to put in the report")
    parser.add_argument("--run-timeout", type=float, default=0, help="seconds a run may take before it is stopped (0: no limit)")


def rank_settings(text: str, sites: int) -> tuple[str, dict]:
    """``"32"`` -> ("32", {rank: 32}); ``"4,8,32"`` -> ("4-8-32", {rank: 32, site_ranks: {site-1: 4, site-2: 8}}).

    Raises:
        ValueError: one line when a rank is not a whole number or there are more ranks than sites.
    """
    try:
        ranks = [int(r) for r in text.split(",")]
    except ValueError:
        raise ValueError(f"--ranks {text}: not whole numbers separated by commas") from None
    if len(ranks) > 1 and len(ranks) != sites:
        raise ValueError(f"--ranks {text}: {len(ranks)} ranks for {sites} sites (give one rank, or one per site)")
    top = max(ranks)
    site_ranks = {f"site-{i}": r for i, r in enumerate(ranks, start=1) if r != top}
    return "-".join(map(str, ranks)), {"rank": top, **({"site_ranks": site_ranks} if site_ranks else {})}


def run(args: argparse.Namespace) -> int:
    from flap_sam.evaluation.report import collect, write_report
    from flap_sam.files import write_text
    from flap_sam.jobs.simulator import output_tail, run_simulator
    from flap_sam.jobs.writer import job_settings, parse_settings, source_job, write_job

    source = source_job(args.job)
    common = parse_settings(args.set)
    transports = args.transports or [None]
    sites = args.sites or int(common.get("min_clients", job_settings(source)["min_clients"]))
    rank_sets = [rank_settings(text, sites) for text in args.ranks] if args.ranks else [(None, {})]
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    for preset in args.presets:
        for transport, (ranks, rank_setting) in ((t, r) for t in transports for r in rank_sets):
            settings = {**common, "preset": preset, **({"transport": transport} if transport else {}), **rank_setting}
            name = f"{preset}-{transport or job_settings(source)['transport']}" + (f"-r{ranks}" if ranks else "")
            workspace = os.path.join(args.out, "runs", name)
            if os.path.isfile(os.path.join(workspace, DONE)):
                print(f"{name}: finished before, not run again", flush=True)
                continue
            job = os.path.join(args.out, "jobs", name)
            shutil.rmtree(job, ignore_errors=True)  # a run that stopped midway starts again from its job
            write_job(source, job, settings)
            print(f"{name}: running in the simulator ({sites} sites) ...", flush=True)
            shutil.rmtree(workspace, ignore_errors=True)
            try:
                result = run_simulator(job, workspace, sites, timeout=args.run_timeout or None)
            except subprocess.TimeoutExpired:
                raise ValueError(f"sweep run {name}: no result after {args.run_timeout:.0f} s; its log is in {workspace}") from None
            if result.returncode != 0:
                raise ValueError(f"sweep run {name} failed; its log is in {workspace}: {output_tail(result)}")
            write_text(os.path.join(workspace, DONE), "finished\n")
    runs, baselines = collect([os.path.join(args.out, "runs"), *args.baselines])
    path = write_report(runs, baselines, os.path.join(args.out, "report"))
    print(f"wrote {path}")
    for r in runs:
        print(f"  {r.name}: {r.total_bytes:,} bytes, {r.test_dice_summary}")
    return 0
