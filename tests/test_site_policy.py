"""Each hospital decides what leaves it: the site policies the kits carry, and FLARE enforcing them.

Fast tests check the site's result filter and the policy documents. The slow ones provision the
shipped project file, and run a real POC federation (separate FLARE server and client processes)
prepared from it: every kit there carries the policy, as a provisioned hospital's does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from flap_sam.federated.filters import SITE_ERROR_HEADER, SITE_ERROR_KINDS, PresetResultFilter
from flap_sam.federated.site_policy import PolicyRefusal, SitePolicyFilter
from flap_sam.jobs.recipe import resolved_config
from flap_sam.jobs.simulator import prepare_workspace, simulator_command
from flap_sam.jobs.writer import SIDES, write_job
from flap_sam.model.factory import ModelSpec, exchange_schema
from flap_sam.provisioning.builder import SitePolicyBuilder
from flap_sam.provisioning.policy_files import AUTHORIZATION, SCOPES, class_allow_list

from jobtools import REPO, TEST_MODEL, TEST_TRAINING, server_job_log

sys.path.insert(0, str(REPO / "poc"))
import run_poc

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)
QUICK = {**TEST_MODEL, **TEST_TRAINING, "max_steps_per_round": 3, "num_rounds": 2, "cross_site_timeout": 60}


def _update(preset: str, kind: str = DataKind.WEIGHTS):
    schema = exchange_schema(ModelSpec("vit_test", 64, 2, preset, 4))
    return DXO(kind, data={name: np.zeros(shape, np.float32) for name, shape in schema.items()}).to_shareable()


def _refusal(result) -> str | None:
    return result.get_header(SITE_ERROR_HEADER) if result.get_return_code(ReturnCode.OK) != ReturnCode.OK else None


# ---- the site's result filter -------------------------------------------------------------------


def test_the_site_filter_lets_out_the_allowed_presets_tensors_unchanged():
    site = SitePolicyFilter(presets=["flap"])
    for preset in ("flap", "pdec_ft", "lora_ft"):  # flap, and what it contains
        update = _update(preset)
        assert site.process(update, FLContext()) is update
    metrics = DXO(DataKind.METRICS, data={"val_dice": 0.5}).to_shareable()
    assert site.process(metrics, FLContext()) is metrics


@pytest.mark.parametrize("preset", ["fft", "dec_ft", "attn_ft", "samed"])
def test_the_site_filter_refuses_a_result_with_any_tensor_its_presets_do_not_exchange(preset):
    result = SitePolicyFilter(presets=["flap"]).process(_update(preset), FLContext())
    assert _refusal(result) == "policy_tensors"
    assert result.get("DXO") is None and not result.get_header("__dxo__")  # nothing of the update is in the reply


def test_the_site_filter_holds_a_byte_ceiling_and_the_scopes_data_kind():
    flap_bytes = sum(4 * int(np.prod(s)) for s in exchange_schema(SPEC).values())
    assert SitePolicyFilter(["flap"], max_bytes_per_result=flap_bytes).check(_update("flap")) is None
    assert _refusal(SitePolicyFilter(["flap"], max_bytes_per_result=flap_bytes - 1).process(_update("flap"), FLContext())) == "policy_bytes"
    differences_only = SitePolicyFilter(["flap"], update_kinds=["WEIGHT_DIFF"])
    assert _refusal(differences_only.process(_update("flap"), FLContext())) == "policy_kind"
    assert _refusal(differences_only.process(_update("flap", DataKind.WEIGHT_DIFF), FLContext())) is None
    metrics = DXO(DataKind.METRICS, data={"val_dice": [0.5, 0.1]}).to_shareable()
    assert _refusal(differences_only.process(metrics, FLContext())) == "policy_kind"


@pytest.mark.parametrize(
    ("result", "policy", "kind", "reason"),
    [
        (lambda: Shareable(), {}, "policy_kind", "the result is not a DXO"),
        (
            lambda: DXO(DataKind.METRICS, data={"val_dice": "0.5"}).to_shareable(),
            {},
            "policy_kind",
            "metric 'val_dice' is not a plain number",
        ),
        (
            lambda: _update("flap", DataKind.WEIGHT_DIFF),
            {"update_kinds": ["WEIGHTS"]},
            "policy_kind",
            "data kind WEIGHT_DIFF; this scope sends only ['WEIGHTS']",
        ),
        (
            lambda: _update("dec_ft"),
            {},
            "policy_tensors",
            "tensor mask_decoder.transformer.layers.0.self_attn.q_proj.weight is not exchanged by the allowed preset(s) flap",
        ),
        (
            lambda: _update("flap"),
            {"max_bytes_per_result": 1000},
            "policy_bytes",
            "bytes of tensors, above the ceiling of 1,000 bytes per result",
        ),
    ],
)
def test_each_refusal_gives_its_kind_and_a_reason_naming_what_was_refused(result, policy, kind, reason, caplog):
    site = SitePolicyFilter(["flap"], **policy)
    with pytest.raises(PolicyRefusal) as refused:
        site.check(result())
    assert refused.value.kind == kind and reason in str(refused.value)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    with caplog.at_level(logging.ERROR):
        reply = site.process(result(), fl_ctx)
    assert _refusal(reply) == kind
    assert f"site policy refused the result of task train: {refused.value}" in caplog.text


def test_a_refusal_reaches_the_server_as_one_word_through_the_jobs_own_filters():
    refused = SitePolicyFilter(["flap"]).process(_update("fft"), FLContext())
    after_job_filter = PresetResultFilter(
        spec={"model_type": "vit_test", "image_size": 64, "rank": 4, "preset": "fft", "dataset": "kits"}
    ).process(refused, FLContext())
    assert after_job_filter.get_return_code() == ReturnCode.EXECUTION_RESULT_ERROR
    assert SITE_ERROR_KINDS[after_job_filter.get_header(SITE_ERROR_HEADER)].startswith("its site policy refused the result")
    error = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert SitePolicyFilter(["flap"]).process(error, FLContext()) is error  # an error reply carries no data


@pytest.mark.parametrize(
    "args, message",
    [
        ({"presets": ["lora_everything"]}, "preset 'lora_everything' is unknown"),
        ({"presets": "flap"}, "presets must be a non-empty list"),
        ({"max_bytes_per_result": -1}, "max_bytes_per_result must be a whole number >= 0"),
        ({"update_kinds": ["METRICS"]}, "update_kinds must be some of"),
    ],
)
def test_a_bad_site_policy_is_refused_in_one_line(args, message):
    with pytest.raises(ValueError, match=message):
        SitePolicyFilter(**args)


# ---- the policy documents ---------------------------------------------------------------------


def test_the_builder_refuses_a_bad_policy_in_one_line():
    with pytest.raises(ValueError, match="preset 'everything' is unknown"):
        SitePolicyBuilder(presets=["everything"])
    with pytest.raises(ValueError, match="percentile must be in"):
        SitePolicyBuilder(percentile=100)


def _component_paths(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["path"]} if isinstance(node.get("path"), str) else set()
        return found.union(*(_component_paths(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_component_paths(v) for v in node)) if node else set()
    return set()


@pytest.mark.parametrize("job", ["kits_lora", "ixi_lora", "prostate_lora", "chest_ct_lora"])
def test_the_allow_list_holds_every_component_the_jobs_use_and_no_other_nvflare_class(tmp_path, job):
    variants = [{}, {"tracking": "mlflow", "privacy": "percentile"}, {"tracking": "wandb", "privacy": "svt", "aggregation": "fedseca"}]
    paths = set()
    for i, settings in enumerate(variants):
        folder = write_job(str(REPO / "jobs" / job), str(tmp_path / f"{job}_{i}"), settings)
        for side in SIDES:
            paths |= _component_paths(resolved_config(folder, side))
    allowed = class_allow_list()
    assert all(p.startswith("flap_sam.") or p in allowed for p in paths), sorted(p for p in paths if p not in allowed)
    nvflare_used = {p for p in paths if not p.startswith("flap_sam.")}
    assert set(allowed) - {"flap_sam.federated."} == nvflare_used  # exactly what the jobs use


def test_a_job_made_by_flap_sam_job_carries_no_code_and_names_its_scope(tmp_path):
    out = write_job(str(REPO / "jobs" / "kits_lora"), str(tmp_path / "job"), {"scope": "flap_percentile", "privacy": "percentile"})
    assert not (Path(out) / "app" / "custom").exists()
    assert json.loads((Path(out) / "meta.json").read_text())["scope"] == "flap_percentile"
    assert (REPO / "jobs" / "kits_lora" / "app" / "custom" / "README.md").is_file()  # the shipped demo keeps its simulator marker
    with pytest.raises(ValueError, match=r"scope: 'a b' is not of the form \S+ \(a scope name: letters, digits"):
        write_job(str(REPO / "jobs" / "kits_lora"), str(tmp_path / "bad"), {"scope": "a b"})
    assert set(SCOPES) == {"flap", "flap_percentile"}


# ---- real FLARE: provisioning, simulator, POC ---------------------------------------------------


@pytest.mark.slow
def test_the_provisioned_kits_carry_each_sites_policy(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(REPO / "provisioning" / "project.yml"), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    project = yaml.safe_load((REPO / "provisioning" / "project.yml").read_text())
    kits = tmp_path / project["name"] / "prod_00"
    for participant in (p for p in project["participants"] if p["type"] in ("server", "client")):
        local = kits / participant["name"] / "local"
        resources = json.loads((local / "resources.json.default").read_text())
        assert resources["class_allow_list"][: len(class_allow_list())] == class_allow_list()
        assert resources["class_list_enforcement_mode"] == "enforce"
        assert json.loads((local / "authorization.json.default").read_text()) == AUTHORIZATION
        if participant["type"] == "client":
            privacy = json.loads((local / "privacy.json").read_text())
            assert [s["name"] for s in privacy["scopes"]] == list(SCOPES) and "default_scope" not in privacy
            site_filter = privacy["scopes"][0]["task_result_filters"][0]
            assert site_filter["args"] == {"presets": ["flap"], "max_bytes_per_result": 16_000_000}


@pytest.mark.slow
def test_a_job_written_for_the_simulator_runs_in_plain_nvflare_simulator(tmp_path, capsys):
    """``flap-sam job --for simulator``: the shipped job's app/custom/ marker (no code) kept, so FLARE's own
    ``nvflare simulator JOB -w WS`` runs it with no allow-list of ours (FLARE's BYOC); the default copy, for
    provisioned sites, has no such folder."""
    from flap_sam.cli.main import main

    settings = [f"{k}={json.dumps(v)}" for k, v in {**QUICK, "num_rounds": 1}.items()]
    job = tmp_path / "for_simulator"
    assert main(["job", "kits_lora", "--out", str(job), "--for", "simulator", "--set", *settings]) == 0
    assert f"nvflare simulator {job} -w WORKSPACE" in capsys.readouterr().out
    assert (job / "app" / "custom" / "README.md").read_text() == (REPO / "jobs" / "kits_lora" / "app" / "custom" / "README.md").read_text()
    assert main(["job", "kits_lora", "--out", str(tmp_path / "for_sites"), "--set", *settings]) == 0
    assert not (tmp_path / "for_sites" / "app" / "custom").exists()
    assert main(["job", str(tmp_path / "for_sites"), "--out", str(tmp_path / "again"), "--for", "simulator"]) == 0
    assert (tmp_path / "again" / "app" / "custom" / "README.md").is_file()  # a copy of a site's job gets the marker too
    workspace = tmp_path / "ws"
    done = subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(workspace), "-n", "2", "-t", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ComponentNotAuthorized" not in done.stdout + done.stderr
    assert not (workspace / "local" / "resources.json").exists()
    assert (workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt").is_file()


@pytest.mark.slow
def test_the_simulator_workspace_enforces_the_sites_allow_list(tmp_path):
    """Every simulator run of a job made by ``flap-sam job`` (all of this suite's) runs under the kits' allow-list;
    the control: the same workspace without flap_sam on it refuses the job's components."""
    job = write_job(str(REPO / "jobs" / "kits_lora"), str(tmp_path / "job"), {**QUICK, "num_rounds": 1})
    prepare_workspace(str(tmp_path / "ws"))
    resources = tmp_path / "ws" / "local" / "resources.json"
    policy = json.loads(resources.read_text())
    assert policy["class_allow_list"] == class_allow_list() and policy["class_list_enforcement_mode"] == "enforce"
    policy["class_allow_list"].remove("flap_sam.federated.")
    resources.write_text(json.dumps(policy))
    refused = subprocess.run(
        simulator_command(job, str(tmp_path / "ws"), 2),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")},
    )
    assert refused.returncode != 0
    assert "Component 'flap_sam.federated." in refused.stdout + refused.stderr and "is not in allow_list" in refused.stdout + refused.stderr


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A running POC federation prepared from the shipped project file: server, site-1, site-2, the
    project admin and one lead per site (own org each); stopped at the end of the module."""
    root = tmp_path_factory.mktemp("site_policy")
    os.environ["FLAP_SAM_DEMO_ROOT"] = str(root / "demo")  # the sites' processes inherit it
    workspace = str(root / "poc")
    run_poc.prepare(workspace, ["site-1", "site-2"])
    run_poc.start(workspace)
    session = run_poc.connect(workspace, ["site-1", "site-2"])
    try:
        yield workspace, root, session
    finally:
        session.close()
        run_poc.stop(workspace, grace=0)  # nothing to keep: no orderly stop
        os.environ.pop("FLAP_SAM_DEMO_ROOT", None)
    assert not run_poc._workspace_processes(workspace), "POC processes left running"


def _job(root: Path, name: str, **settings) -> str:
    return write_job(str(REPO / "jobs" / "kits_lora"), str(root / "jobs" / name), {**QUICK, **settings})


def _run(session, job: str, timeout: float = 300) -> tuple[str, str]:
    job_id = session.submit_job(job)
    session.monitor_job(job_id, timeout=timeout)
    return job_id, session.get_job_meta(job_id)["status"]


def _download(session, job_id: str, root: Path) -> Path:
    return Path(session.download_job_result(job_id, str(root / "results")))


def _server_log(workspace: str) -> str:
    """The server parent process's log (deployment refusals are logged there)."""
    return (Path(run_poc.kit(workspace, "server")) / "log.txt").read_text(errors="replace")


@pytest.mark.slow
def test_a_job_under_the_policy_trains_and_persists_its_adapter(federation):
    _workspace, root, session = federation
    job_id, status = _run(session, _job(root, "normal", num_rounds=1))
    assert status == "FINISHED:COMPLETED"
    result = _download(session, job_id, root)
    state = torch.load(next(result.rglob("FL_global_model.pt")), weights_only=True)["model"]
    assert set(state) == set(exchange_schema(SPEC))


@pytest.mark.slow
def test_the_percentile_scope_runs_flares_percentile_privacy_at_the_site(federation):
    workspace, root, session = federation
    _job_id, status = _run(session, _job(root, "percentile", scope="flap_percentile", privacy="percentile", num_rounds=1))
    assert status == "FINISHED:COMPLETED"  # (whole weights under this scope: refused, test_the_site_filter_holds_...)
    site_log = "".join(p.read_text(errors="replace") for p in Path(run_poc.kit(workspace, "site-1")).rglob("log.txt"))
    # FLARE's PercentilePrivacy ran twice on the one update: the site's (from its privacy.json), then the job's.
    assert site_log.count("Max abs delta_w") == 2


@pytest.mark.slow
def test_a_job_asking_for_fft_sends_nothing_and_the_server_log_names_the_site_and_reason(federation):
    workspace, root, session = federation
    job_id, status = _run(session, _job(root, "fft", preset="fft"))
    assert status.startswith("FINISHED") and status != "FINISHED:COMPLETED"
    result = _download(session, job_id, root)
    server_log = server_job_log(result)
    reason = SITE_ERROR_KINDS["policy_tensors"]
    named = [s for s in ("site-1", "site-2") if f"site {s} failed task train: {reason} (details in the site's own log)" in server_log]
    assert named, server_log[-3000:]  # the first refusal stops the round (min_clients 2); the other site may not get that far
    traffic = json.loads(next(result.rglob("traffic_summary.json")).read_text())
    assert traffic["totals"]["raw_float32_received"] == 0  # not one tensor reached the server
    site_log = "".join(p.read_text(errors="replace") for p in Path(run_poc.kit(workspace, named[0])).rglob("log.txt"))
    assert "site policy refused the result of task train: tensor" in site_log and "allowed preset(s) flap" in site_log


@pytest.mark.slow
def test_a_job_that_brings_code_is_refused_at_deployment_even_from_the_project_admin(federation):
    workspace, root, session = federation
    job = Path(_job(root, "byoc"))
    (job / "app" / "custom").mkdir()
    (job / "app" / "custom" / "steal.py").write_text("print('anything')\n")
    job_id, status = _run(session, str(job))
    assert status == "FINISHED:FAILED_TO_RUN"
    assert f"Failed to run the Job ({job_id}): RuntimeError: Failed to deploy app 'app': BYOC not permitted" in _server_log(workspace)


@pytest.mark.slow
def test_a_job_naming_an_unknown_scope_or_none_is_refused_by_the_sites(federation):
    workspace, root, session = federation
    _, status = _run(session, _job(root, "unknown_scope", scope="everything"))
    assert status == "FINISHED:FAILED_TO_RUN"
    assert "site-1: NVFLARE_ERROR: privacy scope 'everything' is not allowed" in _server_log(workspace)
    job = Path(_job(root, "no_scope"))
    meta = json.loads((job / "meta.json").read_text())
    del meta["scope"]
    (job / "meta.json").write_text(json.dumps(meta))
    _job_id, status = _run(session, str(job))
    assert status == "FINISHED:FAILED_TO_RUN"
    assert "site-2: NVFLARE_ERROR: privacy scope '' is not allowed" in _server_log(workspace)


def _once_no_job_runs(command, timeout: float = 120):
    """``command()`` as soon as FLARE accepts it: it restarts no client while a job's processes still run."""
    from nvflare.fuel.flare_api.api_spec import JobNotDone

    deadline = time.monotonic() + timeout
    while True:
        try:
            return command()
        except JobNotDone:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.mark.slow
def test_a_lead_cannot_abort_another_hospitals_job_or_restart_its_client(federation):
    from nvflare.fuel.flare_api.api_spec import AuthorizationError
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    workspace, root, _ = federation
    lead_1, lead_2 = (new_secure_session(run_poc.lead(s), run_poc.kit(workspace, run_poc.lead(s))) for s in ("site-1", "site-2"))
    try:
        job_id = lead_2.submit_job(_job(root, "long", num_rounds=50))
        with pytest.raises(AuthorizationError, match="not authorized for 'abort_job'"):
            lead_1.abort_job(job_id)
        lead_2.abort_job(job_id)  # its own job: allowed
        deadline = time.monotonic() + 120
        while lead_2.get_job_meta(job_id)["status"] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(2)
        assert lead_2.get_job_meta(job_id)["status"].startswith("FINISHED")
        # site-2 itself refuses (FLARE's federated authorization: its own authorization.json, operate = o:site) ...
        refused = _once_no_job_runs(lambda: lead_1.restart("client", ["site-2"], timeout=30))
        assert refused["client_status"] == {"site-2": "user 'lead@site-1.example.org' is not authorized for 'restart'"}
        # ... while the lead's own hospital's client restarts.
        assert lead_1.restart("client", ["site-1"], timeout=60)["client_status"] == {"site-1": "Restart the client..."}
    finally:
        lead_1.close()
        lead_2.close()


def test_only_a_measurement_job_names_the_attack_simulation_and_no_kit_allows_it(tmp_path):
    """The production aggregator and learner know nothing of attacks; a job with an attack names the Byzantine
    subclasses (and only it), which the kits' allow-list refuses and the simulator allows for that job alone."""
    from flap_sam.federated.learner import FlapSamLearner
    from flap_sam.federated.lora_aggregation import FlapSamAggregator
    from flap_sam.jobs.writer import is_measurement_job
    from flap_sam.provisioning.policy_files import MEASUREMENT_PREFIX

    for component in (FlapSamAggregator, FlapSamLearner):
        with pytest.raises(TypeError, match="attack"):
            component(attack={"attack": "sign_flip", "attack_sites": "site-2"})
    plain = write_job(str(REPO / "jobs" / "kits_lora"), str(tmp_path / "plain"), {})
    attacked = write_job(plain, str(tmp_path / "attacked"), {"attack": "sign_flip", "attack_sites": "site-2"})
    back = write_job(attacked, str(tmp_path / "back"), {"attack": "none"})
    for folder, measuring in ((plain, False), (attacked, True), (back, False)):
        paths = set().union(*(_component_paths(resolved_config(folder, side)) for side in SIDES))
        assert {p for p in paths if p.startswith(MEASUREMENT_PREFIX)} == (
            {"flap_sam.measurement.byzantine.ByzantineAggregator", "flap_sam.measurement.byzantine.ByzantineLearner"}
            if measuring
            else set()
        )
        assert ("flap_sam.federated.lora_aggregation.FlapSamAggregator" in paths) is not measuring
        assert is_measurement_job(folder) is measuring
    server = resolved_config(attacked, "server")
    aggregator = next(c for c in server["components"] if c["id"] == "aggregator")
    assert aggregator["args"]["attack"] == "{attack_simulation}" and aggregator["args"]["aggregation"] == "{aggregation}"
    kit_list = class_allow_list(["nvflare.app_common.widgets.x.Y"])
    assert not any(f"{MEASUREMENT_PREFIX}byzantine.ByzantineAggregator".startswith(p) for p in kit_list)
    assert any(f"{MEASUREMENT_PREFIX}byzantine.ByzantineAggregator".startswith(p) for p in class_allow_list(measurement=True))
    prepare_workspace(str(tmp_path / "ws"), measurement=False)
    assert MEASUREMENT_PREFIX not in json.loads((tmp_path / "ws" / "local" / "resources.json").read_text())["class_allow_list"]
