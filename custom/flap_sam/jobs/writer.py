"""Writing a job folder: a copy of a shipped job with some settings changed (a preset, real data, rounds).

The copy's two config files get the new values appended after the shared include, so the
job stays declarative and diffable; every name must already be a setting, so a typo stops
here and not in the middle of a federation.

The shipped jobs run a short demo on their built-in data: each includes ``demo.conf`` (the
demo's budget) after the package's shared configuration. A copy whose ``data_root`` is real
data, or that sets ``demo_budget = false`` (sites that set their ``data_root`` locally),
leaves that include out, so it runs the paper's recipe (``settings.conf``) unless the user
sets a value of the budget explicitly.
"""

from __future__ import annotations

import json
import os
import shutil

from nvflare.fuel.utils.config_factory import ConfigFactory

from flap_sam.data.site import DEMO as DEMO_DATA_ROOT
from flap_sam.jobs.spec import SETTINGS as SPEC_SETTINGS
from flap_sam.jobs.spec import JobSpec

SIDES = ("server", "client")
DEMO_BUDGET_INCLUDE = 'include required(package("flap_sam:federated/job_config/demo.conf"))'


def jobs_folder() -> str:
    """``jobs/`` of the repository this package was installed from (editable install), or the current folder's."""
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "jobs"))
    return here if os.path.isdir(here) else os.path.abspath("jobs")


def config_path(job: str, side: str) -> str:
    return os.path.join(job, "app", "config", f"config_fed_{side}.conf")


def job_settings(job: str) -> dict:
    """The resolved top-level settings of a job folder (both sides; plain values only)."""
    settings = {}
    for side in SIDES:
        config = ConfigFactory.load_config(config_path(job, side))
        if config is None:
            raise ValueError(f"job {job}: no app/config/config_fed_{side}.conf")
        settings.update({k: v for k, v in config.to_dict().items() if not isinstance(v, (list, dict))})
    return settings


def read_job_spec(job: str) -> JobSpec:
    """The model and task settings of a job folder (what the federation that ran it used)."""
    settings = job_settings(job)
    return JobSpec.from_settings({k: settings[k] for k in SPEC_SETTINGS if k in settings})


def parse_value(text: str):
    """``25`` -> 25, ``true`` -> True, ``0.01`` -> 0.01, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: list[str]) -> dict:
    """``["preset=flap", "num_rounds=3"]`` (``--set`` of ``flap-sam job``, ``sweep`` and ``job.py``) -> settings."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        settings[key] = parse_value(value)
    return settings


def _drop_demo_budget(config_file: str) -> None:
    with open(config_file, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    with open(config_file, "w", encoding="utf-8") as f:
        f.writelines(line for line in lines if line.strip() != DEMO_BUDGET_INCLUDE)


def write_job(source: str, out: str, settings: dict) -> str:
    """Copy job folder ``source`` to ``out`` and set ``settings`` in both of its config files; returns ``out``.

    A ``data_root`` other than ``demo``, or ``demo_budget = false``, drops the demo's short budget:
    the copy runs the paper's recipe.
    """
    if not os.path.isdir(source):
        raise ValueError(f"job {source}: not a folder")
    if os.path.exists(out):
        raise ValueError(f"--out {out}: already exists")
    known = job_settings(source)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"job {source}: no setting {', '.join(unknown)} (settings: {', '.join(sorted(known))})")
    drop_demo_budget = (str(settings.get("data_root", known.get("data_root"))) != DEMO_DATA_ROOT
                        or settings.get("demo_budget") is False)
    tmp = f"{out}.partial"
    shutil.copytree(source, tmp)
    for side in SIDES:
        if drop_demo_budget:
            _drop_demo_budget(config_path(tmp, side))
        with open(config_path(tmp, side), "a", encoding="utf-8") as f:
            f.write("\n# set by flap-sam job\n")
            for key, value in settings.items():
                f.write(f"{key} = {json.dumps(value)}\n")
    with open(os.path.join(tmp, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    meta["name"] = os.path.basename(os.path.normpath(out))
    meta["min_clients"] = int(settings.get("min_clients", meta.get("min_clients", 1)))
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    os.rename(tmp, out)
    return out
