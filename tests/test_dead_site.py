"""A site whose process dies within a round, in FLARE's simulator: the server names it and the job ends
within ``silent_site_timeout``, instead of waiting for its result for ever (``min_clients`` = every site).

The site is killed for real (SIGKILL of its simulator worker process); nothing is mocked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from flap_sam.jobs.writer import write_job

from jobtools import REPO, TEST_MODEL, TEST_TRAINING

SILENT_S = 20


@pytest.mark.slow
def test_a_site_killed_mid_round_is_named_and_the_job_stops_when_too_few_sites_remain(tmp_path):
    settings = {"max_steps_per_round": 40, "num_rounds": 4, "min_clients": 3, "cross_site_timeout": 60}
    job = write_job(
        str(REPO / "jobs" / "kits_lora"),
        str(tmp_path / "job"),
        {**TEST_MODEL, **TEST_TRAINING, **settings, "silent_site_timeout": SILENT_S, "progress_every_s": 1},
    )
    out = tmp_path / "out.txt"
    env = {**os.environ, "FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}
    cmd = [sys.executable, "-m", "flap_sam.cli.main", "simulate", job, "-w", str(tmp_path / "ws"), "-n", "3"]
    with open(out, "w") as sink:
        simulator = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    killed_at = None
    deadline = time.monotonic() + 600
    try:
        while simulator.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if killed_at is None and "Round 1 started" in out.read_text(errors="replace"):
                for process in psutil.Process(simulator.pid).children(recursive=True):
                    command = " ".join(process.cmdline())
                    if "simulator_worker" in command and "--client site-3" in command:
                        process.kill()
                        killed_at = time.monotonic()
        ended_at = time.monotonic()
    finally:
        if simulator.poll() is None:
            for process in psutil.Process(simulator.pid).children(recursive=True):
                process.kill()
            simulator.kill()
    log = out.read_text(errors="replace")
    assert killed_at is not None, log[-3000:]
    assert simulator.returncode is not None, "the simulator waited for the dead site for ever"
    assert ended_at - killed_at < SILENT_S + 120, log[-3000:]
    assert "site site-3: no result and no progress report for " in log
    assert "site-3 gone, 2 site(s) remain, fewer than min_clients (3): the job stops" in log, log[-3000:]
    assert re.search(r"resume_from=simulate_job \(it goes on from round [123]\)", log)  # the round it died in
    assert "site site-1: no result" not in log and "site site-2: no result" not in log
