"""``flap-sam job``: a copy of a shipped job with some settings changed (see ``flap_sam.jobs.writer``)."""

from __future__ import annotations

import argparse
import sys

from flap_sam.datasets.decathlon.task import read_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder, or the name of a shipped job (kits_lora, ixi_lora, prostate_lora, chest_ct_lora)")
    parser.add_argument("--out", required=True, help="new job folder")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings to change, e.g. preset=lora_dec num_rounds=25; a data_root other than demo "
        "drops the demo's short budget (the job then runs the paper's recipe)",
    )
    parser.add_argument(
        "--for",
        dest="target",
        choices=["deployment", "simulator"],
        default="deployment",
        help="deployment (default): no code, what provisioned sites and POC kits accept; simulator: for FLARE's own "
        "`nvflare simulator OUT -w WS`, keeping the shipped job's app/custom/ marker (no code), which provisioned sites refuse",
    )
    parser.add_argument(
        "--task",
        default=None,
        metavar="DATASET_JSON",
        help="a Decathlon dataset.json: fills classes, modality (and label_map) from it; "
        "images with several sequences also need --set channel=N",
    )


def run(args: argparse.Namespace) -> int:
    from flap_sam.jobs.writer import job_settings, parse_settings, source_job, write_job

    source = source_job(args.job)
    settings = parse_settings(args.set)
    if args.task:
        settings = {**read_task(args.task).settings(settings.get("channel")), **settings}
    out = write_job(source, args.out, settings, for_simulator=args.target == "simulator")
    written = job_settings(out)
    if args.target == "simulator":
        print(
            f"wrote {out} (privacy scope {written['scope']}) for FLARE's simulator: nvflare simulator {out} -w WORKSPACE "
            f"-n SITES -t SITES (provisioned sites refuse it: write theirs without --for simulator)"
        )
    else:
        print(
            f"wrote {out} (privacy scope {written['scope']}, no code: what provisioned sites accept; in the simulator: "
            f"flap-sam simulate {out} -w WORKSPACE, or write it with --for simulator for nvflare simulator)"
        )
    note = random_base_note(written)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def random_base_note(settings: dict) -> str | None:
    """A line when the job would start a ViT from random weights on real data (sites may still set checkpoint locally)."""
    from flap_sam.model.encoders import FAMILY_OF_TYPE
    from flap_sam.model.factory import random_base_remedy

    model_type = str(settings.get("model_type"))
    if (
        model_type not in FAMILY_OF_TYPE
        or FAMILY_OF_TYPE[model_type].official_checkpoint(model_type) is None
        or settings.get("checkpoint")
        or str(settings.get("data_root")) == "demo"
        or settings.get("random_weights") is True
    ):
        return None
    return (
        f"this job names no checkpoint for {model_type}: a site refuses to train its data from random weights "
        f"unless it sets checkpoint in its local/flap_sam_site.json. {random_base_remedy(model_type)}"
    )
