"""Real deployments on this machine: provisioning, a POC federation of separate FLARE processes, a site that
cannot start. The faults of a network (cut links, a crashed server) are in ``test_hospital_network.py``.

Every test here starts real NVFlare server and client processes (``nvflare poc``) or runs
``nvflare provision``; nothing is mocked. They are slow (about a minute each).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flap_sam.cli.monitor import follow
from flap_sam.jobs.writer import write_job
from flap_sam.model.factory import ModelSpec, exchange_schema

from jobtools import REPO, TEST_MODEL, TEST_TRAINING, server_job_log

sys.path.insert(0, str(REPO / "poc"))
import run_poc

QUICK = {**TEST_MODEL, **TEST_TRAINING, "max_steps_per_round": 5, "cross_site_timeout": 60}


def _job(tmp_path: Path, **settings) -> str:
    return write_job(str(REPO / "jobs" / "kits_lora"), str(tmp_path / "job"), {**QUICK, **settings})


def _run_script(script: Path, *args: str) -> str:
    """Run a Python script of the repository as a user would, to its end; its output (exit status 0 asserted)."""
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=900, env=os.environ.copy())
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return out


@pytest.fixture
def poc(tmp_path, monkeypatch):
    """A POC workspace; whatever a test starts there is stopped afterwards."""
    monkeypatch.setenv("FLAP_SAM_DEMO_ROOT", str(tmp_path / "demo"))
    workspace = str(tmp_path / "poc")
    yield workspace
    run_poc.stop(workspace, grace=0)  # nothing to keep: no orderly stop
    assert not run_poc._workspace_processes(workspace), "POC processes left running"


@pytest.mark.slow
def test_provisioning_gives_tls_kits_and_job_rights_only_to_admin_and_leads(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(REPO / "provisioning" / "project.yml"), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    kits = tmp_path / "flap_sam_fed_kits" / "prod_00"
    project = yaml.safe_load((REPO / "provisioning" / "project.yml").read_text())
    hospitals = [p["name"] for p in project["participants"] if p["type"] == "client"]
    assert hospitals == [f"hospital-{c}" for c in "abcdef"]
    for hospital in hospitals:
        startup = kits / hospital / "startup"
        assert {"client.crt", "client.key", "rootCA.pem", "start.sh"} <= set(os.listdir(startup))
    roles = {p["name"]: p.get("role") for p in project["participants"] if p["type"] == "admin"}
    assert sorted(set(roles.values())) == ["lead", "project_admin"]  # no org_admin, no member
    assert list(roles.values()).count("project_admin") == 1
    orgs = [p["org"] for p in project["participants"] if p["type"] == "client"]
    assert len(set(orgs)) == len(orgs)  # one org per hospital


@pytest.mark.slow
def test_poc_runs_a_federation_of_separate_processes_to_completion(tmp_path, poc):
    job = _job(tmp_path, num_rounds=2)
    started = time.monotonic()
    out = _run_script(REPO / "poc" / "run_poc.py", "--job", job, "--workspace", poc)
    for round_ in (0, 1):  # every round once, with each site's Dice, however fast rounds finish between polls
        assert out.count(f"round {round_}/2: aggregated 2 site(s) [site-1 Dice") == 1, out[-4000:]
    assert "FINISHED:COMPLETED" in out and "stopped all POC processes" in out
    results = list(Path(poc, "results").rglob("FL_global_model.pt"))
    assert results, "the downloaded result has no global model"
    state = torch.load(results[0], weights_only=True)["model"]
    assert set(state) == set(exchange_schema(ModelSpec("vit_test", 64, 2, "flap", 4)))
    assert list(Path(poc, "results").rglob("cross_val_results.json"))
    assert not run_poc._workspace_processes(poc)
    # Nothing about the sites' volumes reached the server: no data path, no case file name, in
    # any log, metric, TensorBoard event or model file the server holds or the admin downloaded.
    server_side = [*Path(run_poc.kit(poc, "server")).rglob("*"), *Path(poc, "results").rglob("*")]
    site_secrets = [str(tmp_path / "demo").encode(), b"demo_00", b"imagesTr"]
    for path in (p for p in server_side if p.is_file()):
        content = path.read_bytes()
        assert not any(secret in content for secret in site_secrets), f"{path} holds site data information"
    # What the admin's show_errors lists comes from these logs: only real problems, none on a clean run.
    server_log = server_job_log(poc)
    assert "No formatter provided" not in server_log and "Aggregation_weight missing" not in server_log
    print(f"POC wall time {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_the_job_api_in_poc_keeps_the_result_after_the_poc_is_removed(tmp_path, poc, monkeypatch):
    """``python jobs/kits_lora/job.py --env poc`` (FLARE's PocEnv, real processes): the final status, and a result
    folder that exists after FLARE removed its POC workspace, holding the global model."""
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", poc)
    settings = [f"{k}={v}" for k, v in {**QUICK, "num_rounds": 1}.items()]
    results = tmp_path / "results"
    out = _run_script(REPO / "jobs" / "kits_lora" / "job.py", "--env", "poc", "--results", str(results), "--set", *settings)
    last = [line for line in out.splitlines() if line.startswith("job ")][-1]
    assert ": FINISHED:COMPLETED; result: " in last, last
    kept = Path(last.split("; result: ")[1])
    assert kept.parent == results and kept.is_dir()
    assert list(kept.rglob("FL_global_model.pt")), f"{kept} holds no global model"
    assert not Path(poc).exists(), "FLARE's POC workspace was left behind"


@pytest.mark.slow
def test_the_scale_command_in_a_poc_measures_the_servers_processes_and_leaves_nothing_running(tmp_path, monkeypatch):
    """``flap-sam scale --env poc``: a fresh POC (FLARE's PocEnv: the server and each site separate processes) per
    site count; every round finished, the server's processes sampled, the POC removed with nothing left running."""
    from flap_sam.cli.main import main

    monkeypatch.delenv("NVFLARE_POC_WORKSPACE", raising=False)
    out = tmp_path / "scale"
    assert main(["scale", "--env", "poc", "--sites", "2", "--rounds", "2", "--out", str(out)]) == 0
    record = json.loads((out / "scale.json").read_text())
    (run,) = record["runs"]
    assert record["env"] == "poc" and run["env"] == "poc" and run["sites"] == 2 and len(run["server_mib_at_round_end"]) == 2
    assert run["peak_server_mib"] > 50 and 0 < run["aggregation_s"] < run["round_s"] and run["received_mb_per_round"] > 0
    assert "in a POC (separate processes)" in (out / "scale.md").read_text()
    assert not (out / "poc-2").exists() and not run_poc._workspace_processes(str(out / "poc-2"))
    assert "NVFLARE_POC_WORKSPACE" not in os.environ  # put back as it was


@pytest.mark.slow
def test_a_hospital_provisioned_later_joins_with_the_projects_ca_and_starts_from_the_current_global_adapter(tmp_path, poc):
    """Dynamic provisioning (``nvflare provision --add_client``) into the running POC project: the new kit carries
    the project's root CA and its site policy, connects, and the next job (``start_from`` the finished job) sends it
    the finished job's global adapter as its first model (digests equal); it is scored before and after it trains."""
    from flap_sam.model.adapter_file import read_adapter_file, weights_digest

    run_poc.prepare(poc, ["site-1", "site-2"])
    run_poc.start(poc)
    session = run_poc.connect(poc, ["site-1", "site-2"])
    try:
        first = session.submit_job(_job(tmp_path, num_rounds=1))
        session.monitor_job(first, timeout=300)
        assert session.get_job_meta(first)["status"] == "FINISHED:COMPLETED"
        # The finished job's adapter, downloaded by the admin and handed to the server (one machine here).
        downloaded = Path(session.download_job_result(first, str(tmp_path / "first")))
        finished = tmp_path / "consortium_adapter.pt"
        shutil.copy(next(downloaded.rglob("FL_global_model.pt")), finished)
        current = weights_digest(read_adapter_file(str(finished))[0])

        (tmp_path / "site-3.yml").write_text("name: site-3\norg: org_site_3\n")
        project_file = poc.rstrip(os.sep) + "_project.yml"
        cmd = [
            sys.executable,
            "-m",
            "nvflare.cli",
            "provision",
            "-p",
            project_file,
            "-w",
            poc,
            "--add_client",
            str(tmp_path / "site-3.yml"),
        ]
        subprocess.run([*cmd, "--force"], check=True, capture_output=True)
        project = Path(run_poc.kit(poc, "server")).parent.parent
        new_kit = project / "prod_01" / "site-3"
        assert (new_kit / "startup" / "rootCA.pem").read_bytes() == (
            Path(run_poc.kit(poc, "server")) / "startup" / "rootCA.pem"
        ).read_bytes()
        assert (new_kit / "local" / "privacy.json").is_file(), "the new kit lacks the project's site policy"
        config = new_kit / "startup" / "fed_client.json"
        config.write_text(config.read_text().replace('"server:', '"localhost:'))  # as `nvflare poc prepare` does for its kits
        with open(tmp_path / "site-3_console.txt", "w") as console:
            subprocess.run(
                ["bash", str(new_kit / "startup" / "start.sh")],
                check=True,
                cwd=new_kit,
                env=os.environ.copy(),
                stdout=console,
                stderr=console,
            )
        session.close()
        session = run_poc.connect(poc, ["site-1", "site-2", "site-3"])
        second = session.submit_job(
            write_job(
                str(REPO / "jobs" / "kits_lora"),
                str(tmp_path / "job2"),
                {**QUICK, "num_rounds": 1, "min_clients": 3, "start_from": str(finished)},
            )
        )
        session.monitor_job(second, timeout=300)
        assert session.get_job_meta(second)["status"] == "FINISHED:COMPLETED"
        result = Path(session.download_job_result(second, str(tmp_path / "results")))
    finally:
        session.close()
    server_log = server_job_log(result)
    assert f"starting from the global adapter of {finished} ({current}): round 0 of 1" in server_log
    site_log = "".join(p.read_text(errors="replace") for p in new_kit.rglob("log.txt"))
    assert f"round 0: received the global adapter {current}" in site_log
    before = re.search(r"round 0: aggregating 3 site\(s\) .*validation Dice \{.*'site-3': ([0-9.]+)", server_log)
    assert before, "site-3 did not score the global adapter it received"
    after = json.loads(next(result.rglob("cross_val_results.json")).read_text())["site-3"]["SRV_FL_global_model.pt"]
    print(f"site-3 Dice of the global adapter: {float(before.group(1)):.4f} when it joined, {after['dice']:.4f} after its first round")


@pytest.mark.slow
def test_a_site_that_cannot_start_is_reported_and_does_not_hang_the_job(tmp_path, poc):
    job = _job(tmp_path, num_rounds=2, min_clients=2, demo_budget=False)  # site-2 sets its data_root locally
    run_poc.prepare(poc, ["site-1", "site-2"])
    local = Path(run_poc.kit(poc, "site-2"), "local")
    (local / "flap_sam_site.json").write_text(json.dumps({"data_root": str(tmp_path / "no_such_folder")}))
    run_poc.start(poc)
    session = run_poc.connect(poc, ["site-1", "site-2"])
    lines = []
    started = time.monotonic()
    try:
        job_id = session.submit_job(job)
        status = follow(session, job_id, str(tmp_path / "results"), poll=3.0, timeout=300, say=lines.append)
    finally:
        session.close()
    assert status.startswith("FINISHED") and status != "FINISHED:COMPLETED", "\n".join(lines)
    assert time.monotonic() - started < 300
    log = Path(run_poc.kit(poc, "site-2")).rglob("log.txt")
    text = "".join(p.read_text(errors="replace") for p in log)
    assert f"site site-2 cannot start: data_root {tmp_path / 'no_such_folder'}: no datalist found" in text
    # The admin sees which site failed and what kind of problem; the path itself stays on the site.
    assert any("site site-2 failed task train: it could not start: its data failed the start-up checks" in line for line in lines), (
        "\n".join(lines)
    )
    assert not any("no_such_folder" in line for line in lines)


def _provision(tmp_path: Path, name: str, port: int) -> Path:
    """This project's provisioning with the server on localhost: one federation with its own root CA."""
    project = yaml.safe_load((REPO / "provisioning" / "project.yml").read_text())
    server = next(p for p in project["participants"] if p["type"] == "server")
    server.update(name="localhost", fed_learn_port=port, admin_port=port)
    (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(project))
    subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(tmp_path / f"{name}.yml"), "-w", str(tmp_path / name)],
        check=True,
        capture_output=True,
    )
    return tmp_path / name / project["name"] / "prod_00"


def _start_kit(kit: Path, server: bool) -> subprocess.Popen:
    module = "server.server_train" if server else "client.client_train"
    config = "fed_server.json" if server else "fed_client.json"
    org = "coordinating_centre" if server else "hospital_a"
    cmd = [
        sys.executable,
        "-u",
        "-m",
        f"nvflare.private.fed.app.{module}",
        "-m",
        str(kit),
        "-s",
        config,
        "--set",
        "secure_train=true",
        f"org={org}",
        "config_folder=config",
    ] + ([] if server else [f"uid={kit.name}"])
    return subprocess.Popen(cmd, cwd=kit, stdout=open(kit / "console.txt", "w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


@pytest.mark.slow
def test_only_kits_of_this_provisioning_can_join(tmp_path):
    ours, other = _provision(tmp_path, "ours", 18402), _provision(tmp_path, "other", 18402)
    processes = []
    try:
        processes.append(_start_kit(ours / "localhost", server=True))
        server_log = ours / "localhost" / "log.txt"
        assert _wait_for(lambda: server_log.exists() and "Server started" in server_log.read_text(errors="replace"), 90)

        def joined() -> bool:
            return "Client: New client hospital-a" in server_log.read_text(errors="replace")

        processes.append(_start_kit(other / "hospital-a", server=False))  # same name, another federation's CA
        assert not _wait_for(joined, 25), "a client kit from another provisioning was accepted"
        processes.append(_start_kit(ours / "hospital-a", server=False))  # control: the federation's own kit joins
        assert _wait_for(joined, 60), server_log.read_text(errors="replace")[-2000:]
    finally:
        for proc in processes:
            proc.kill()
            proc.wait()
