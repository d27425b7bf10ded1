"""The README and docs/ stay true: every relative link resolves, every command shown parses, the settings page is current."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flap_sam.cli.main import build_parser
from flap_sam.jobs.recipe import FLARE_RECIPE_FLAGS
from flap_sam.jobs.recipe import build_parser as job_py_parser
from flap_sam.jobs.settings_page import settings_page_of_package

from jobtools import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```[\w-]*\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"`((?:flap-sam|python jobs/)[^`]*)`")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def _links():
    for page in PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in _LINK.findall(text):
            if not re.match(r"^[a-z]+:", target):
                yield page, target


@pytest.mark.parametrize("page, target", list(_links()), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v)
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(REPO)}: {target} does not exist"
    assert REPO in resolved.parents or resolved == REPO, f"{page.relative_to(REPO)}: {target} leaves the repository"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{page.relative_to(REPO)}: no heading #{anchor} in {path or page.name}"


def _commands():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lines = [line for block in _FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
        lines += _INLINE.findall(_FENCE.sub("", text))
        for line in lines:
            line = line.strip()
            if line.startswith(("flap-sam ", "python jobs/")) and "..." not in line:
                yield page, line


def _options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("page, command", list(_commands()), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v[:60])
def test_every_command_shown_names_a_real_command_and_its_real_flags(page, command):
    words = shlex.split(command, comments=True)
    words = words[: words.index("&&")] if "&&" in words else words
    if words[0] == "flap-sam":
        subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
        assert len(words) > 1 and words[1] in subparsers.choices, f"{page.name}: {command}: no command {words[1:2]}"
        known = _options(subparsers.choices[words[1]])
    else:
        known = _options(job_py_parser("jobs/x")) | set(FLARE_RECIPE_FLAGS)
    unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{page.name}: {command}: unknown option(s) {unknown}"


def test_the_settings_page_is_generated_from_settings_conf():
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    assert page == settings_page_of_package(), "docs/settings.md is stale: python -m flap_sam.jobs.settings_page --out docs/settings.md"


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


SCRIPTS = sorted((REPO / "docs").rglob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_script_in_the_docs_parses_and_names_real_commands_and_flags(script):
    import subprocess

    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0, f"{script.name}: bash -n fails"
    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    text = re.sub(r"\\\n\s*", " ", script.read_text(encoding="utf-8"))
    calls = re.findall(r"flap-sam (\w[\w-]*)([^\n;|&)]*)", text)
    assert calls, f"{script.name}: runs no flap-sam command"
    for command, rest in calls:
        assert command in subparsers.choices, f"{script.name}: no command flap-sam {command}"
        known = _options(subparsers.choices[command])
        unknown = [w for w in re.findall(r"(?<!\S)--[\w-]+", rest) if w not in known]
        assert not unknown, f"{script.name}: flap-sam {command}: unknown option(s) {unknown}"
