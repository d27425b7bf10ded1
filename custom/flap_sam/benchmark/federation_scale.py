"""How the server and the protocol grow with the number of sites: real federations in FLARE's simulator or a POC.

Each federation runs a shipped job at a tiny budget (the test-size SAM, one step a round, every site on
one shared demo site's data), so what is measured is the server and the protocol, not training. From
each run: the peak resident memory of the server (the simulator's server process, ``RunUsage.server_rss``;
in a POC, FLARE's server process and its job process together, sampled every second),
per round its wall time and the aggregation's (the server's ``Round N started`` / ``Start aggregation`` /
``End aggregation`` / ``Round N finished`` lines), the bytes the server received (``TrafficMeter``), and
the server process's memory at each round's end: a long run says whether it grows per round.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np

from flap_sam.benchmark.payloads import growth_exponent
from flap_sam.data.demo import ensure_demo_site
from flap_sam.files import SERVER_APP, SIMULATOR_JOB, TRAFFIC_FILE, markdown_table, write_json, write_text
from flap_sam.jobs.recipe import FlapSamRecipe, make_env
from flap_sam.jobs.simulator import output_tail, run_simulator
from flap_sam.jobs.writer import source_job, write_job

MIB = 2**20
# The federation every count runs: the server's and the protocol's work, at the least training there is.
TINY_FEDERATION = {
    "model_type": "vit_test",
    "image_size": 64,
    "rank": 4,
    "random_weights": True,
    "max_steps_per_round": 1,
    "batch_size": 1,
    "warmup_steps": 0,
    "augment": False,
    "round_inference": "centre",
    "final_inference": "centre",
    "cpu_threads": 1,
    "data_workers": 0,
}
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


@dataclass(frozen=True)
class ScaleRun:
    """One federation of ``sites`` sites: what its server cost.

    Attributes:
        env: ``sim`` (FLARE's simulator) or ``poc`` (a POC: every site and the server separate processes).
        peak_server_mib: peak resident memory of the server, MiB (the simulator's server process; a POC's server
            process and its job process together).
        round_s / aggregation_s: the median round's wall time and its aggregation's, seconds.
        received_mb_per_round: MB (10**6 bytes) the server received per round, all sites together.
        server_mib_at_round_end: the server process's memory at the end of each round, MiB.
        memory_growth_kib_per_round: the slope of a line through those (second half of the rounds), KiB per round.
    """

    sites: int
    rounds: int
    wall_s: float
    peak_server_mib: float
    round_s: float
    aggregation_s: float
    received_mb_per_round: float
    server_mib_at_round_end: tuple[float, ...]
    memory_growth_kib_per_round: float | None
    env: str = "sim"


def _log_times(log_text: str, pattern: re.Pattern[str]) -> list[float]:
    """Epoch seconds of every server log line that ``pattern`` finds."""
    times = []
    for line in log_text.splitlines():
        stamp = _LOG_TIME.match(line)
        if stamp and pattern.search(line):
            times.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def round_times(log_text: str) -> tuple[list[float], list[float], list[float]]:
    """(round wall seconds, aggregation seconds, round end times) from a server's ``log.txt`` (FLARE's ScatterAndGather lines)."""
    started = _log_times(log_text, re.compile(r" - Round \d+ started\."))
    finished = _log_times(log_text, re.compile(r" - Round \d+ finished\."))
    agg_start, agg_end = _log_times(log_text, re.compile("Start aggregation")), _log_times(log_text, re.compile("End aggregation"))
    rounds = [f - s for s, f in zip(started, finished)]
    aggregations = [e - s for s, e in zip(agg_start, agg_end)]
    return rounds, aggregations, finished


def run_federation(job: str, sites: int, rounds: int, workspace: str, data_root: str, threads: int, timeout: float) -> ScaleRun:
    """One federation of ``sites`` sites and ``rounds`` rounds of ``job`` (a job folder or a shipped job's name)."""
    folder = os.path.join(workspace, f"job-{sites}")
    settings = {**TINY_FEDERATION, "num_rounds": rounds, "min_clients": sites, "data_root": data_root}
    write_job(source_job(job), folder, settings)
    run_dir = os.path.join(workspace, f"run-{sites}")
    result = run_simulator(folder, run_dir, sites, timeout=timeout, threads=threads)
    if result.returncode != 0:
        raise RuntimeError(f"{sites} sites: the simulator failed: {output_tail(result)}")
    server = os.path.join(run_dir, "server")
    with open(os.path.join(server, "log.txt"), encoding="utf-8", errors="replace") as f:
        log_text = f.read()
    traffic = os.path.join(run_dir, SIMULATOR_JOB, SERVER_APP, TRAFFIC_FILE)
    return _scale_run("sim", sites, rounds, log_text, traffic, result.usage.server_rss, result.usage.started_at, result.usage.wall_s)


def _scale_run(
    env: str,
    sites: int,
    rounds: int,
    log_text: str,
    traffic_file: str,
    samples: tuple[tuple[float, int], ...],
    started_at: float,
    wall_s: float,
) -> ScaleRun:
    """A run's figures from its server's log, its traffic file and the server's (seconds after ``started_at``, bytes) samples."""
    round_s, aggregation_s, ends = round_times(log_text)
    if len(round_s) != rounds:
        raise RuntimeError(f"{sites} sites ({env}): the server's log shows {len(round_s)} finished rounds, not {rounds}")
    with open(traffic_file, encoding="utf-8") as f:
        received = json.load(f)["totals"]["received"]
    at_end = [_rss_at(samples, end - started_at) / MIB for end in ends]
    return ScaleRun(
        sites=sites,
        rounds=rounds,
        wall_s=round(wall_s, 1),
        peak_server_mib=round(max((rss for _, rss in samples), default=0) / MIB, 1),
        round_s=round(float(np.median(round_s)), 2),
        aggregation_s=round(float(np.median(aggregation_s)), 3) if aggregation_s else 0.0,
        received_mb_per_round=round(received / 1e6 / rounds, 2),
        server_mib_at_round_end=tuple(round(x, 1) for x in at_end),
        memory_growth_kib_per_round=_growth(at_end),
        env=env,
    )


def _poc_processes(poc_workspace: str) -> list:
    """The processes started from ``poc_workspace`` (its start scripts, FLARE's server, sites and their jobs)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info.get("status") != psutil.STATUS_ZOMBIE and poc_workspace in " ".join(process.info.get("cmdline") or []):
            found.append(process)
    return found


def _poc_server_rss(poc_workspace: str) -> int:
    """Resident bytes of the POC's server now: FLARE's server process and its job process (0 when neither runs)."""
    import psutil

    total = 0
    for process in _poc_processes(poc_workspace):
        try:
            if "nvflare.private.fed.app.server" in " ".join(process.cmdline()):
                total += int(process.memory_info().rss)
        except psutil.Error:  # it ended while read
            pass
    return total


def _end_poc(poc_workspace: str, grace: float = 30.0) -> None:
    """After FLARE stopped the POC: wait ``grace`` seconds for its processes (start scripts poll for the stop) to end,
    then kill what is left, so the next count's POC starts on free ports."""
    import psutil

    _gone, alive = psutil.wait_procs(_poc_processes(poc_workspace), timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def run_poc_federation(job: str, sites: int, rounds: int, workspace: str, data_root: str, timeout: float) -> ScaleRun:
    """One federation of ``sites`` sites and ``rounds`` rounds of ``job`` in a fresh POC (FLARE's ``PocEnv``: the
    server and every site separate processes, under ``workspace/poc-N``, removed after its result is read)."""
    poc = os.path.abspath(os.path.join(workspace, f"poc-{sites}"))
    settings = {**TINY_FEDERATION, "num_rounds": rounds, "min_clients": sites, "data_root": data_root}
    before = os.environ.get("NVFLARE_POC_WORKSPACE")
    os.environ["NVFLARE_POC_WORKSPACE"] = poc  # where FLARE's PocEnv prepares its POC
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    started_at, started = time.time(), time.monotonic()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append((round(time.time() - started_at, 1), _poc_server_rss(poc)))

    sampler = threading.Thread(target=sample, daemon=True)
    env = None
    try:
        recipe = FlapSamRecipe(job, name=f"scale-{sites}", env="poc", **settings)
        env = make_env("poc", sites)
        sampler.start()
        run = recipe.execute(env)
        result = run.get_result(timeout=timeout, clean_up=False)
        status = run.get_status()
        if not result or "COMPLETED" not in str(status):
            raise RuntimeError(f"{sites} sites (poc): the job ended {status}, result {result}")
        logs = [os.path.join(d, "log.txt") for d, _, files in os.walk(result) if "log.txt" in files]
        server_log = next((p for p in logs if os.path.basename(os.path.dirname(p)) == "workspace"), None)
        traffic = next((os.path.join(d, TRAFFIC_FILE) for d, _, files in os.walk(result) if TRAFFIC_FILE in files), None)
        if server_log is None or traffic is None:
            raise RuntimeError(f"{sites} sites (poc): the job's result {result} holds no server log or {TRAFFIC_FILE}")
        with open(server_log, encoding="utf-8", errors="replace") as f:
            log_text = f.read()
        wall_s = time.monotonic() - started
        return _scale_run("poc", sites, rounds, log_text, traffic, tuple(s for s in samples if s[1] > 0), started_at, wall_s)
    finally:
        done.set()
        if env is not None:
            env.stop(clean_up=True)
            _end_poc(poc)
        if before is None:
            os.environ.pop("NVFLARE_POC_WORKSPACE", None)
        else:
            os.environ["NVFLARE_POC_WORKSPACE"] = before


def _rss_at(samples: tuple[tuple[float, int], ...], seconds: float) -> float:
    """The last sample at or before ``seconds`` after the start (the first sample before any)."""
    earlier = [rss for t, rss in samples if t <= seconds]
    return float(earlier[-1] if earlier else samples[0][1]) if samples else float("nan")


def _growth(mib_at_round_end: list[float]) -> float | None:
    """KiB per round: the slope through the second half of the rounds (the first fill caches and buffers)."""
    tail = [x for x in mib_at_round_end[len(mib_at_round_end) // 2 :] if np.isfinite(x)]
    if len(tail) < 3:
        return None
    return round(float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) * 1024, 1)


def scale_table(runs: list[ScaleRun]) -> str:
    """Sites as rows: server memory, round and aggregation time, MB received per round; then how each grows."""
    keys = ("peak_server_mib", "round_s", "aggregation_s", "received_mb_per_round")
    rows = [[str(r.sites), *(f"{getattr(r, k):g}" for k in keys)] for r in runs]
    exponents = [growth_exponent([asdict(r) for r in runs], k) for k in keys]  # the bench's, on these runs
    rows.append(["growth exponent (1 = linear)", *("-" if e is None else f"{e:.2f}" for e in exponents)])
    return markdown_table(["sites", "server peak MiB", "round s (median)", "aggregation s (median)", "MB received a round"], rows)


def memory_table(run: ScaleRun) -> str:
    """A long run's server memory at round ends (every tenth round) and its growth per round."""
    marks = sorted({*range(0, run.rounds, max(1, run.rounds // 10)), run.rounds - 1})
    rows = [[str(i + 1), f"{run.server_mib_at_round_end[i]:g}"] for i in marks]
    growth = "-" if run.memory_growth_kib_per_round is None else f"{run.memory_growth_kib_per_round:g}"
    rows.append([f"growth over the second half (KiB a round), {run.sites} sites", growth])
    return markdown_table(["after round", "server MiB"], rows)


def run_scale(
    job: str,
    site_counts: list[int],
    rounds: int,
    out: str,
    threads: int = 8,
    memory_rounds: int = 0,
    memory_sites: int = 8,
    env: str = "sim",
) -> dict[str, object]:
    """Every federation (``env``: ``sim``, FLARE's simulator, or ``poc``, a POC per count), then the tables
    (``scale.md``) and the numbers (``scale.json``) in ``out``."""
    if env not in ("sim", "poc"):
        raise ValueError(f"--env {env}: choose sim or poc")
    os.makedirs(out, exist_ok=True)
    data_root = ensure_demo_site("kits", "site-1", os.path.join(out, "demo"))

    def federation(sites: int, rounds: int, workspace: str, timeout: float) -> ScaleRun:
        if env == "poc":
            return run_poc_federation(job, sites, rounds, workspace, data_root, timeout)
        return run_federation(job, sites, rounds, workspace, data_root, min(threads, sites), timeout)

    where = "FLARE's simulator" if env == "sim" else "a POC (separate processes)"
    runs = []
    for sites in site_counts:
        print(f"{sites} sites, {rounds} rounds ({env}) ...", flush=True)
        runs.append(federation(sites, rounds, out, timeout=3600))
    text = f"## A federation's server, from {site_counts[0]} to {site_counts[-1]} sites, in {where}\n\n" + scale_table(runs) + "\n"
    record: dict[str, object] = {"env": env, "runs": [asdict(r) for r in runs]}
    if memory_rounds:
        print(f"{memory_sites} sites, {memory_rounds} rounds (the server's memory) ...", flush=True)
        long_run = federation(memory_sites, memory_rounds, os.path.join(out, "long"), 7200)
        text += f"\n## The server's memory over {memory_rounds} rounds\n\n" + memory_table(long_run) + "\n"
        record["memory_run"] = asdict(long_run)
    write_text(os.path.join(out, "scale.md"), text)
    write_json(os.path.join(out, "scale.json"), record)
    print(text)
    return record
