"""``flap-sam prepare kits19|ixi|prostate``: a public dataset as distributed -> one datalist per site."""

from __future__ import annotations

import argparse
import time

from flap_sam.data.profiles import get_profile
from flap_sam.datasets.conversion import convert, format_summary
from flap_sam.datasets.ixi import prepare as ixi
from flap_sam.datasets.kits19 import prepare as kits19
from flap_sam.datasets.prostate import prepare as prostate

# command name -> (converter module, dataset profile)
CONVERTERS = {"kits19": (kits19, "kits"), "ixi": (ixi, "ixi"), "prostate": (prostate, "prostate")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=list(CONVERTERS), help="which public dataset --raw holds")
    parser.add_argument("--raw", required=True, help="the dataset as downloaded (see README: Datasets)")
    parser.add_argument("--out", required=True, help="new folder for <site>.json datalists and summary.json")
    parser.add_argument("--sites", nargs="+", default=None, metavar="SITE",
                        help="only these sites (a hospital prepares its own), e.g. site-3; default: all")
    parser.add_argument("--copy", action="store_true", help="copy the volumes into --out (default: point at --raw)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each site's published training cases kept for validation (default 0.2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (atomically, at the end)")


def run(args: argparse.Namespace) -> int:
    module, profile_name = CONVERTERS[args.dataset]
    started = time.monotonic()
    cases, problems, centres = module.find_cases(args.raw, args.sites)
    if args.sites:
        unknown = sorted(set(args.sites) - set(centres))
        if unknown:
            raise ValueError(f"--sites {' '.join(unknown)}: not a site of {args.dataset} (sites: {', '.join(sorted(centres) or ['none'])})")
    print(f"prepare {args.dataset}: checking {len(cases)} cases from {args.raw}")
    summaries = convert(args.dataset, cases, problems, centres, get_profile(profile_name), args.out,
                        copy=args.copy, val_fraction=args.val_fraction, overwrite=args.overwrite)
    print(format_summary(summaries))
    print(f"wrote {len(summaries)} datalists to {args.out} in {time.monotonic() - started:.0f} s "
          f"(set data_root = {args.out} in the job, or per site in local/flap_sam_site.json)")
    return 0
