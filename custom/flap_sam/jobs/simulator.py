"""Running a job folder in FLARE's simulator from Python (``flap-sam simulate``, ``sweep``, benchmarks, tests).

Jobs that ``flap-sam job`` writes carry no code, so FLARE checks their components against the
site's ``class_allow_list``; ``prepare_workspace`` gives the simulator's sites and server the
same allow-list the provisioned kits carry (``flap_sam.provisioning``), so a job that runs here
uses only components a hospital's kit accepts; a measurement job (an attack simulation,
``is_measurement_job``) gets the attack simulation's components allowed besides.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from flap_sam.files import write_json
from flap_sam.jobs.writer import is_measurement_job
from flap_sam.provisioning.policy_files import class_allow_list

PORT_RACE = "Address already in use"


@dataclass(frozen=True)
class RunUsage:
    """What a simulator run cost on this machine.

    Attributes:
        wall_s: seconds from start to end.
        cpu_s: CPU seconds (user + system) of the simulator and every process it waited for (server and sites).
        peak_process_rss_bytes: the largest resident memory any one of its processes reached (a site's, on
            these runs), sampled every 2 s.
        server_rss: (seconds since the start, resident bytes) of the simulator's server process, every 2 s: of
            the simulator's own processes (not a site's ``simulator_worker``) the largest, the one that runs the
            server and starts the sites' workers.
        started_at: the start, in seconds since the epoch (what the FLARE logs' times are read against).
    """

    wall_s: float
    cpu_s: float
    peak_process_rss_bytes: int
    server_rss: tuple[tuple[float, int], ...] = ()
    started_at: float = 0.0


class SimulatorRun(subprocess.CompletedProcess):
    """A finished simulator run (its return code and output) and its ``usage``."""

    def __init__(self, args, returncode: int, stdout: str, stderr: str, usage: RunUsage) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.usage = usage


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_rss(pid: int) -> tuple[int, int | None]:
    """(the resident bytes of the largest process in ``pid``'s tree, of the largest that is not a site's worker: the
    simulator's server) now; (0, None) once the tree is gone."""
    import psutil

    largest, server = 0, None
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            rss = int(process.memory_info().rss)
            largest = max(largest, rss)
            if "simulator_worker" not in " ".join(process.cmdline()):
                server = max(server or 0, rss)
    except psutil.Error:  # a process ended while it was read
        pass
    return largest, server


def _lost_port_race(workspace: str) -> bool:
    for log in glob.glob(os.path.join(workspace, "*", "log.txt")):
        with open(log, encoding="utf-8", errors="replace") as f:
            if PORT_RACE in f.read():
                return True
    return False


def prepare_workspace(workspace: str, measurement: bool = False) -> None:
    """``WORKSPACE/local/resources.json`` with the kits' ``class_allow_list`` (FLARE's simulator keeps ``local/`` between runs
    and copies it to every participant); ``measurement``: the attack simulation's components too."""
    os.makedirs(os.path.join(workspace, "local"), exist_ok=True)
    allowed = class_allow_list(measurement=measurement)
    write_json(
        os.path.join(workspace, "local", "resources.json"),
        {"format_version": 2, "class_list_enforcement_mode": "enforce", "class_allow_list": allowed},
    )


def simulator_command(job: str, workspace: str, n_clients: int, threads: int | None = None) -> list[str]:
    """``nvflare simulator JOB -w WORKSPACE -n N -t T`` as an argument list: T = N by default (one worker process a site,
    no swapping between sites); fewer run the sites in turn."""
    threads = threads or n_clients
    return [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-n", str(n_clients), "-t", str(threads)]


def run_simulator(
    job: str,
    workspace: str,
    n_clients: int,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    attempts: int = 2,
    threads: int | None = None,
) -> SimulatorRun:
    """``nvflare simulator JOB -w WORKSPACE -n N -t N`` in a subprocess, in a ``prepare_workspace``; returns the
    completed process with what it cost (``SimulatorRun.usage``).

    FLARE 2.9's simulator now and then loses a race for a local port when it starts a site's
    worker process ("Address already in use" in that site's log.txt) and then waits for the
    worker for ever. Such a run is stopped and started again in a clean workspace, up to
    ``attempts`` times in all.

    Args:
        env: variables added to this process's environment.
        timeout: seconds before the run is stopped (None: no limit).
        threads: the simulator's worker processes (``-t``; default one a site).

    Raises:
        subprocess.TimeoutExpired: the run took longer than ``timeout``.
    """
    cmd = simulator_command(job, workspace, n_clients, threads)
    full_env = {**os.environ, **(env or {})}
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            shutil.rmtree(workspace, ignore_errors=True)
        prepare_workspace(str(workspace), measurement=is_measurement_job(job))
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            started, started_at, cpu_before, peak = time.monotonic(), time.time(), _children_cpu_seconds(), 0
            server_rss: list[tuple[float, int]] = []
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=full_env, start_new_session=True)
            deadline, raced = time.monotonic() + timeout if timeout else float("inf"), False
            while proc.poll() is None:
                largest, server = _tree_rss(proc.pid)
                peak = max(peak, largest)
                if server is not None:
                    server_rss.append((round(time.monotonic() - started, 1), server))
                raced = attempt < attempts and _lost_port_race(str(workspace))
                if raced or time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    if not raced:
                        raise subprocess.TimeoutExpired(cmd, timeout or 0.0)
                    break
                time.sleep(2)
            out.seek(0)
            err.seek(0)
            usage = RunUsage(time.monotonic() - started, _children_cpu_seconds() - cpu_before, peak, tuple(server_rss), started_at)
            result = SimulatorRun(cmd, proc.returncode, out.read(), err.read(), usage)
        if not raced:
            return result
    return result


def output_tail(result: subprocess.CompletedProcess, lines: int = 5) -> str:
    """The last lines of a run's output, on one line."""
    return " | ".join((result.stdout + result.stderr).strip().splitlines()[-lines:])
