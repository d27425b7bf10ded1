"""The adapted model a command runs: a job folder's settings, or flags whose defaults are the package's.

Shared by ``flap-sam infer`` and ``flap-sam evaluate``: ``--job DIR`` (the job folder the
federation ran) supplies every model and task setting; without it the flags describe a
built-in task, each defaulting to the package default (``flap_sam.training.schema``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from flap_sam.data.profiles import PROFILES, get_profile
from flap_sam.model.presets import PRESETS
from flap_sam.training.schema import package_defaults

if TYPE_CHECKING:
    from flap_sam.jobs.spec import JobSpec


def model_defaults() -> dict:
    """The package defaults of the model flags, with ``num_classes`` of the default dataset."""
    defaults = package_defaults()
    return {**defaults, "num_classes": get_profile(str(defaults["dataset"])).num_classes}


def add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool = True) -> None:
    defaults = model_defaults()
    parser.add_argument("--adapter", required=adapter_required, help="persisted adapter, e.g. .../app_server/FL_global_model.pt")
    parser.add_argument(
        "--job",
        default=None,
        help="the job folder the federation ran: every model and task setting is read from it (then --model ... --dataset are not used)",
    )
    parser.add_argument(
        "--checkpoint",
        default=defaults["checkpoint"],
        help="the base SAM checkpoint the federation used ('' = lite_medsam's bundled weights; random for a ViT)",
    )
    parser.add_argument("--model", default=defaults["model_type"])
    parser.add_argument("--image-size", type=int, default=defaults["image_size"])
    parser.add_argument("--preset", default=defaults["preset"], choices=list(PRESETS))
    parser.add_argument("--rank", type=int, default=defaults["rank"])
    parser.add_argument("--lora-scale", type=float, default=defaults["lora_scale"])
    parser.add_argument("--dataset", default=defaults["dataset"], choices=sorted(PROFILES))
    parser.add_argument("--device", default=defaults["device"])
    parser.add_argument(
        "--inference",
        default=defaults["final_inference"],
        help="overlap: 5 windows per slice averaged (the paper's); centre: one forward per slice, 5x faster",
    )
    parser.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each slice's softmax with its left-right mirror's (default: the job's flip_tta, else off)",
    )
    parser.add_argument(
        "--min-component-mm3",
        type=float,
        default=None,
        help="remove each class's connected components smaller than this (mm³; default: the job's min_component_mm3, else 0)",
    )


def refinements_of(args: argparse.Namespace) -> dict:
    """``segment_volume``'s refinements: the flags given, else the job's settings (``--job``), else the package's."""
    from flap_sam.training.schema import checked_value

    if args.job:
        from flap_sam.jobs.writer import read_job

        chosen = read_job(args.job).training.refinements()
    else:
        chosen = {"flip_tta": package_defaults()["flip_tta"], "min_component_mm3": package_defaults()["min_component_mm3"]}
    if args.flip_tta is not None:
        chosen["flip_tta"] = args.flip_tta
    if args.min_component_mm3 is not None:
        chosen["min_component_mm3"] = checked_value("min_component_mm3", args.min_component_mm3)
    return chosen


def job_spec_of(args: argparse.Namespace) -> JobSpec:
    """The model and task settings: from ``--job`` (the job folder's resolved settings) or from the flags."""
    from flap_sam.jobs.spec import JobSpec

    if args.job:
        from flap_sam.jobs.writer import read_job_spec

        return read_job_spec(args.job)
    return JobSpec.from_settings(
        {
            "model_type": args.model,
            "image_size": args.image_size,
            "dataset": args.dataset,
            "preset": args.preset,
            "rank": args.rank,
            "lora_scale": args.lora_scale,
        }
    )


def structures_of(args: argparse.Namespace, class_names: tuple[str, ...]):
    """How DICOM labels' segments and ROIs map to ``class_names``: the job's ``structure_names`` (``--job``), else
    each class's own name."""
    from flap_sam.data.dicom.labels import StructureNames

    if args.job:
        from flap_sam.jobs.writer import read_job

        return read_job(args.job).site.structures(class_names)
    return StructureNames.build(class_names)


def load_adapted_model(args: argparse.Namespace):
    """Build the base model and load the adapter; returns (model, task profile, device).

    Raises:
        ValueError: one line naming the adapter file and what does not match.
    """
    from flap_sam.model.adapter_file import read_adapter_file
    from flap_sam.model.factory import build_model, import_weights, resolve_checkpoint
    from flap_sam.model.presets import exchanged_names
    from flap_sam.training.device import pick_device
    from flap_sam.training.inference import INFERENCE_MODES

    if args.inference not in INFERENCE_MODES:
        raise ValueError(f"--inference {args.inference!r}: choose one of {', '.join(INFERENCE_MODES)}")

    job = job_spec_of(args)
    profile, spec = job.task, job.model
    device = pick_device(args.device)
    model = build_model(spec, resolve_checkpoint(args.checkpoint, spec.model_type), device)
    state, _ = read_adapter_file(args.adapter, allow_state_dict=True)
    try:
        import_weights(model, state, exchanged_names(model, spec.preset_obj), f"adapter {args.adapter}")
    except ValueError as e:
        raise ValueError(
            f"{e}; " + ("is it this job's adapter?" if args.job else "check --model/--image-size/--preset/--rank/--dataset, or give --job")
        ) from None
    return model.eval(), profile, device
