"""``docs/settings.md``, generated from ``settings.conf``'s own lines: every setting, its default, what it does
(and, from ``demo.conf``, the shipped demo's value where it differs).

    python -m flap_sam.jobs.settings_page --out docs/settings.md

The page is never edited by hand: a test regenerates it and compares, so it follows every
change of ``settings.conf``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from nvflare.fuel.utils.config_factory import ConfigFactory

from flap_sam.files import markdown_table, write_text
from flap_sam.jobs.defaults import SETTINGS_CONF

_SECTION = re.compile(r"^# -+ (.+?) -+$")
_BLOCK_START = re.compile(r"^(\w+)\s*\{\s*$")
_SETTING = re.compile(r"^(\w+)\s*(?:=\s*)?(\S.*?)\s*(?:#\s*(.*))?$")

HEADER = """# Settings

Every setting of a FLAP-SAM job, its package default (the paper's recipe) and what it does, as
`custom/flap_sam/federated/job_config/settings.conf` declares them (this page is generated from
that file: `python -m flap_sam.jobs.settings_page --out docs/settings.md`).

A job sets any of them after its include of the shared configuration: `flap-sam job JOB --out DIR
--set KEY=VALUE ...`, `python jobs/<job>/job.py --set KEY=VALUE ...` or `FlapSamRecipe(job, KEY=VALUE)`;
every value is checked when the job is written. The shipped jobs also include `demo.conf`, the
demo's short budget (the "demo" column), which a job on real data leaves out. A site may override its own settings
({overridable}) in `<site workspace>/local/flap_sam_site.json`.
"""


def settings_page(conf_text: str, demo: dict) -> str:
    """The Markdown page of ``settings.conf``'s text: one table per section (setting, default, demo value, meaning).

    Args:
        demo: the settings ``demo.conf`` sets (shown in the "demo" column).
    """
    sections: list[tuple[str, list[list[str]], list[str]]] = []
    notes: list[str] = []
    in_block = False
    for line in conf_text.splitlines():
        line = line.rstrip()
        if in_block:
            in_block = line != "}"
            continue
        if _BLOCK_START.match(line):
            in_block = True
            notes = []
            continue
        section = _SECTION.match(line)
        if section:
            sections.append((section.group(1), [], []))
            notes = []
        elif line.startswith("#"):
            notes.append(line.lstrip("# "))
        elif line and sections:
            match = _SETTING.match(line)
            if match:
                name, default, meaning = match.groups()
                if notes:
                    sections[-1][2].append(" ".join(notes))
                demo_value = f"`{json.dumps(demo[name]).strip(chr(34))}`" if name in demo else ""
                sections[-1][1].append([f"`{name}`", f"`{default}`", demo_value, _escape(meaning or "")])
            notes = []
        else:
            notes = []
    from flap_sam.training.settings import SiteSettings

    parts = [HEADER.format(overridable=", ".join(f"`{name}`" for name in SiteSettings.OVERRIDABLE))]
    for title, rows, section_notes in sections:
        parts += [f"## {title[0].upper()}{title[1:]}", "", markdown_table(["setting", "default", "demo", "meaning"], rows), ""]
        parts += [f"{_escape(note)}\n" for note in section_notes]
    parts += [_base_recipes_section()]
    return "\n".join(parts).rstrip() + "\n"


def _base_recipes_section() -> str:
    """The values ``auto`` takes per base (each encoder family's ``recipe``)."""
    from flap_sam.model.encoders import MODEL_TYPES
    from flap_sam.training.settings import PAPER_RECIPE, base_recipe

    rows = [[f"`{base}`"] + [f"`{base_recipe(base)[name]:g}`" for name in PAPER_RECIPE] for base in MODEL_TYPES]
    return "\n".join([
        "## Each base's recipe (`auto`)", "",
        "A recipe setting left at `auto` takes its base's value: the paper's recipe for the ViTs, and what a base "
        "declares of its own in its encoder family's `recipe` (`flap_sam.model.encoders`; LiteMedSAM: measured in "
        "[the recipe on a pretrained base](real-anatomy.md#the-recipe-on-a-pretrained-base)). A value set in a job wins "
        "for any base. Warm-up is at most a quarter of the federation's steps, and the decay ends at its last step.", "",
        markdown_table(["model_type"] + [f"`{name}`" for name in PAPER_RECIPE], rows), ""])


def _escape(text: str) -> str:
    """Table-safe Markdown: ``|`` escaped, ``<name>`` placeholders not taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def settings_page_of_package() -> str:
    """The page of the installed package's ``settings.conf`` and ``demo.conf``."""
    with open(SETTINGS_CONF, encoding="utf-8") as f:
        text = f.read()
    demo = ConfigFactory.load_config(os.path.join(os.path.dirname(SETTINGS_CONF), "demo.conf")).to_dict()
    return settings_page(text, demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the page here (default: print it)")
    args = parser.parse_args(argv)
    page = settings_page_of_package()
    if args.out:
        write_text(args.out, page)
    else:
        print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
