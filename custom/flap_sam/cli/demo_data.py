"""``flap-sam demo-data``: write the built-in synthetic demo data of some sites."""

from __future__ import annotations

import argparse

from flap_sam.data.demo import DEMO_GENERATORS, ensure_demo_site


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="root folder (default: $FLAP_SAM_DEMO_ROOT or ~/.cache/flap-sam/demo)")
    parser.add_argument("--dataset", default="kits", choices=sorted(DEMO_GENERATORS))
    parser.add_argument("--sites", type=int, default=2, help="make site-1 .. site-N")
    parser.add_argument("--site-names", nargs="*", default=None, help="explicit site names instead of --sites")


def run(args: argparse.Namespace) -> int:
    names = args.site_names or [f"site-{i}" for i in range(1, args.sites + 1)]
    for name in names:
        print(f"{name}: {ensure_demo_site(args.dataset, name, args.out)}  (SYNTHETIC, not patient data)")
    return 0
