"""``flap-sam evaluate``: per-volume and per-class Dice and HD95 (mm) of a site's split, as CSV and Markdown.

Scores either the adapted model (``--adapter`` + the federation's model settings) or masks
that were already computed (``--predictions DIR``, one NIfTI per image with the image's file
name, e.g. from ``flap-sam infer``). For KiTS it adds FLamby's official metric. Optional PNG
overlays stay in ``--out`` on the site.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from flap_sam.cli.adapted_model import add_model_arguments, job_spec_of, load_adapted_model, refinements_of, structures_of
from flap_sam.files import records_table

if TYPE_CHECKING:
    from flap_sam.data.intensity import IntensityNormalizer

SPLITS = ("test", "validation", "training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datalist", required=True, help="the site's datalist (from flap-sam prepare, or the demo's)")
    parser.add_argument("--data-root", default=None, help="root of relative paths in the datalist (default: its folder)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which cases to score (default: test)")
    parser.add_argument(
        "--predictions",
        default=None,
        help="score these masks (<dir>/<image file name>; a DICOM series: <dir>/<case>.nii.gz) instead of running a model",
    )
    parser.add_argument("--out", default="evaluation", help="folder for dice.csv, dice.md and overlays (default: ./evaluation)")
    parser.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="write PNG overlays of the N slices with the most foreground per case (default: none)",
    )
    parser.add_argument(
        "--ct-window",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="CT clip window in HU (default: statistics of the datalist's training volumes, as in training; "
        "without any, the task's ct_window)",
    )
    add_model_arguments(parser, adapter_required=False)


def _normalizer(profile, cases, ct_window, structures) -> IntensityNormalizer:
    """The site's intensity recipe: for CT, the clip statistics of its training volumes (as the Learner fits them)."""
    from flap_sam.data.intensity import CTStatistics, ForegroundSamples, IntensityNormalizer
    from flap_sam.data.volumes import load_volume
    from flap_sam.errors import DataError

    if profile.modality != "ct":
        return IntensityNormalizer(profile.modality)
    if ct_window:
        return IntensityNormalizer("ct", CTStatistics.from_window(*ct_window))
    if not cases["training"]:
        if profile.ct_window:  # a site that only scores (a held-out hospital): the task's window, as flap-sam infer uses
            print(f"CT window {profile.ct_window[0]:g}..{profile.ct_window[1]:g} HU: the task's (the datalist lists no training volumes)")
            return IntensityNormalizer("ct", CTStatistics.from_window(*profile.ct_window))
        raise DataError(
            "a CT site's clip statistics come from its training volumes, and its datalist lists none: give --ct-window LOW HIGH"
        )
    samples = ForegroundSamples(len(cases["training"]))
    for case in cases["training"]:  # one volume in memory at a time, as the Learner does
        samples.add(load_volume(case.image, case.label, profile.num_classes, profile.label_map, profile.channel, structures))
    return IntensityNormalizer("ct", samples.statistics())


def _case_name(image: str | tuple[str, ...]) -> str:
    """A case's name in the tables: the NIfTI file's stem, or a DICOM series folder with its parent (``study_1_CT``)."""
    if isinstance(image, tuple):  # a series given file by file: its (first) folder
        image = os.path.dirname(min(image))
    if os.path.isdir(image):
        parent, folder = os.path.split(os.path.normpath(image))
        return f"{os.path.basename(parent)}_{folder}"
    return os.path.basename(image).removesuffix(".gz").removesuffix(".nii")


def prediction_file_name(image: str | tuple[str, ...]) -> str:
    """The mask file ``--predictions`` holds for a case: the NIfTI image's file name, or ``<case name>.nii.gz``
    for a DICOM series (a folder, or its files)."""
    if isinstance(image, str) and not os.path.isdir(image):
        return os.path.basename(image)
    return f"{_case_name(image)}.nii.gz"


def run(args: argparse.Namespace) -> int:
    from flap_sam.data.datalist import load_datalist
    from flap_sam.data.stacks import prepare_volume
    from flap_sam.data.volumes import load_volume
    from flap_sam.errors import DataError
    from flap_sam.evaluation.overlays import write_overlays
    from flap_sam.evaluation.scores import score_volume, summarize, write_tables
    from flap_sam.training.inference import segment_volume

    if bool(args.adapter) == bool(args.predictions):
        raise ValueError("give exactly one of --adapter (run the model) or --predictions (score existing masks)")
    profile = job_spec_of(args).task
    cases = load_datalist(args.datalist, args.data_root, require_training=args.split == "training")
    selected = cases[args.split]
    if not selected:
        raise DataError(f"datalist {args.datalist}: the '{args.split}' split is empty; choose another --split")
    if args.adapter:
        model, profile, device = load_adapted_model(args)
        refinements = refinements_of(args)
    structures = structures_of(args, profile.class_names)
    if args.adapter:
        normalizer = _normalizer(profile, cases, args.ct_window, structures)
    rows = []
    for i, case in enumerate(selected, start=1):
        name = _case_name(case.image)
        if args.predictions:
            path = os.path.join(args.predictions, prediction_file_name(case.image))
            if not os.path.isfile(path):
                raise DataError(
                    f"prediction {path}: file not found (one mask per image, named like the image; a DICOM series': <case>.nii.gz)"
                )
            prediction = load_volume(
                case.image, path, profile.num_classes, channel=profile.channel
            ).label  # checks it is on the image's grid
            volume = load_volume(case.image, case.label, profile.num_classes, profile.label_map, profile.channel, structures)
        else:
            volume = load_volume(case.image, case.label, profile.num_classes, profile.label_map, profile.channel, structures)
            prediction = segment_volume(
                model, prepare_volume(volume, normalizer, model.image_size), device, mode=args.inference, **refinements
            )
        if volume.label is None or prediction is None:
            raise DataError(f"case {name}: has no label to score against")
        rows.append({"case": name, **score_volume(prediction, volume.label, profile, volume.spacing)})
        if args.overlays > 0:
            write_overlays(volume.image, volume.label, prediction, os.path.join(args.out, "overlays"), name, args.overlays)
        print(f"  [{i}/{len(selected)}] {name}: mean Dice {rows[-1]['mean_dice']:.4f}", flush=True)
    csv_path, md_path = write_tables(rows, args.out)
    print(records_table(rows + [summarize(rows)]))
    print(f"wrote {csv_path} and {md_path}" + (f" and overlays in {os.path.join(args.out, 'overlays')}" if args.overlays else ""))
    return 0
