#!/usr/bin/env python
"""A real FLARE federation on one machine (POC mode): prepare, start, submit, follow, download, stop.

    python poc/run_poc.py                                   # jobs/kits_lora, 2 sites, demo data
    python poc/run_poc.py --job jobs/ixi_lora --sites 3 --set num_rounds=3

Starts the server and one client per site as separate processes (``nvflare poc start``),
submits the job through the FLARE API as the POC project admin, prints progress (round,
sites that reported, their Dice, bytes received) until the job ends, downloads the result
and stops every process it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import psutil

ADMIN = "admin@nvidia.com"  # the POC project admin (project_admin role: may submit jobs with custom code)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvflare(workspace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "NVFLARE_POC_WORKSPACE": workspace}
    return subprocess.run([sys.executable, "-m", "nvflare.cli", "poc", *args], env=env, check=check,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kit(workspace: str, participant: str) -> str:
    """A POC participant's folder (``server``, ``site-1``, the admin ...)."""
    return os.path.join(workspace, "example_project", "prod_00", participant)


def prepare(workspace: str, sites: list[str]) -> None:
    """``nvflare poc prepare``, then the server component that closes jobs a server restart cut off."""
    from flap_sam.federated.restart import add_to_server_resources

    _nvflare(workspace, "prepare", "-c", *sites, "--force")
    add_to_server_resources(os.path.join(kit(workspace, "server"), "local", "resources.json"))


def start(workspace: str, participant: str | None = None) -> None:
    """Start every POC participant, or only one (``server``, ``site-1``, ...)."""
    _nvflare(workspace, "start", *(["-p", participant] if participant else []), "--no-wait")


def stop(workspace: str) -> None:
    """``nvflare poc stop``, then end any process still running from this workspace."""
    _nvflare(workspace, "stop", "--no-wait", check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _workspace_processes(workspace):
        time.sleep(1)
    for proc in _workspace_processes(workspace):
        try:
            proc.kill()
        except psutil.Error:
            pass


def _workspace_processes(workspace: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue  # already dead, waiting for its parent to collect it
        if workspace in cmdline and proc.pid != os.getpid():
            found.append(proc)
    return found


def connect(workspace: str, n_sites: int, timeout: float = 180.0):
    """An admin session once the server answers and all sites are connected."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(ADMIN, kit(workspace, ADMIN), timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clients = session.get_system_info().client_info
        if len(clients) >= n_sites:
            return session
        time.sleep(2)
    session.close()
    raise TimeoutError(f"only {len(clients)} of {n_sites} sites connected within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=os.path.join(REPO, "jobs", "kits_lora"))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--workspace", default="/tmp/flap_sam_poc")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="job settings to change (flap-sam job)")
    parser.add_argument("--download", default=None, help="result folder (default: <workspace>/results)")
    args = parser.parse_args(argv)

    from flap_sam.jobs.writer import parse_value, write_job
    from flap_sam.cli.monitor import follow

    workspace = os.path.abspath(args.workspace)
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    job = args.job
    if args.set:
        settings = dict(item.split("=", 1) for item in args.set)
        job = write_job(args.job, os.path.join(workspace + "_jobs", f"{os.path.basename(args.job)}_{int(time.time())}"),
                        {k: parse_value(v) for k, v in settings.items()})
    print(f"POC workspace {workspace}: server + {', '.join(sites)}", flush=True)
    prepare(workspace, sites)
    status = "?"
    try:
        start(workspace)
        session = connect(workspace, len(sites))
        try:
            job_id = session.submit_job(os.path.abspath(job))
            print(f"submitted {job} as job {job_id}", flush=True)
            status = follow(session, job_id, args.download or os.path.join(workspace, "results"), poll=3.0, timeout=0,
                            say=lambda s: print(s, flush=True))
        finally:
            session.close()
    except KeyboardInterrupt:
        print("interrupted: stopping the federation", flush=True)
    finally:
        stop(workspace)
        print(f"stopped all POC processes; wall time {time.monotonic() - started:.0f} s", flush=True)
    return 0 if status == "FINISHED:COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
