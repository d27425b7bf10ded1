"""``flap-sam scale [JOB] --sites 2 4 8 16 32 --rounds R --out DIR [--env poc]``: how a federation's server grows with its sites.

Runs one federation per site count in FLARE's simulator (``--env poc``: a fresh POC per count, the server
and each site separate processes, as a deployment runs them) at a tiny budget (the test-size SAM, one step a
round, every site on one demo site's data: what is measured is the server and the protocol) and writes
``scale.md`` / ``scale.json``: the server's peak memory, the median round's and aggregation's seconds and
the MB received a round, with how each grows; ``--memory-rounds N`` adds one long run at ``--memory-sites``
sites and the server's memory at each round's end (``flap_sam.benchmark.federation_scale``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", default="kits_lora", help="a job folder or a shipped job (default kits_lora)")
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="site counts, one federation each")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each federation")
    parser.add_argument("--env", default="sim", choices=["sim", "poc"], help="sim: FLARE's simulator (default); poc: a POC per site count")
    parser.add_argument("--threads", type=int, default=8, help="the simulator's worker processes at most (-t): more sites take turns")
    parser.add_argument("--memory-rounds", type=int, default=0, help="also one federation this long, for the server's memory per round")
    parser.add_argument("--memory-sites", type=int, default=8, help="the sites of that long federation")
    parser.add_argument("--out", required=True, help="folder for the runs, scale.md and scale.json")


def run(args: argparse.Namespace) -> int:
    from flap_sam.benchmark.federation_scale import run_scale

    counts = sorted(set(args.sites))
    if counts[0] < 1 or args.rounds < 1 or args.threads < 1 or args.memory_rounds < 0 or args.memory_sites < 1:
        raise ValueError("--sites, --rounds, --threads and --memory-sites must be at least 1, --memory-rounds at least 0")
    run_scale(args.job, counts, args.rounds, args.out, args.threads, args.memory_rounds, args.memory_sites, args.env)
    return 0
