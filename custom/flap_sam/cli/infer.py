"""``flap-sam infer``: segment a NIfTI volume with a base SAM checkpoint + a persisted adapter.

``--job DIR`` (the job folder the federation ran) supplies every model and task setting; without
it the flags (``--model`` ... ``--dataset``) describe a built-in task.
"""

from __future__ import annotations

import argparse

from flap_sam.cli.adapted_model import add_model_arguments, load_adapted_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="input NIfTI volume")
    parser.add_argument("--out", required=True, help="output NIfTI mask (same grid and affine as the input)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="HU clip window for CT (default: the job's ct_window, or the dataset's)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from flap_sam.data.intensity import CTStatistics, IntensityNormalizer
    from flap_sam.data.stacks import prepare_volume
    from flap_sam.data.volumes import load_volume, save_mask
    from flap_sam.training.inference import segment_volume

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
