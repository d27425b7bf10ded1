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
import sys

from flap_sam.files import CROSS_SITE_FILE, FINAL_MODEL, SERVER_APP, TB_FOLDER, TRAFFIC_FILE, markdown_table, simulator_job
from flap_sam.jobs.simulator import output_tail, run_simulator
from flap_sam.jobs.writer import jobs_folder, write_job

SETTINGS = {
    "model_type": "vit_test",
    "image_size": 64,
    "rank": 4,
    "batch_size": 4,
    "local_epochs": 3.0,
    "max_steps_per_round": 60,
    "lr": 0.01,
    "poly_power": 1.0,
    "augment": False,
    "num_rounds": 3,
}


def run_mode(mode: str, out: str, setting: str = "transport") -> dict:
    job = write_job(os.path.join(jobs_folder(), "kits_lora"), os.path.join(out, f"job_{mode}"), {**SETTINGS, setting: mode})
    workspace = os.path.join(out, f"ws_{mode}")
    result = run_simulator(job, workspace, 2, env={"FLAP_SAM_DEMO_ROOT": os.path.join(out, "demo")})
    if result.returncode != 0:
        raise ValueError(f"{setting}={mode}: the simulator failed: {output_tail(result)}")
    job_dir = simulator_job(workspace)
    with open(os.path.join(job_dir, SERVER_APP, TRAFFIC_FILE), encoding="utf-8") as f:
        traffic = json.load(f)
    with open(os.path.join(job_dir, CROSS_SITE_FILE), encoding="utf-8") as f:
        cross = json.load(f)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last_val = []
    for site in ("site-1", "site-2"):
        acc = EventAccumulator(os.path.join(job_dir, TB_FOLDER, site))
        acc.Reload()
        last_val.append(acc.Scalars("val_dice")[-1].value)
    train = [entry["received"] for site in traffic["sites"].values() for entry in site["train"].values()]
    return {
        "sent_per_site_round": sum(train) // len(train),  # what the server received from a site per round
        "val_dice_last_round": sum(last_val) / len(last_val),
        "cross_site_dice": sum(v[FINAL_MODEL]["dice"] for v in cross.values()) / len(cross),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--setting", default="transport", help="the setting to vary (transport, privacy, ...)")
    parser.add_argument("--values", "--modes", nargs="+", default=["fp32", "fp16", "bf16", "int8"])
    args = parser.parse_args(argv)
    rows = {mode: run_mode(mode, args.out, args.setting) for mode in args.values}
    print(
        markdown_table(
            [args.setting, "bytes per site and round (site -> server)", "val Dice, last round", "cross-site test Dice"],
            [[mode, f"{r['sent_per_site_round']:,}", r["val_dice_last_round"], r["cross_site_dice"]] for mode, r in rows.items()],
            float_format=".4f",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
