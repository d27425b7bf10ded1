"""``flap-sam prepare kits19|ixi|prostate|decathlon|dicom``: a dataset as distributed -> one datalist per site.

``decathlon`` is a hospital's own task in the Medical Segmentation Decathlon layout: its
``dataset.json`` gives the classes and the modality, and all its cases belong to one site.
``dicom`` is a hospital's folder of DICOM studies (series with a SEG or RTSTRUCT): the job (``--job``)
or ``--classes`` gives the classes, ``--structure-names`` how the hospital names them; it prints what it
found, how each structure mapped and every series it skipped with the reason (docs/hospital-data.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

from flap_sam.data.profiles import DatasetProfile, get_profile
from flap_sam.datasets.decathlon.task import read_task

# command name -> (converter module, imported when it runs; dataset profile)
CONVERTERS = {
    "kits19": ("flap_sam.datasets.kits19.prepare", "kits"),
    "ixi": ("flap_sam.datasets.ixi.prepare", "ixi"),
    "prostate": ("flap_sam.datasets.prostate.prepare", "prostate"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        choices=[*CONVERTERS, "decathlon", "dicom"],
        help="which dataset --raw holds (decathlon: a task folder with dataset.json; dicom: a site's DICOM studies)",
    )
    parser.add_argument("--raw", required=True, help="the dataset as downloaded (see docs/paper.md)")
    parser.add_argument("--out", required=True, help="new folder for <site>.json datalists and summary.json")
    parser.add_argument(
        "--sites", nargs="+", default=None, metavar="SITE", help="only these sites (a hospital prepares its own), e.g. site-3; default: all"
    )
    parser.add_argument("--copy", action="store_true", help="copy the volumes into --out (default: point at --raw)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each site's published training cases kept for validation (default 0.2)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (atomically, at the end)")
    parser.add_argument(
        "--channel", type=int, default=None, help="decathlon with several sequences per image: the one to check (the job's channel setting)"
    )
    parser.add_argument("--job", default=None, help="dicom: the job folder whose classes, modality and structure_names to use")
    parser.add_argument("--classes", default=None, help="dicom without --job: the classes in label order, e.g. kidney,tumour")
    parser.add_argument("--modality", default=None, choices=("ct", "mri"), help="dicom without --job: ct | mri")
    parser.add_argument(
        "--structure-names",
        action="append",
        default=[],
        metavar="CLASS=NAME[|NAME...]",
        help="dicom: the SEG segment labels or RTSTRUCT ROI names of a class, e.g. tumour=GTV|GTV_primary "
        "(repeat per class; added to the job's structure_names)",
    )


def _dicom(args: argparse.Namespace):
    """(cases, problems, centres, profile, structures) of a site's DICOM folder; prints what it found."""
    from flap_sam.data.dicom.labels import StructureNames
    from flap_sam.datasets.dicom.prepare import find_cases, format_survey

    if args.copy:
        raise ValueError("--copy: DICOM series are read where they are; leave --copy out")
    if args.sites and len(args.sites) > 1:
        raise ValueError(f"--sites {' '.join(args.sites)}: a DICOM folder is one hospital's data; name one site")
    site = (args.sites or ["site-1"])[0]
    if args.job:
        from flap_sam.jobs.writer import read_job

        job = read_job(args.job)
        profile, names = job.spec.task, dict(job.site.structure_names)
    elif args.classes and args.modality:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        profile, names = DatasetProfile("dicom", args.modality, classes), {}
    else:
        raise ValueError("prepare dicom: give --job JOB (its classes and modality) or --classes A,B and --modality ct|mri")
    for item in args.structure_names:
        class_name, _, listed = item.partition("=")
        if not listed:
            raise ValueError(f"--structure-names {item!r}: expected CLASS=NAME[|NAME...], e.g. tumour=GTV")
        names[class_name.strip()] = (*names.get(class_name.strip(), ()), *listed.split("|"))
    structures = StructureNames.build(profile.class_names, names, setting="--structure-names")
    cases, found, notes = find_cases(args.raw, site, structures)
    print(format_survey(found, notes))
    if args.structure_names:
        extra = {c: "|".join(n) for c, n in names.items()}
        print(
            f"the site reads the labels with the same names: set structure_names = {json.dumps(extra)} in the job "
            "(--set) or in the site's local/flap_sam_site.json"
        )
    return cases, [], {site: os.path.basename(os.path.abspath(args.raw))}, profile, structures


def _decathlon(args: argparse.Namespace):
    """(cases, problems, centres, profile) of a Decathlon task folder; one site (--sites, default site-1)."""
    from flap_sam.datasets.decathlon.task import find_cases

    if args.sites and len(args.sites) > 1:
        raise ValueError(f"--sites {' '.join(args.sites)}: a Decathlon folder is one hospital's data; name one site")
    site = (args.sites or ["site-1"])[0]
    task = read_task(args.raw)
    settings = task.settings(args.channel)
    profile = DatasetProfile("decathlon", task.modality, task.classes, None, task.label_map, settings.get("channel"))
    cases, problems = find_cases(args.raw, site)
    print(
        f"task {task.path}: classes {', '.join(task.classes)}; modality {task.modality}"
        + (f", sequence {args.channel} of {', '.join(task.sequences)}" if len(task.sequences) > 1 else "")
    )
    return cases, problems, {site: os.path.basename(os.path.dirname(os.path.abspath(task.path)))}, profile


def run(args: argparse.Namespace) -> int:
    from flap_sam.datasets.conversion import convert, format_summary

    started = time.monotonic()
    structures = None
    if args.dataset == "dicom":
        cases, problems, centres, profile, structures = _dicom(args)
    elif args.dataset == "decathlon":
        cases, problems, centres, profile = _decathlon(args)
    else:
        module_name, profile_name = CONVERTERS[args.dataset]
        module = importlib.import_module(module_name)
        profile = get_profile(profile_name)
        cases, problems, centres = module.find_cases(args.raw, args.sites)
    if args.sites:
        unknown = sorted(set(args.sites) - set(centres))
        if unknown:
            raise ValueError(f"--sites {' '.join(unknown)}: not a site of {args.dataset} (sites: {', '.join(sorted(centres) or ['none'])})")
    print(f"prepare {args.dataset}: checking {len(cases)} cases from {args.raw}")
    summaries = convert(
        args.dataset,
        cases,
        problems,
        centres,
        profile,
        args.out,
        copy=args.copy,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
        structures=structures,
    )
    print(format_summary(summaries))
    print(
        f"wrote {len(summaries)} datalists to {args.out} in {time.monotonic() - started:.0f} s "
        f"(set data_root = {args.out} in the job, or per site in local/flap_sam_site.json)"
    )
    return 0
