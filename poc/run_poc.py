#!/usr/bin/env python
"""A real FLARE federation on one machine (POC mode): prepare, start, submit, follow, download, stop.

    python poc/run_poc.py                                   # jobs/kits_lora, 2 sites, demo data
    python poc/run_poc.py --job jobs/ixi_lora --sites 3 --set num_rounds=3

Prepares the kits from the shipped ``provisioning/project.yml`` (so every site carries the
project's site policy: allow-list, no code from jobs, privacy scopes), starts the server and
one client per site as separate processes (``nvflare poc start``), submits the job (written by
``flap-sam job``: no code, its scope named) through the FLARE API as the project admin, prints progress (round,
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(REPO, "provisioning", "project.yml")
POC_PROJECT = "example_project"  # FLARE's POC project name (attack simulations recognise a POC kit by it)
ADMIN = "admin@flap-sam.example.org"  # the project admin of provisioning/project.yml


def lead(site: str) -> str:
    """The admin user of the lead of ``site``'s hospital in the POC project."""
    return f"lead@{site}.example.org"


def poc_project(sites: list[str]) -> dict:
    """The shipped ``provisioning/project.yml`` on one machine: the same builders (so the same site policies),
    a server called ``server`` on localhost, and per site one client and one ``lead`` of its own org."""
    import yaml

    with open(PROJECT, encoding="utf-8") as f:
        project = yaml.safe_load(f)
    server = next(p for p in project["participants"] if p["type"] == "server")
    admin = next(p for p in project["participants"] if p.get("role") == "project_admin")
    server["name"] = "server"
    clients = [{"name": site, "type": "client", "org": f"org_{site}".replace("-", "_")} for site in sites]
    leads = [{"name": lead(c["name"]), "type": "admin", "org": c["org"], "role": "lead"} for c in clients]
    project.update(name=POC_PROJECT, participants=[server, *clients, admin, *leads])
    return project


def _nvflare(workspace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "NVFLARE_POC_WORKSPACE": workspace}
    return subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "poc", *args],
        env=env,
        check=check,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kit(workspace: str, participant: str) -> str:
    """A POC participant's folder (``server``, ``site-1``, the admin ...)."""
    return os.path.join(workspace, POC_PROJECT, "prod_00", participant)


def prepare(workspace: str, sites: list[str]) -> None:
    """``nvflare poc prepare`` from ``poc_project(sites)`` (every kit carries its site policy), then the
    server component that closes jobs a server restart cut off."""
    import yaml

    from flap_sam.federated.restart import add_to_server_resources

    os.makedirs(os.path.dirname(workspace) or ".", exist_ok=True)
    project_file = workspace.rstrip(os.sep) + "_project.yml"
    with open(project_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(poc_project(sites), f, sort_keys=False)
    _nvflare(workspace, "prepare", "-i", project_file, "--force")
    add_to_server_resources(os.path.join(kit(workspace, "server"), "local", "resources.json"))


def start(workspace: str, participant: str | None = None) -> None:
    """Start every POC participant, or only one (``server``, ``site-1``, ...)."""
    _nvflare(workspace, "start", *(["-p", participant] if participant else []), "--no-wait")


def stop(workspace: str, grace: float = 30.0) -> None:
    """``nvflare poc stop``, then, after ``grace`` seconds, end any process still running from this workspace.

    ``grace = 0`` skips the orderly stop and kills them at once (tests, whose federations hold nothing to keep).
    """
    if grace > 0:
        _nvflare(workspace, "stop", "--no-wait", check=False)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _workspace_processes(workspace):
        time.sleep(1)
    kill_processes(_workspace_processes(workspace), timeout=10)


def kill_processes(procs: list[psutil.Process], timeout: float) -> None:
    """SIGKILL every process of ``procs`` still alive and wait up to ``timeout`` s for them to be gone."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def _workspace_processes(workspace: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue  # already dead, waiting for its parent to collect it
        if workspace in cmdline and proc.pid != os.getpid():
            found.append(proc)
    return found


def connect(workspace: str, sites: list[str], timeout: float = 180.0):
    """An admin session once the server answers and every one of ``sites`` is connected.

    FLARE's own wait (``nvflare.tool.api_utils.wait_for_system_start``) polls the server with the
    admin's kit; it raises ``SystemStartTimeout`` naming the sites still missing.
    """
    from nvflare.fuel.flare_api.flare_api import new_secure_session
    from nvflare.tool.api_utils import wait_for_system_start

    wait_for_system_start(
        len(sites),
        os.path.dirname(kit(workspace, ADMIN)),
        username=ADMIN,
        secure_mode=True,
        second_to_wait=0,
        timeout_in_sec=int(timeout),
        expected_clients=sites,
    )
    return new_secure_session(ADMIN, kit(workspace, ADMIN), timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=os.path.join(REPO, "jobs", "kits_lora"))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--workspace", default="/tmp/flap_sam_poc")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="job settings to change (flap-sam job)")
    parser.add_argument("--download", default=None, help="result folder (default: <workspace>/results)")
    args = parser.parse_args(argv)

    from flap_sam.cli.monitor import follow
    from flap_sam.jobs.writer import parse_settings, write_job

    workspace = os.path.abspath(args.workspace)
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Submitted as a user makes a job: carrying no code and naming its privacy scope, as the sites' policies require.
    job = write_job(
        args.job, os.path.join(workspace + "_jobs", f"{os.path.basename(args.job)}_{int(time.time())}"), parse_settings(args.set)
    )
    print(f"POC workspace {workspace}: server + {', '.join(sites)}", flush=True)
    prepare(workspace, sites)
    status = "?"
    try:
        start(workspace)
        session = connect(workspace, sites)
        try:
            job_id = session.submit_job(os.path.abspath(job))
            print(f"submitted {job} as job {job_id}", flush=True)
            status = follow(
                session,
                job_id,
                args.download or os.path.join(workspace, "results"),
                poll=3.0,
                timeout=0,
                say=lambda s: print(s, flush=True),
            )
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
