"""``flap-sam infer``: segment a NIfTI volume or a DICOM series with a base SAM checkpoint + a persisted adapter.

A NIfTI image gives a NIfTI mask on its grid; a DICOM series (a folder) gives a DICOM SEG that references
the series, one segment per class named from the job's classes (or NIfTI, when ``--out`` ends in .nii.gz).

``--job DIR`` (the job folder the federation ran) supplies every model and task setting; without
it the flags (``--model`` ... ``--dataset``) describe a built-in task.
"""

from __future__ import annotations

import argparse
import os

from flap_sam.cli.adapted_model import add_model_arguments, load_adapted_model, refinements_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="input NIfTI volume, or a folder holding one DICOM series")
    parser.add_argument(
        "--out",
        required=True,
        help="output mask: NIfTI for a NIfTI image (same grid and affine); for a DICOM "
        "series a DICOM SEG file referencing it (a NIfTI mask if it ends in .nii.gz)",
    )
    parser.add_argument(
        "--ct-window",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="HU clip window for CT (default: the job's ct_window, or the dataset's)",
    )
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from flap_sam.data.dicom import is_dicom
    from flap_sam.data.intensity import CTStatistics, IntensityNormalizer
    from flap_sam.data.stacks import prepare_volume
    from flap_sam.data.volumes import load_volume, save_mask
    from flap_sam.training.inference import segment_volume

    dicom_out = is_dicom(args.image) and not args.out.endswith((".nii", ".nii.gz"))
    if dicom_out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: a folder; name the DICOM SEG file to write (e.g. {os.path.join(args.out, 'seg.dcm')})")
    model, profile, device = load_adapted_model(args)
    series = None
    if dicom_out:
        from flap_sam.data.dicom.series import read_series

        series = read_series(args.image)  # read once: the volume to segment and the SEG's source images
    volume = load_volume(args.image, None, profile.num_classes, channel=profile.channel, series=series)
    stats = None
    if profile.modality == "ct":
        window = args.ct_window or profile.ct_window
        if window is None:
            raise ValueError("a CT task without ct_window: give --ct-window LOW HIGH (HU) or set ct_window in the job")
        stats = CTStatistics.from_window(*window)
    prepared = prepare_volume(volume, IntensityNormalizer(profile.modality, stats), model.image_size)
    mask = segment_volume(model, prepared, device, mode=args.inference, **refinements_of(args))
    if series is not None:
        from flap_sam.data.dicom.writers import write_seg

        write_seg(volume.to_original_orientation(mask), series, profile.class_names, args.out)
    else:
        save_mask(mask, volume, args.out)
    counts = {name: int((mask == i + 1).sum()) for i, name in enumerate(profile.class_names)}
    print(f"wrote {args.out}: voxels per class {counts}")
    return 0
