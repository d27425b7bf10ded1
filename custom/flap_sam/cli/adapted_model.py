"""The adapted model a command runs: a job folder's settings, or flags whose defaults are the package's.

Shared by ``flap-sam infer`` and ``flap-sam evaluate``: ``--job DIR`` (the job folder the
federation ran) supplies every model and task setting; without it the flags describe a
built-in task, each defaulting to the package default (``settings.conf``).
"""

from __future__ import annotations

import argparse

from flap_sam.data.profiles import PROFILES
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.adapter_file import read_adapter_file
from flap_sam.model.factory import build_model, resolve_checkpoint
from flap_sam.model.presets import PRESETS, exchanged_names
from flap_sam.training.device import pick_device
from flap_sam.training.inference import INFERENCE_MODES

DEFAULT = JobSpec.from_settings({})  # the package defaults' model and task


def add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool = True) -> None:
    model = DEFAULT.model
    parser.add_argument("--adapter", required=adapter_required, help="persisted adapter, e.g. .../app_server/FL_global_model.pt")
    parser.add_argument("--job", default=None, help="the job folder the federation ran: every model and task setting is read "
                                                     "from it (then --model ... --dataset are not used)")
    parser.add_argument("--checkpoint", default="", help="the base SAM checkpoint the federation used "
                                                         "('' = lite_medsam's bundled weights; random for a ViT)")
    parser.add_argument("--model", default=model.model_type)
    parser.add_argument("--image-size", type=int, default=model.image_size)
    parser.add_argument("--preset", default=model.preset, choices=list(PRESETS))
    parser.add_argument("--rank", type=int, default=model.rank)
    parser.add_argument("--lora-scale", type=float, default=model.lora_scale)
    parser.add_argument("--dataset", default=DEFAULT.task.name, choices=sorted(PROFILES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--inference", default="overlap", choices=list(INFERENCE_MODES),
                        help="overlap: 5 windows per slice averaged (the paper's); centre: one forward per slice, 5x faster")


def job_spec_of(args: argparse.Namespace) -> JobSpec:
    """The model and task settings: from ``--job`` (the job folder's resolved settings) or from the flags."""
    if args.job:
        from flap_sam.jobs.writer import read_job_spec

        return read_job_spec(args.job)
    return JobSpec.from_settings(dict(model_type=args.model, image_size=args.image_size, dataset=args.dataset,
                                      preset=args.preset, rank=args.rank, lora_scale=args.lora_scale))


def load_adapted_model(args: argparse.Namespace):
    """Build the base model and load the adapter; returns (model, task profile, device).

    Raises:
        ValueError: one line naming the adapter file and what does not match.
    """
    from flap_sam.federated.weights import import_weights

    job = job_spec_of(args)
    profile, spec = job.task, job.model
    device = pick_device(args.device)
    model = build_model(spec, resolve_checkpoint(args.checkpoint, spec.model_type), device)
    state, _ = read_adapter_file(args.adapter, allow_state_dict=True)
    try:
        import_weights(model, state, exchanged_names(model, spec.preset_obj), f"adapter {args.adapter}")
    except ValueError as e:
        raise ValueError(f"{e}; " + ("is it this job's adapter?" if args.job else "check --model/--image-size/--preset/--rank/--dataset, or give --job")) from None
    return model.eval(), profile, device
