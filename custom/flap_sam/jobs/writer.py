"""Writing a job folder: a copy of a shipped job with some settings changed (a preset, real data, rounds).

The copy's two config files get the new values appended after the shared include, so the
job stays declarative and diffable; every name must already be a setting, so a typo stops
here and not in the middle of a federation.

Every value is checked (``flap_sam.jobs.settings.check_settings``) before anything is written.

The shipped jobs run a short demo on their built-in data: each includes ``demo.conf`` (the
demo's budget) after the package's shared configuration. A copy that does not run the demo
(``runs_demo_budget``: real ``data_root``, or ``demo_budget = false`` for sites that set their
``data_root`` locally) leaves that include out, so it runs the paper's recipe
(``settings.conf``) unless the user sets a value of the budget explicitly.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
import shutil

from nvflare.fuel.utils.config_factory import ConfigFactory

from flap_sam.files import write_json
from flap_sam.jobs.settings import JobSettings, check_settings, runs_demo_budget
from flap_sam.jobs.spec import JobSpec
from flap_sam.training.schema import package_defaults

SIDES = ("server", "client")
SHIPPED_JOBS = "shipped_jobs"  # in the package: a link to the repository's jobs/ (package data of the wheel)
DEMO_CONF = "demo.conf"  # the demo's budget, in the package's job_config/ beside settings.conf
# Measurement jobs only: the Byzantine aggregator and learner (flap_sam.measurement), for an attack other than none
ATTACK_CONF = "attack_simulation.conf"
ATTACK_INCLUDE = f'include required(package("flap_sam:federated/job_config/{ATTACK_CONF}"))\n'


def jobs_folder() -> str:
    """The shipped jobs, from the package's resources: ``flap_sam/shipped_jobs`` (the repository's ``jobs/``, which
    an editable install links to and a built wheel carries)."""
    return str(importlib.resources.files("flap_sam").joinpath(SHIPPED_JOBS))


def source_job(job: str) -> str:
    """A job folder, or the name of a shipped job (``kits_lora``, ``ixi_lora``, ``prostate_lora``, ``chest_ct_lora``)."""
    folder = job if os.path.isdir(job) else os.path.join(jobs_folder(), job)
    if not os.path.isdir(folder):
        raise ValueError(f"job {job}: not a job folder nor a shipped job ({', '.join(sorted(os.listdir(jobs_folder())))})")
    return folder


def config_path(job: str, side: str) -> str:
    return os.path.join(job, "app", "config", f"config_fed_{side}.conf")


def job_settings(job: str) -> dict:
    """The resolved value of every setting in a job folder (both sides)."""
    files = tuple(config_path(job, side) for side in SIDES)
    stamps = tuple(os.stat(f).st_mtime_ns if os.path.isfile(f) else None for f in files)
    return copy.deepcopy(_resolved_settings(os.path.abspath(job), stamps))


@functools.lru_cache(maxsize=32)
def _resolved_settings(job: str, stamps: tuple) -> dict:
    """``job_settings`` of a folder whose config files have these modification times (parsing HOCON takes ~0.5 s a file).

    Both sides include every setting's default; a setting one side sets (the server's ``min_clients``, a
    site's ``data_root``) keeps that side's value: the other side's package default does not undo it.
    """
    defaults = package_defaults()
    settings = {}
    for side in SIDES:
        config = ConfigFactory.load_config(config_path(job, side))
        if config is None:
            raise ValueError(f"job {job}: no app/config/config_fed_{side}.conf")
        for name, value in config.to_dict().items():
            if name in defaults and (name not in settings or value != defaults[name]):
                settings[name] = value
    return settings


def read_job(job: str) -> JobSettings:
    """A job folder's settings, typed and checked: what the federation that ran it used."""
    return check_settings(job_settings(job), where=f"job {job}: ")


def read_job_spec(job: str) -> JobSpec:
    """The model and task settings of a job folder."""
    return read_job(job).spec


def parse_value(text: str):
    """``25`` -> 25, ``true`` -> True, ``0.01`` -> 0.01, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def is_measurement_job(job: str) -> bool:
    """Whether a job folder includes ``attack_simulation.conf`` (on either side): an attack simulation."""
    for side in SIDES:
        if os.path.isfile(config_path(job, side)):
            with open(config_path(job, side), encoding="utf-8") as f:
                if any(line.lstrip().startswith("include") and f'/{ATTACK_CONF}"' in line for line in f):
                    return True
    return False


def parse_settings(items: list[str]) -> dict:
    """``["preset=flap", "num_rounds=3"]`` (``--set`` of ``flap-sam job``, ``sweep`` and ``job.py``) -> settings."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        settings[key] = parse_value(value)
    return settings


def _drop_include(config_file: str, conf: str) -> None:
    """Leave out the config's include of the package's ``conf`` (its only line that names it outside a comment)."""
    with open(config_file, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    with open(config_file, "w", encoding="utf-8") as f:
        f.writelines(line for line in lines if not (line.lstrip().startswith("include") and f'/{conf}"' in line))


def write_job(source: str, out: str, settings: dict, for_simulator: bool = False) -> str:
    """Copy job folder ``source`` to ``out`` and set ``settings`` in both of its config files; returns ``out``.

    A ``data_root`` other than ``demo``, or ``demo_budget = false``, drops the demo's short budget:
    the copy runs the paper's recipe. An ``attack`` other than ``none`` (a measurement job) includes
    ``attack_simulation.conf``, which names the Byzantine components; any other job names none. The copy carries no code (no ``app/custom/``) and names its
    privacy scope (setting ``scope``) in ``meta.json``, as provisioned sites require; to run it in
    FLARE's simulator use ``run_simulator`` / ``flap-sam simulate``, which give the simulator the
    sites' allow-list, or write it ``for_simulator``: the copy then keeps the shipped job's ``app/custom/``
    marker (no code), as ``nvflare simulator JOB`` needs and provisioned sites refuse.
    """
    if not os.path.isdir(source):
        raise ValueError(f"job {source}: not a folder")
    if os.path.exists(out):
        raise ValueError(f"--out {out}: already exists")
    merged = {**job_settings(source), **settings}
    check_settings(merged, where=f"job {source}: ")
    drop_demo_budget = not runs_demo_budget(merged)
    tmp = f"{out}.partial"
    shutil.copytree(source, tmp)
    for side in SIDES:
        if drop_demo_budget:
            _drop_include(config_path(tmp, side), DEMO_CONF)
        _drop_include(config_path(tmp, side), ATTACK_CONF)
        with open(config_path(tmp, side), "a", encoding="utf-8") as f:
            f.write("\n# set by flap-sam job\n")
            f.writelines(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
            if merged["attack"] != "none":
                f.write(f"# a measurement job: the Byzantine sites of the attack simulation\n{ATTACK_INCLUDE}")
    with open(os.path.join(tmp, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    meta["name"] = os.path.basename(os.path.normpath(out))
    meta["min_clients"] = int(settings.get("min_clients", meta.get("min_clients", 1)))
    meta["scope"] = str(merged["scope"])  # the sites' privacy scope it asks for
    write_json(os.path.join(tmp, "meta.json"), meta)
    # The job carries no code: its code is the installed flap_sam package. A shipped job's app/custom/
    # marks it as bringing code (FLARE's BYOC), which provisioned sites refuse (docs/deployment.md#site-policies)
    # and FLARE's own simulator needs, since its built-in allow-list lacks flap_sam.
    marker = os.path.join(tmp, "app", "custom", "README.md")
    if not for_simulator:
        shutil.rmtree(os.path.dirname(marker), ignore_errors=True)
    elif not os.path.isfile(marker):  # a source written for the sites: the shipped jobs' marker
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        shutil.copy(os.path.join(source_job("kits_lora"), "app", "custom", "README.md"), marker)
    os.rename(tmp, out)
    return out
