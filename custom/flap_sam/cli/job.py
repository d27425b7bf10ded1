"""``flap-sam job``: a copy of a shipped job with some settings changed (a preset, real data, rounds).

The copy's two config files get the new values appended after the shared include, so the
job stays declarative and diffable; every name must already be a setting, so a typo stops
here and not in the middle of a federation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from nvflare.fuel.utils.config_factory import ConfigFactory

SIDES = ("server", "client")


def jobs_folder() -> str:
    """``jobs/`` of the repository this package was installed from (editable install), or the current folder's."""
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "jobs"))
    return here if os.path.isdir(here) else os.path.abspath("jobs")


def job_settings(job: str) -> dict:
    """The resolved top-level settings of a job folder (both sides; plain values only)."""
    settings = {}
    for side in SIDES:
        config = ConfigFactory.load_config(os.path.join(job, "app", "config", f"config_fed_{side}.conf"))
        if config is None:
            raise ValueError(f"job {job}: no app/config/config_fed_{side}.conf")
        settings.update({k: v for k, v in config.to_dict().items() if not isinstance(v, (list, dict))})
    return settings


def parse_value(text: str):
    """``25`` -> 25, ``true`` -> True, ``0.01`` -> 0.01, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def write_job(source: str, out: str, settings: dict) -> str:
    """Copy job folder ``source`` to ``out`` and set ``settings`` in both of its config files; returns ``out``."""
    if not os.path.isdir(source):
        raise ValueError(f"job {source}: not a folder")
    if os.path.exists(out):
        raise ValueError(f"--out {out}: already exists")
    known = job_settings(source)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"job {source}: no setting {', '.join(unknown)} (settings: {', '.join(sorted(known))})")
    tmp = f"{out}.partial"
    shutil.copytree(source, tmp)
    for side in SIDES:
        with open(os.path.join(tmp, "app", "config", f"config_fed_{side}.conf"), "a", encoding="utf-8") as f:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder, or the name of a shipped job (kits_lora, ixi_lora, prostate_lora)")
    parser.add_argument("--out", required=True, help="new job folder")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings to change, e.g. preset=lora_dec num_rounds=25")


def run(args: argparse.Namespace) -> int:
    source = args.job if os.path.isdir(args.job) else os.path.join(jobs_folder(), args.job)
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        settings[key] = parse_value(value)
    print(f"wrote {write_job(source, args.out, settings)}")
    return 0
