"""What a transport mode (or a privacy filter) does to Dice: the demo federation, once per value, in the real simulator.

    python -m flap_sam.benchmark.transport_dice --out /tmp/transport_dice
    python -m flap_sam.benchmark.transport_dice --out /tmp/privacy_dice --setting privacy --values none percentile svt

Runs ``jobs/kits_lora`` on its demo data with the test-size model (the settings the tests
use, so it finishes in minutes on a CPU) and prints, per value of the setting: wire bytes per
site and round, the validation Dice every site reported for the last round's global model, and
the cross-site test Dice of the final adapter. Same seeds in every run: differences come from
the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from flap_sam.jobs.writer import jobs_folder, write_job

SETTINGS = {"model_type": "vit_test", "image_size": 64, "rank": 4, "batch_size": 4, "local_epochs": 3.0,
            "max_steps_per_round": 60, "lr": 0.01, "poly_power": 1.0, "augment": False, "num_rounds": 3}


def run_mode(mode: str, out: str, setting: str = "transport") -> dict:
    job = write_job(os.path.join(jobs_folder(), "kits_lora"), os.path.join(out, f"job_{mode}"), {**SETTINGS, setting: mode})
    workspace = os.path.join(out, f"ws_{mode}")
    env = {**os.environ, "FLAP_SAM_DEMO_ROOT": os.path.join(out, "demo")}
    subprocess.run([sys.executable, "-m", "nvflare.cli", "simulator", job, "-w", workspace, "-n", "2", "-t", "2"],
                   check=True, capture_output=True, env=env)
    job_dir = os.path.join(workspace, "server", "simulate_job")
    with open(os.path.join(job_dir, "app_server", "traffic_summary.json"), encoding="utf-8") as f:
        traffic = json.load(f)
    with open(os.path.join(job_dir, "cross_site_val", "cross_val_results.json"), encoding="utf-8") as f:
        cross = json.load(f)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last_val = []
    for site in ("site-1", "site-2"):
        acc = EventAccumulator(os.path.join(job_dir, "tb_events", site))
        acc.Reload()
        last_val.append(acc.Scalars("val_dice")[-1].value)
    train = [entry["received"] for site in traffic["sites"].values() for entry in site["train"].values()]
    return {
        "sent_per_site_round": sum(train) // len(train),  # what the server received from a site per round
        "val_dice_last_round": sum(last_val) / len(last_val),
        "cross_site_dice": sum(v["SRV_FL_global_model.pt"]["dice"] for v in cross.values()) / len(cross),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--setting", default="transport", help="the setting to vary (transport, privacy, ...)")
    parser.add_argument("--values", "--modes", nargs="+", default=["fp32", "fp16", "bf16", "int8"])
    args = parser.parse_args(argv)
    rows = {mode: run_mode(mode, args.out, args.setting) for mode in args.values}
    print(f"| {args.setting} | bytes per site and round (site -> server) | val Dice, last round | cross-site test Dice |")
    print("|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['sent_per_site_round']:,} | {r['val_dice_last_round']:.4f} | {r['cross_site_dice']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
