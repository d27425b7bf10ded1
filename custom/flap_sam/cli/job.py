"""``flap-sam job``: a copy of a shipped job with some settings changed (see ``flap_sam.jobs.writer``)."""

from __future__ import annotations

import argparse
import os

from flap_sam.datasets.decathlon.task import read_task
from flap_sam.jobs.writer import jobs_folder, parse_settings, write_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder, or the name of a shipped job (kits_lora, ixi_lora, prostate_lora)")
    parser.add_argument("--out", required=True, help="new job folder")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="settings to change, e.g. preset=lora_dec num_rounds=25; a data_root other than demo "
                             "drops the demo's short budget (the job then runs the paper's recipe)")
    parser.add_argument("--task", default=None, metavar="DATASET_JSON",
                        help="a Decathlon dataset.json: fills classes, modality (and label_map) from it; "
                             "images with several sequences also need --set channel=N")


def run(args: argparse.Namespace) -> int:
    source = args.job if os.path.isdir(args.job) else os.path.join(jobs_folder(), args.job)
    settings = parse_settings(args.set)
    if args.task:
        settings = {**read_task(args.task).settings(settings.get("channel")), **settings}
    print(f"wrote {write_job(source, args.out, settings)}")
    return 0
