#!/usr/bin/env python
"""Rehearse a hospital deployment on one machine: provisioned kits on separate network hosts, shaped links.

    sudo python poc/hospital_network.py                            # jobs/kits_lora, 2 hospitals at 20 Mbit/s
    sudo python poc/hospital_network.py --sites 3 --rate 8 --set num_rounds=3
    sudo python poc/hospital_network.py --hold                     # leave it up; Ctrl-C takes it down

The kits come from the shipped ``provisioning/project.yml`` (its server name, its CA, its site policies;
the first ``--sites`` hospitals and their leads). The server, every hospital and the project admin each
get a Linux network namespace of their own, wired to one bridge in a hub namespace by a veth pair, like
hosts on one switch. Each hospital's link is shaped by ``tc tbf`` in both directions (``--rate``, Mbit/s);
the server's is not, as a data centre's uplink would not be. Every namespace resolves the server's
provisioned name through its own ``/etc/netns/<ns>/hosts``, so TLS checks the real certificate name.
The addresses (10.231.0.0/24) exist only inside these namespaces: nothing is routed to the machine's own
network. Participants start from their kits' own ``startup/start.sh`` (FLARE's restart loop included);
the admin works from its namespace with its kit's console (``fl_admin.sh``) and ``flap-sam monitor``.
Everything started is stopped and every namespace removed at the end, also after an error or Ctrl-C.

Needs root (``ip netns``, ``tc``). docs/deployment.md#rehearsing-on-a-network says what to try with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from run_poc import kill_processes  # poc/, beside this script
from typing_extensions import Self

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(REPO, "provisioning", "project.yml")
SUBNET = "10.231.0"  # /24, private, only ever inside the namespaces made here
SERVER_ADDRESS = f"{SUBNET}.1"
ADMIN_ADDRESS = f"{SUBNET}.2"
FIRST_SITE_HOST = 10


class NetworkError(RuntimeError):
    """A namespace, link or shaping command failed (the message names it and what ``ip``/``tc`` said)."""


def _ip(*args: str) -> None:
    done = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise NetworkError(f"`{' '.join(args)}` failed: {done.stdout.strip()}")


def can_build_networks() -> str | None:
    """None when this process may create namespaces and shape links; otherwise why not, in one line."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc): run it with sudo"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2)"
    return None


class HospitalNetwork:
    """Network namespaces for a server, its sites and an admin, on one bridge, each site's link shaped.

    ``rate_mbit`` is every site's link rate in Mbit/s, both directions (None: not shaped). Namespaces are
    named ``<name>-hub``, ``<name>-server``, ``<name>-admin`` and ``<name>-<site>``. Use as a context
    manager: ``__exit__`` kills every process left in the namespaces and removes them.
    """

    def __init__(self, server_name: str, sites: list[str], rate_mbit: float | None = None, name: str = "fsnet"):
        self.server_name = server_name
        self.sites = list(sites)
        self.rate_mbit = rate_mbit
        self.name = name
        self.addresses = {"server": SERVER_ADDRESS, "admin": ADMIN_ADDRESS}
        self.addresses.update({site: f"{SUBNET}.{FIRST_SITE_HOST + i}" for i, site in enumerate(self.sites)})
        self._ports = {p: f"p{i}-{name}"[:15] for i, p in enumerate(self.addresses)}  # hub-side interface names

    # -- names -------------------------------------------------------------------------------------------
    @property
    def participants(self) -> list[str]:
        return list(self.addresses)

    def namespace(self, participant: str) -> str:
        """The namespace of ``server``, ``admin`` or a site."""
        if participant not in self.addresses:
            raise KeyError(f"{participant!r} is not in this network (participants: {', '.join(self.participants)})")
        return f"{self.name}-{participant}"

    @property
    def hub(self) -> str:
        return f"{self.name}-hub"

    # -- building and taking down ------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        """Create the hub (a bridge) and one namespace per participant, linked, addressed and shaped."""
        reason = can_build_networks()
        if reason:
            raise NetworkError(f"cannot build the hospital network: {reason}")
        self.down()  # leftovers of an earlier run of the same name
        try:
            _ip("ip", "netns", "add", self.hub)
            _ip("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("ip", "-n", self.hub, "link", "set", "br0", "up")
            hosts = f"127.0.0.1 localhost\n{SERVER_ADDRESS} {self.server_name}\n"
            for participant, address in self.addresses.items():
                ns, port = self.namespace(participant), self._ports[participant]
                _ip("ip", "netns", "add", ns)
                os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
                with open(f"/etc/netns/{ns}/hosts", "w", encoding="utf-8") as f:
                    f.write(hosts)
                _ip("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("ip", "link", "set", port, "netns", self.hub)
                _ip("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
                _ip("ip", "-n", ns, "link", "set", "lo", "up")
                _ip("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("ip", "-n", ns, "link", "set", "eth0", "up")
            for site in self.sites:
                self.shape(site, self.rate_mbit)
        except Exception:
            self.down()
            raise

    def down(self) -> None:
        """Kill every process in this network's namespaces, then remove them and their hosts files."""
        existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        mine = [ns for ns in [*(self.namespace(p) for p in self.participants), self.hub] if ns in existing]
        for _ in range(3):  # FLARE's restart loop may start a process between two passes
            pids = []
            for ns in mine:
                listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                pids += [int(p) for p in listed]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            psutil.wait_procs([p for p in map(_process, pids) if p], timeout=10)
        for ns in mine:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for participant in self.participants:
            shutil.rmtree(f"/etc/netns/{self.namespace(participant)}", ignore_errors=True)

    def exists(self) -> list[str]:
        """This network's namespaces that exist now."""
        existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        return [ns for ns in [*(self.namespace(p) for p in self.participants), self.hub] if ns in existing]

    # -- links ---------------------------------------------------------------------------------------------
    def shape(self, participant: str, rate_mbit: float | None, uplink_only: bool = False) -> None:
        """Set ``participant``'s link to ``rate_mbit`` Mbit/s in both directions (None: unshaped), or only
        what it sends (``uplink_only``, an asymmetric line; what it receives is then unshaped).

        ``tbf`` on the participant's own interface shapes what it sends, on the hub's end what it receives.
        The bucket holds 10 ms at the rate (at least 16 KiB); up to 200 ms of packets queue before drops.
        """
        ns = self.namespace(participant)
        for where, dev in ((ns, "eth0"), (self.hub, self._ports[participant])):
            subprocess.run(["tc", "-n", where, "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if rate_mbit is not None and (where == ns or not uplink_only):
                if rate_mbit <= 0:
                    raise ValueError(f"rate_mbit = {rate_mbit}: a link rate must be positive (Mbit/s)")
                burst = max(16 * 1024, int(rate_mbit * 1e6 / 8 * 0.010))
                _ip(
                    "tc",
                    "-n",
                    where,
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{rate_mbit}mbit",
                    "burst",
                    str(burst),
                    "latency",
                    "200ms",
                )

    def cut(self, participant: str) -> None:
        """Cut ``participant`` off: its port leaves the bridge. Both ends stay up (no carrier loss), as when a
        link fails somewhere between a hospital and the server: packets are lost, connections stall."""
        _ip("ip", "-n", self.hub, "link", "set", self._ports[participant], "nomaster")

    def restore(self, participant: str) -> None:
        """Put ``participant``'s port back on the bridge (its shaping is kept)."""
        _ip("ip", "-n", self.hub, "link", "set", self._ports[participant], "master", "br0")

    # -- processes -----------------------------------------------------------------------------------------
    def command(self, participant: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``participant``'s namespace (and its hosts file)."""
        return ["ip", "netns", "exec", self.namespace(participant), *argv]

    def pids(self, participant: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespace(participant)], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()]


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


# -- kits ----------------------------------------------------------------------------------------------------
def network_project(sites: int, site_policy: dict | None = None) -> dict:
    """The shipped ``provisioning/project.yml`` for its first ``sites`` hospitals: same server name, builders
    (so the same site policies and CA), project admin, and the leads of those hospitals.

    ``site_policy`` replaces arguments of its ``SitePolicyBuilder``, e.g. ``{"presets": ["flap", "fft"],
    "max_megabytes_per_result": 0}`` for hospitals that agree to let a full model out (the fft baseline).
    """
    import yaml

    with open(PROJECT, encoding="utf-8") as f:
        project = yaml.safe_load(f)
    if site_policy:
        builder = next(b for b in project["builders"] if b["path"].endswith("SitePolicyBuilder"))
        builder["args"].update(site_policy)
    clients = [p for p in project["participants"] if p["type"] == "client"]
    if not 1 <= sites <= len(clients):
        raise ValueError(f"--sites {sites}: provisioning/project.yml has {len(clients)} hospitals")
    kept = {c["name"] for c in clients[:sites]}
    orgs = {c["org"] for c in clients[:sites]}
    project["participants"] = [
        p
        for p in project["participants"]
        if p["type"] == "server" or p["name"] in kept or (p["type"] == "admin" and (p.get("role") == "project_admin" or p["org"] in orgs))
    ]
    return project


class Deployment:
    """Provisioned kits in ``workspace`` run on a ``HospitalNetwork``: start, stop, kill and the admin's tools."""

    def __init__(
        self, workspace: str, sites: int = 2, rate_mbit: float | None = None, name: str = "fsnet", site_policy: dict | None = None
    ):
        self.workspace = os.path.abspath(workspace)
        self.project = network_project(sites, site_policy)
        by_type = {t: [p for p in self.project["participants"] if p["type"] == t] for t in ("server", "client", "admin")}
        self.server_name = by_type["server"][0]["name"]
        self.sites = [p["name"] for p in by_type["client"]]
        self.admin = next(p["name"] for p in by_type["admin"] if p.get("role") == "project_admin")
        self.network = HospitalNetwork(self.server_name, self.sites, rate_mbit, name)

    def kit(self, participant: str) -> str:
        """The startup kit of ``server``, ``admin`` or a site."""
        name = {"server": self.server_name, "admin": self.admin}.get(participant, participant)
        return os.path.join(self.workspace, "kits", self.project["name"], "prod_00", name)

    def provision(self, server_config: dict | None = None) -> None:
        """``nvflare provision`` of ``network_project``; the server kit gets the restart component and
        ``server_config`` merged into its ``fed_server.json`` server entry (e.g. ``heart_beat_timeout``)."""
        import yaml

        from flap_sam.federated.restart import add_to_server_resources

        os.makedirs(self.workspace, exist_ok=True)
        project_file = os.path.join(self.workspace, "project.yml")
        with open(project_file, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.project, f, sort_keys=False)
        shutil.rmtree(os.path.join(self.workspace, "kits"), ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "nvflare.cli", "provision", "-p", project_file, "-w", os.path.join(self.workspace, "kits")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not os.path.isdir(self.kit("server")):
            raise RuntimeError(f"nvflare provision -p {project_file} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        local = os.path.join(self.kit("server"), "local")
        with open(os.path.join(local, "resources.json.default"), encoding="utf-8") as f:
            resources = f.read()
        # FLARE's default stores (/tmp/nvflare/...) would be shared by every server on the machine: a restarting
        # server would mark another federation's running job abandoned.
        for store in ("jobs-storage", "snapshot-storage"):
            resources = resources.replace(f'"/tmp/nvflare/{store}"', json.dumps(os.path.join(self.workspace, "server", store)))
        with open(os.path.join(local, "resources.json"), "w", encoding="utf-8") as f:
            f.write(resources)
        add_to_server_resources(os.path.join(local, "resources.json"))
        if server_config:
            path = os.path.join(self.kit("server"), "startup", "fed_server.json")
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["servers"][0].update(server_config)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)

    def start(self, participant: str, env: dict | None = None) -> None:
        """Start ``server`` or a site from its kit's ``startup/start.sh``, in its namespace."""
        log = open(os.path.join(self.kit(participant), "console.txt"), "a")  # noqa: SIM115 (the started process keeps it)
        subprocess.Popen(
            self.network.command(participant, ["bash", os.path.join(self.kit(participant), "startup", "start.sh")]),
            cwd=self.kit(participant),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def fl_processes(self, participant: str) -> list[psutil.Process]:
        """``participant``'s FLARE python processes (its parent and its job processes; not the restart loop)."""
        found = [_process(pid) for pid in self.network.pids(participant)]
        return [p for p in found if p and "nvflare.private.fed.app" in " ".join(_cmdline(p))]

    def kill(self, participant: str) -> None:
        """Kill ``participant``'s FLARE processes, as a crash would; its kit's restart loop starts it again."""
        kill_processes(self.fl_processes(participant), timeout=30)

    def admin_console(self, commands: list[str], timeout: float = 120) -> str:
        """What the admin's console (``startup/fl_admin.sh``, run in the admin's namespace) prints for ``commands``."""
        script = "\n".join([self.admin, *commands, "bye"]) + "\n"  # the console asks for the user name first
        done = subprocess.run(
            self.network.command("admin", ["bash", os.path.join(self.kit("admin"), "startup", "fl_admin.sh")]),
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.kit("admin"),
        )
        return done.stdout + done.stderr

    def monitor(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``flap-sam monitor`` with the admin's kit, run in the admin's namespace."""
        argv = [sys.executable, "-m", "flap_sam.cli.main", "monitor", "--startup-kit", self.kit("admin"), "--username", self.admin, *args]
        return subprocess.run(self.network.command("admin", argv), capture_output=True, text=True, timeout=timeout)

    def wait_until_connected(self, timeout: float = 180) -> str:
        """Block until the server lists every site (the admin's ``check_status client``); its last output."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            try:
                out = self.admin_console(["check_status client"], timeout=60)
            except subprocess.TimeoutExpired:
                continue
            if all(site in out for site in self.sites):
                return out
            time.sleep(3)
        raise TimeoutError(f"sites not connected after {timeout:.0f} s; the admin console said:\n{out[-2000:]}")


# -- the paper's saving as time ------------------------------------------------------------------------------
LINK_JOB = {
    "model_type": "vit_b",
    "random_weights": True,
    "image_size": 256,
    "batch_size": 1,
    "max_steps_per_round": 2,
    "num_rounds": 2,
    "augment": False,
}  # ViT-B's tensors; the least compute that still trains
RUNS = {"flap": {"preset": "flap"}, "flap int8": {"preset": "flap", "transport": "int8"}, "fft": {"preset": "fft"}}
_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def job_times(server_job_log: str) -> dict:
    """Round wall times (``Round N started`` to ``Round N finished``) and the job's, first to last log line, in s."""
    stamps = [m.group(1) for m in re.finditer(_STAMP, server_job_log, re.MULTILINE)]
    marks = {
        (int(n), what): _seconds(stamp)
        for stamp, n, what in re.findall(_STAMP + r".*Round (\d+) (started|finished)", server_job_log, re.MULTILINE)
    }
    rounds = [marks[(r, "finished")] - marks[(r, "started")] for r in sorted({r for r, _ in marks}) if (r, "finished") in marks]
    return {"rounds_s": rounds, "federation_s": _seconds(stamps[-1]) - _seconds(stamps[0]) if stamps else None}


def time_federation(deployment: Deployment, job: str, env: dict, timeout: float) -> dict:
    """One federation on ``deployment`` (network built and taken down here): status, round and job wall times,
    and the bytes the server received from each site per round."""
    results = os.path.join(deployment.workspace, "results")
    with deployment.network:
        deployment.start("server")
        for site in deployment.sites:
            deployment.start(site, env)
        deployment.wait_until_connected()
        done = deployment.monitor("--submit", job, "--download", results, "--poll", "3", "--timeout", str(timeout))
    job_id = next((line.split()[-1] for line in done.stdout.splitlines() if line.startswith("following job ")), None)
    status = next((line.split()[-1] for line in done.stdout.splitlines() if job_id and line.startswith(f"job {job_id}: ")), "?")
    log = os.path.join(results, job_id or "-", "workspace", "log.txt")
    times = (
        job_times(Path(log).read_text(encoding="utf-8", errors="replace"))
        if os.path.isfile(log)
        else {"rounds_s": [], "federation_s": None}
    )
    traffic_file = os.path.join(results, job_id or "-", "workspace", "app_server", "traffic_summary.json")
    per_round = None
    if os.path.isfile(traffic_file):
        with open(traffic_file, encoding="utf-8") as f:
            sites = json.load(f)["sites"]
        per_round = max(r["received"] for s in sites.values() for r in s.get("train", {}).values())
    return {"status": status, **times, "bytes_per_site_round": per_round, "monitor": done.stdout[-3000:]}


def link_table(rates: list[float], runs: list[str], workspace: str, sites: int, job: str, timeout: float, say=print) -> list[dict]:
    """Every run of ``runs`` (names of ``RUNS``) at every rate of ``rates`` (Mbit/s; 0 = unshaped), one after the other."""
    from flap_sam.jobs.writer import write_job

    rows = []
    for rate in rates:
        for run in runs:
            tag = f"{run.replace(' ', '_')}_{rate:g}"
            folder = os.path.join(workspace, tag)
            shutil.rmtree(folder, ignore_errors=True)
            written = write_job(job, os.path.join(folder, "job"), {**LINK_JOB, **RUNS[run]})
            deployment = Deployment(
                folder,
                sites,
                rate or None,
                name=f"fslink{os.getpid() % 1000}",
                site_policy={"presets": ["flap", "fft"], "max_megabytes_per_result": 0},
            )
            deployment.provision()
            started = time.monotonic()
            row = {
                "run": run,
                "rate_mbit": rate,
                **time_federation(deployment, written, {"FLAP_SAM_DEMO_ROOT": os.path.join(workspace, "demo")}, timeout),
            }
            row["wall_s"] = time.monotonic() - started
            rows.append(row)
            say(
                f"{run} at {rate:g} Mbit/s: {row['status']}, rounds {', '.join(f'{t:.0f}' for t in row['rounds_s'])} s, "
                f"job {row['federation_s'] or 0:.0f} s, {row['bytes_per_site_round'] or 0:,} B per site and round"
            )
    return rows


def link_markdown(rows: list[dict], sites: int) -> str:
    """The table of ``link_table``'s rows, with ratios to ``flap`` at the same rate."""
    lines = [
        "| run | link (Mbit/s) | MB per site and round, each way | round (s) | federation (s) | federation / flap | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        flap = next((r for r in rows if r["run"] == "flap" and r["rate_mbit"] == row["rate_mbit"]), None)
        ratio = f"{row['federation_s'] / flap['federation_s']:.1f}x" if flap and flap["federation_s"] and row["federation_s"] else "-"
        rounds = " / ".join(f"{t:.0f}" for t in row["rounds_s"]) or "-"
        mb = f"{row['bytes_per_site_round'] / 1e6:.2f}" if row["bytes_per_site_round"] else "-"
        lines.append(
            f"| {row['run']} | {row['rate_mbit']:g} | {mb} | {rounds} | {row['federation_s'] or 0:.0f} | {ratio} | {row['status']} |"
        )
    return "\n".join(lines) + "\n"


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def links_main(argv: list[str]) -> int:
    """``hospital_network.py links``: the table of round and federation wall times per run and link rate."""
    parser = argparse.ArgumentParser(prog="hospital_network.py links", description=link_table.__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 100.0], help="site link rates, Mbit/s (0: unshaped)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--job", default=os.path.join(REPO, "jobs", "kits_lora"))
    parser.add_argument("--workspace", default="/tmp/flap_sam_links")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one federation may take")
    parser.add_argument("--out", default=None, help="also write the table and the rows (.json beside it) here")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = link_table(args.rates, args.runs, args.workspace, args.sites, args.job, args.timeout, say=lambda line: print(line, flush=True))
    table = link_markdown(rows, args.sites)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(
                f"Made {started} by `sudo python poc/hospital_network.py links {' '.join(argv)}`: "
                f"{args.sites} hospitals, settings {json.dumps(LINK_JOB)}.\n\n" + table
            )
        with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["status"] == "FINISHED:COMPLETED" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reason = can_build_networks()
    if reason:
        print(f"hospital_network: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # so the network comes down
    if argv[:1] == ["links"]:
        return links_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=os.path.join(REPO, "jobs", "kits_lora"))
    parser.add_argument("--sites", type=int, default=2, help="the first N hospitals of provisioning/project.yml")
    parser.add_argument("--rate", type=float, default=20.0, help="every hospital's link, Mbit/s each way (0: unshaped)")
    parser.add_argument("--workspace", default="/tmp/flap_sam_network")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="job settings to change (flap-sam job)")
    parser.add_argument("--hold", action="store_true", help="after the job, keep the network up until Ctrl-C")
    args = parser.parse_args(argv)

    from flap_sam.jobs.writer import parse_settings, write_job

    deployment = Deployment(args.workspace, args.sites, args.rate or None)
    job = write_job(args.job, os.path.join(deployment.workspace, "jobs", os.path.basename(args.job)), parse_settings(args.set))
    started = time.monotonic()
    code = 1
    deployment.provision()
    try:
        with deployment.network as network:
            print(
                f"network {network.name}: server {deployment.server_name} at {SERVER_ADDRESS}; "
                + ", ".join(f"{s} at {network.addresses[s]}" for s in deployment.sites)
                + (f"; site links {args.rate:g} Mbit/s each way" if args.rate else "; links unshaped"),
                flush=True,
            )
            deployment.start("server")
            for site in deployment.sites:
                deployment.start(site)
            print(deployment.wait_until_connected(), flush=True)
            done = subprocess.run(
                network.command(
                    "admin",
                    [
                        sys.executable,
                        "-m",
                        "flap_sam.cli.main",
                        "monitor",
                        "--startup-kit",
                        deployment.kit("admin"),
                        "--username",
                        deployment.admin,
                        "--submit",
                        job,
                        "--download",
                        os.path.join(deployment.workspace, "results"),
                        "--poll",
                        "3",
                    ],
                )
            )
            code = done.returncode
            if args.hold:
                print(
                    "holding the network up: `ip netns exec "
                    f"{network.namespace('admin')} bash {deployment.kit('admin')}/startup/fl_admin.sh` is the admin's console; "
                    "Ctrl-C takes it down",
                    flush=True,
                )
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: taking the network down", flush=True)
    finally:
        print(f"stopped every process and removed the namespaces; wall time {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
