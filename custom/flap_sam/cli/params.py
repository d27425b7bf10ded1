"""``flap-sam params``: trainable and exchanged parameters and bytes of a preset."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from flap_sam.cli.adapted_model import model_defaults
from flap_sam.model.presets import PRESETS

if TYPE_CHECKING:
    from flap_sam.model.factory import ModelSpec


def count_parameters(spec: ModelSpec) -> dict[str, int]:
    """Counts for one preset, built on the meta device (no weights are allocated).

    Returns ``{"trainable", "exchanged", "total"}`` parameter counts.
    """
    import torch

    from flap_sam.model.factory import assemble_model, exchange_schema

    with torch.device("meta"):
        model = assemble_model(spec, None)
    schema = exchange_schema(spec)
    exchanged = sum(int(torch.Size(shape).numel()) for shape in schema.values())
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "exchanged": exchanged,
        "total": sum(p.numel() for p in model.parameters()),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", default=None, help="a job folder: model, rank, class count and preset are read from it")
    model = model_defaults()
    parser.add_argument("--model", default=model["model_type"], help="a model_type (docs/settings.md)")
    parser.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)}, or 'all' (default: the job's, or {model['preset']})")
    parser.add_argument("--rank", type=int, default=model["rank"])
    parser.add_argument("--classes", type=int, default=model["num_classes"], help="foreground classes")
    parser.add_argument("--image-size", type=int, default=model["image_size"])
    parser.add_argument(
        "--site-ranks",
        type=int,
        nargs="+",
        default=None,
        metavar="R",
        help="also the bytes a site at each of these LoRA ranks sends and receives per round (site_ranks; at most --rank)",
    )


def run(args: argparse.Namespace) -> int:
    from flap_sam.model.factory import ModelSpec

    if args.job:
        from flap_sam.jobs.writer import read_job

        settings = read_job(args.job)
        job = settings.spec
        args.model, args.image_size, args.rank, args.classes = (
            job.model.model_type,
            job.model.image_size,
            job.model.rank,
            job.model.num_classes,
        )
        args.preset = args.preset or job.model.preset
        named = settings.site.site_ranks.values()  # the job's site_ranks, beside its own rank
        args.site_ranks = args.site_ranks or (sorted({*named, job.model.rank}) if named else None)
        print(f"job {args.job}: classes {', '.join(job.task.class_names)} ({job.task.modality})")
    wrong = [r for r in args.site_ranks or () if not 1 <= r <= args.rank]
    if wrong:
        print(f"--site-ranks: {wrong[0]} is not between 1 and the rank {args.rank}", file=sys.stderr)
        return 2
    args.preset = args.preset or model_defaults()["preset"]
    from flap_sam.model.encoders import family_for

    presets = list(family_for(args.model).presets or PRESETS) if args.preset == "all" else [args.preset]
    rows = [(name, count_parameters(ModelSpec(args.model, args.image_size, args.classes, name, args.rank))) for name in presets]
    fft = count_parameters(ModelSpec(args.model, args.image_size, args.classes, "fft", args.rank))["exchanged"]
    print(f"{args.model} at {args.image_size} px, {args.classes} classes, LoRA rank {args.rank}")
    print(f"{'preset':<9} {'trainable':>12} {'exchanged':>12} {'fp32 bytes':>13} {'fp32 MB':>8} {'fft/preset':>10}")
    for name, c in rows:
        print(
            f"{name:<9} {c['trainable']:>12,} {c['exchanged']:>12,} {4 * c['exchanged']:>13,} {4 * c['exchanged'] / 1e6:>8.2f} {fft / c['exchanged']:>10.1f}"
        )
    if args.site_ranks:
        return _site_rank_table(args, presets)
    return 0


def _site_rank_table(args: argparse.Namespace, presets: list[str]) -> int:
    """Per preset and site rank: what a site of ``site_ranks`` sends per round (and receives, from its first result on)."""
    from flap_sam.model.factory import ModelSpec

    for preset in presets:
        spec = ModelSpec(args.model, args.image_size, args.classes, preset, args.rank)
        if not spec.preset_obj.uses_lora or spec.preset_obj.fixed_rank is not None:
            continue
        job = count_parameters(spec)["exchanged"]
        print(f"\n{preset}: a site at its own LoRA rank (site_ranks), bytes per round each way, fp32")
        print(f"{'site rank':>9} {'exchanged':>12} {'fp32 bytes':>13} {'fp32 MB':>8} {'of rank ' + str(args.rank):>10}")
        for rank in args.site_ranks:
            n = count_parameters(ModelSpec(args.model, args.image_size, args.classes, preset, rank))["exchanged"]
            print(f"{rank:>9} {n:>12,} {4 * n:>13,} {4 * n / 1e6:>8.2f} {n / job:>10.3f}")
    return 0
