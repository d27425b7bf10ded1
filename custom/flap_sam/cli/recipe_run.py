"""What each shipped job's ``job.py`` runs: the job as a FLARE Job API recipe in the environment asked for.

    python jobs/kits_lora/job.py [--env sim|poc|prod] [--set KEY=VALUE ...] [--workspace DIR]
                                 [--startup-kit DIR --username NAME] [--export --export-dir DIR]

``--export --export-dir DIR`` (FLARE's own recipe flags) only writes the job folder FLARE would run.
"""

from __future__ import annotations

import argparse

from flap_sam.jobs.recipe import ENVS, FlapSamRecipe, make_env
from flap_sam.jobs.writer import parse_settings


FLARE_RECIPE_FLAGS = ("--export", "--export-dir")  # FLARE takes these off sys.argv before this parser runs


def build_parser(job: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python {job}/job.py", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="sim", choices=ENVS, help="sim: FLARE's simulator (default); poc: a local POC; "
                        "prod: a provisioned deployment")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings, as flap-sam job --set takes them")
    parser.add_argument("--workspace", default="/tmp/nvflare/simulation", help="sim: where the simulator's results go")
    parser.add_argument("--sites", type=int, default=None, help="sim / poc: number of sites (default: the job's min_clients)")
    parser.add_argument("--startup-kit", default=None, help="prod: the admin's startup kit folder")
    parser.add_argument("--username", default="admin@nvidia.com", help="poc / prod: the admin user of the kit")
    return parser


def main(job: str, argv: list[str] | None = None) -> int:
    parser = build_parser(job)
    args = parser.parse_args(argv)
    recipe = FlapSamRecipe(job, env=args.env, **parse_settings(args.set))
    sites = args.sites or int(recipe.configs["server"]["min_clients"])
    run = recipe.execute(make_env(args.env, sites, args.workspace, args.startup_kit, args.username))  # or --export
    print(f"job {run.get_job_id()}: {run.get_status()}; result: {run.get_result()}")
    return 0
