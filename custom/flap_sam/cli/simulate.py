"""``flap-sam simulate JOB -w WORKSPACE [-n SITES]``: FLARE's simulator with the sites' allow-list.

A job that ``flap-sam job`` writes carries no code, so FLARE checks its components against the
site's ``class_allow_list``; this gives the simulator the one the provisioned kits carry
(``flap_sam.provisioning``) and then runs ``nvflare simulator JOB -w WORKSPACE -n N -t N``, with
its output as it comes. The shipped jobs (``jobs/kits_lora`` ...) also run with plain
``nvflare simulator``.
"""

from __future__ import annotations

import argparse
import os
import subprocess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder (flap-sam job --out)")
    parser.add_argument("-w", "--workspace", required=True, help="the simulator's workspace (emptied first, except local/ and startup/)")
    parser.add_argument("-n", "--sites", type=int, default=None, help="number of sites (default: the job's min_clients)")


def run(args: argparse.Namespace) -> int:
    from flap_sam.jobs.simulator import prepare_workspace, simulator_command
    from flap_sam.jobs.writer import is_measurement_job, read_job

    sites = args.sites or int(read_job(args.job).values["min_clients"])
    if sites < 1:
        raise ValueError(f"--sites {sites}: at least 1")
    workspace = os.path.abspath(args.workspace)
    prepare_workspace(workspace, measurement=is_measurement_job(args.job))
    return subprocess.call(simulator_command(os.path.abspath(args.job), workspace, sites))
