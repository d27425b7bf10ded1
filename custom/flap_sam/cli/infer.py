"""``flap-sam infer``: segment a NIfTI volume with a base SAM checkpoint + a persisted adapter.

``--job DIR`` (the job folder the federation ran) supplies every model and task setting; without
it the flags (``--model`` ... ``--dataset``) describe a built-in task.
"""

from __future__ import annotations

import argparse

import torch

from flap_sam.data.intensity import CTStatistics, IntensityNormalizer
from flap_sam.data.profiles import PROFILES
from flap_sam.data.stacks import prepare_volume
from flap_sam.data.volumes import load_volume, save_mask
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.factory import build_model, resolve_checkpoint
from flap_sam.model.presets import PRESETS
from flap_sam.training.device import pick_device
from flap_sam.training.inference import INFERENCE_MODES, segment_volume


def read_adapter(path: str) -> dict:
    """The exchanged tensors of a persisted global model (``FL_global_model.pt`` format or a plain state dict)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"adapter {path}: file not found") from None
    except Exception as e:
        raise SystemExit(f"adapter {path}: cannot be read ({type(e).__name__})") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(f"adapter {path}: not a state dict")
    return state


def add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool = True) -> None:
    parser.add_argument("--adapter", required=adapter_required, help="persisted adapter, e.g. .../app_server/FL_global_model.pt")
    parser.add_argument("--job", default=None, help="the job folder the federation ran: every model and task setting is read "
                                                     "from it (then --model ... --dataset are not used)")
    parser.add_argument("--checkpoint", default="", help="official SAM checkpoint the federation used ('' = random demo weights)")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--preset", default="flap", choices=list(PRESETS))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--lora-scale", type=float, default=1.0)
    parser.add_argument("--dataset", default="kits", choices=sorted(PROFILES))
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
    """Build the base model and load the adapter; returns (model, task profile, device)."""
    from flap_sam.federated.weights import import_weights
    from flap_sam.model.presets import exchanged_names

    job = job_spec_of(args)
    profile, spec = job.task, job.model
    device = pick_device(args.device)
    model = build_model(spec, resolve_checkpoint(args.checkpoint), device)
    try:
        import_weights(model, read_adapter(args.adapter), exchanged_names(model, spec.preset_obj), f"adapter {args.adapter}")
    except ValueError as e:
        raise SystemExit(f"{e}; " + ("is it this job's adapter?" if args.job else "check --model/--image-size/--preset/--rank/--dataset, or give --job")) from None
    return model.eval(), profile, device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="input NIfTI volume")
    parser.add_argument("--out", required=True, help="output NIfTI mask (same grid and affine as the input)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="HU clip window for CT (default: the job's ct_window, or the dataset's)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    model, profile, device = load_adapted_model(args)
    volume = load_volume(args.image, None, profile.num_classes, channel=profile.channel)
    stats = None
    if profile.modality == "ct":
        window = args.ct_window or profile.ct_window
        if window is None:
            raise ValueError("a CT task without ct_window: give --ct-window LOW HIGH (HU) or set ct_window in the job")
        stats = CTStatistics.from_window(*window)
    prepared = prepare_volume(volume, IntensityNormalizer(profile.modality, stats), model.image_size)
    mask = segment_volume(model, prepared, device, mode=args.inference)
    save_mask(mask, volume, args.out)
    counts = {name: int((mask == i + 1).sum()) for i, name in enumerate(profile.class_names)}
    print(f"wrote {args.out}: voxels per class {counts}")
    return 0
