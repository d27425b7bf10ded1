"""``flap-sam demo-data``: write the built-in demo data of some sites (ixi: real anatomy, kits/prostate: phantoms).

``--format dicom`` writes them as a hospital stores them (DICOM studies with SEG or RTSTRUCT ground truth),
the input of ``flap-sam prepare dicom`` (docs/hospital-data.md).
"""

from __future__ import annotations

import argparse

from flap_sam.data.anatomy import HELD_OUT_SITE
from flap_sam.data.demo import DEMO_DATASETS, DEMO_KINDS, ensure_demo_site


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="root folder (default: $FLAP_SAM_DEMO_ROOT or ~/.cache/flap-sam/demo)")
    parser.add_argument("--dataset", default="kits", choices=DEMO_DATASETS)
    parser.add_argument("--job", default=None, help="a job folder: its task's demo data (built-in tasks only)")
    parser.add_argument("--sites", type=int, default=2, help="make site-1 .. site-N")
    parser.add_argument("--site-names", nargs="*", default=None, help="explicit site names instead of --sites")
    parser.add_argument(
        "--format",
        default="nifti",
        choices=("nifti", "dicom"),
        help="dicom: also write each site's cases as DICOM studies (a series and a SEG or RTSTRUCT per case)",
    )
    parser.add_argument(
        "--held-out",
        action="store_true",
        help=f"also make the '{HELD_OUT_SITE}' site (ixi, chest_ct: an acquisition no training site has, test split only)",
    )


def run(args: argparse.Namespace) -> int:
    if args.job:
        from flap_sam.jobs.writer import read_job_spec

        task = read_job_spec(args.job).task
        if task.name not in DEMO_DATASETS:
            raise ValueError(
                f"job {args.job}: its own task ({', '.join(task.class_names)}) has no built-in demo data; "
                f"demo data exist for {', '.join(DEMO_DATASETS)}"
            )
        args.dataset = task.name
    names = args.site_names or [f"site-{i}" for i in range(1, args.sites + 1)]
    if args.held_out and HELD_OUT_SITE not in names:
        names.append(HELD_OUT_SITE)
    for name in names:
        folder = ensure_demo_site(args.dataset, name, args.out)
        if args.format == "dicom":
            folder = _dicom_site(args.dataset, name, folder)
        print(f"{name}: {folder}  ({DEMO_KINDS[args.dataset]}, not patient data)")
    return 0


def _dicom_site(dataset: str, site_name: str, nifti_folder: str) -> str:
    """The site's demo cases as DICOM studies in ``<nifti_folder>-dicom`` (written once, atomically)."""
    import os
    import shutil
    import uuid

    from flap_sam.data.datalist import load_datalist
    from flap_sam.data.dicom.writers import write_demo_studies

    target = f"{nifti_folder}-dicom"
    if os.path.isdir(target):
        return target
    cases = load_datalist(os.path.join(nifti_folder, "datalist.json"), nifti_folder, require_training=False)
    pairs = [
        (case.image, case.label)
        for section in ("training", "validation", "test")
        for case in cases[section]
        if isinstance(case.image, str) and case.label is not None  # the demo's NIfTI cases, each labelled
    ]
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_demo_studies(dataset, pairs, tmp, site_name)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
