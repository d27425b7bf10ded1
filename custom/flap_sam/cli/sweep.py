"""``flap-sam sweep JOB --presets flap lora_dec ... --out DIR``: the paper's preset table as one command.

Writes one job per preset (and per model, with ``--models``: ``--models lite_medsam unet`` runs each
preset on LiteMedSAM and the MONAI U-Net baseline, each model with the presets that apply to it, so the
U-Net runs ``fft`` only; and per transport, with ``--transports``, and per set of LoRA ranks, with
``--ranks``: ``32`` every site at rank 32, ``4,8,32`` site-1 at 4, site-2 at 8, site-3 at 32 of a
rank-32 job, ``site_ranks``) into ``DIR/jobs/`` and runs
each in FLARE's simulator, one after another, into ``DIR/runs/<preset>-<transport>/``. A run
that finished (its ``DONE`` file) is not run again, so a sweep that stopped goes on where it
stopped. Each run's job folder keeps what it cost (``run_cost.json``: wall and CPU seconds, the largest
process's peak memory) and, with ``--held-out DATALIST``, its final model's Dice on a site that never
trained (``held_out/dice.csv``, ``flap-sam evaluate``). ``--train-volumes 1 2`` sweeps the labelled volumes
each site trains on (``train_volumes``). Then it writes the report of all runs (and of ``--baselines``
folders) to ``DIR/report/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from typing import Any

DONE = "DONE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder or the name of a shipped job")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL_TYPE",
        help="model types to sweep too, e.g. lite_medsam unet (the U-Net baseline); each runs the presets "
        "that apply to it (default: the job's model_type)",
    )
    parser.add_argument("--transports", nargs="+", default=None, help="transport modes to sweep too (default: the job's)")
    parser.add_argument(
        "--ranks",
        nargs="+",
        default=None,
        metavar="R[,R...]",
        help="LoRA ranks to sweep too: R (every site at R) or one rank per site, site-1 first (site_ranks; the job's rank is the largest)",
    )
    parser.add_argument(
        "--train-volumes",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="labelled training volumes per site to sweep too (train_volumes; 0 = all)",
    )
    parser.add_argument(
        "--held-out",
        default=None,
        metavar="DATALIST",
        help="score each run's final model on this datalist's test split, a site that never trained "
        "(the demo's: <demo root>/<dataset>-.../heldout/datalist.json, flap-sam demo-data --held-out)",
    )
    parser.add_argument(
        "--tag", default="", help="a prefix of this sweep's run names, e.g. equal-cpu (runs of other settings in one --out)"
    )
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
    from flap_sam.cli.main import main as flap_sam
    from flap_sam.evaluation.report import collect, write_report
    from flap_sam.files import GLOBAL_MODEL_FILE, HELD_OUT_FOLDER, RUN_COST_FILE, SERVER_APP, simulator_job, write_json, write_text
    from flap_sam.jobs.simulator import output_tail, run_simulator
    from flap_sam.jobs.writer import job_settings, parse_settings, source_job, write_job
    from flap_sam.model.encoders import family_for

    source = source_job(args.job)
    common = parse_settings(args.set)
    transports = args.transports or [None]
    sites = args.sites or int(common.get("min_clients", job_settings(source)["min_clients"]))
    rank_sets: list[tuple[str | None, dict[str, Any]]] = [rank_settings(text, sites) for text in args.ranks] if args.ranks else [(None, {})]
    volume_counts = args.train_volumes or [None]
    if args.held_out and not os.path.isfile(args.held_out):
        raise ValueError(f"--held-out {args.held_out}: file not found")
    models = args.models or [None]
    for model in models:
        if model is not None:
            family_for(model)  # an unknown model type: one line before anything runs
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    for model, preset in ((m, p) for m in models for p in args.presets):
        presets_of_model = family_for(model).presets if model else None
        if presets_of_model is not None and preset not in presets_of_model:
            print(f"{model}-{preset}: not run ({model} trains with preset {', '.join(presets_of_model)} only)", flush=True)
            continue
        for transport, (ranks, rank_setting), volumes in ((t, r, v) for t in transports for r in rank_sets for v in volume_counts):
            settings = {
                **common,
                "preset": preset,
                **({"transport": transport} if transport else {}),
                **rank_setting,
                **({"model_type": model} if model else {}),
                **({"train_volumes": volumes} if volumes is not None else {}),
            }
            name = (
                (f"{args.tag}-" if args.tag else "")
                + (f"{model}-" if model else "")
                + f"{preset}-{transport or job_settings(source)['transport']}"
                + (f"-r{ranks}" if ranks else "")
                + (f"-v{volumes}" if volumes is not None else "")
            )
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
            job_dir = simulator_job(workspace)
            final = os.path.join(job_dir, SERVER_APP, GLOBAL_MODEL_FILE)
            if not os.path.isfile(final):
                raise ValueError(f"sweep run {name} ended without a global model (no site trained?); its log is in {workspace}")
            usage = result.usage
            write_json(
                os.path.join(job_dir, RUN_COST_FILE),
                {"wall_s": round(usage.wall_s, 1), "cpu_s": round(usage.cpu_s, 1), "peak_process_rss_bytes": usage.peak_process_rss_bytes},
            )
            if args.held_out:
                print(f"{name}: scoring the final model on {args.held_out} ...", flush=True)
                if (
                    flap_sam(
                        [
                            "evaluate",
                            "--job",
                            job,
                            "--adapter",
                            final,
                            "--datalist",
                            args.held_out,
                            "--out",
                            os.path.join(job_dir, HELD_OUT_FOLDER),
                        ]
                    )
                    != 0
                ):
                    raise ValueError(f"sweep run {name}: the held-out evaluation failed (above)")
            write_text(os.path.join(workspace, DONE), "finished\n")
    runs, baselines = collect([os.path.join(args.out, "runs"), *args.baselines])
    path = write_report(runs, baselines, os.path.join(args.out, "report"))
    print(f"wrote {path}")
    for r in runs:
        print(f"  {r.name}: {r.total_bytes:,} bytes, {r.test_dice_summary}")
    return 0
