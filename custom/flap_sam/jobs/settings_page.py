"""The two files generated from the settings' one declaration (``flap_sam.training.schema``):
``federated/job_config/settings.conf``, which every job includes, and ``docs/settings.md``: every
setting, its default, what it does (and, from ``demo.conf``, the shipped demo's value).

    python -m flap_sam.jobs.settings_page --out docs/settings.md      # also rewrites settings.conf

Neither is edited by hand: a test regenerates both and compares, so they follow every change of
the schema.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys

from nvflare.fuel.utils.config_factory import ConfigFactory

from flap_sam.files import markdown_table, write_text
from flap_sam.training import schema
from flap_sam.training.schema import SITE_OVERRIDABLE, settings_conf_text

SETTINGS_CONF = str(importlib.resources.files("flap_sam").joinpath("federated").joinpath("job_config").joinpath("settings.conf"))
DEMO_CONF = os.path.join(os.path.dirname(SETTINGS_CONF), "demo.conf")

READERS = {"both": "the server and every site", "server": "the server", "sites": "every site"}  # Section.party, in words

HEADER = """# Settings

Every setting of a FLAP-SAM job, its package default (the paper's recipe) and what it does, as
`custom/flap_sam/training/schema.py` declares them (this page and the `settings.conf` every job
includes are generated from it: `python -m flap_sam.jobs.settings_page --out docs/settings.md`).

A job sets any of them after its include of the shared configuration: `flap-sam job JOB --out DIR
--set KEY=VALUE ...`, `python jobs/<job>/job.py --set KEY=VALUE ...` or `FlapSamRecipe(job, KEY=VALUE)`;
every value is checked when the job is written. The shipped jobs also include `demo.conf`, the
demo's short budget (the "demo" column), which a job on real data leaves out. A site may override its own settings
({overridable}) in `<site workspace>/local/flap_sam_site.json`.
"""


def _rule(setting) -> str:
    """The allowed values or bounds of a setting, as the page shows them ("" when any value of its type is)."""
    parts = []
    if setting.choices is not None:
        parts.append(" | ".join(f"`{value}`" for value in setting.allowed()))
    for word, bound in (("≥", setting.minimum), (">", setting.above), ("≤", setting.maximum), ("<", setting.below)):
        if bound is not None:
            parts.append(f"{word} {bound:g}")
    if setting.auto:
        parts.append("or `auto`")
    return ", ".join(parts)


def settings_page(demo: dict) -> str:
    """The Markdown page of the schema: one table per section (setting, default, demo value, allowed, meaning).

    Args:
        demo: the settings ``demo.conf`` sets (shown in the "demo" column).
    """
    sections: dict = {}
    for s in schema.SCHEMA:
        demo_value = f"`{json.dumps(demo[s.name]).strip(chr(34))}`" if s.name in demo else ""
        default = json.dumps(s.default) if s.default == "" or isinstance(s.default, dict) else json.dumps(s.default).strip('"')
        sections.setdefault(s.section, []).append([f"`{s.name}`", f"`{default}`", demo_value, _escape(_rule(s)), _escape(s.doc)])
    parts = [HEADER.format(overridable=", ".join(f"`{name}`" for name in SITE_OVERRIDABLE))]
    for section, rows in sections.items():
        title = section.title
        parts += [
            f"## {title[0].upper()}{title[1:]}",
            "",
            f"Read by: {READERS[section.party]}.",
            "",
            markdown_table(["setting", "default", "demo", "allowed", "meaning"], rows),
            "",
        ]
    parts += [_base_recipes_section()]
    return "\n".join(parts).rstrip() + "\n"


def _base_recipes_section() -> str:
    """The values ``auto`` takes per base (each encoder family's ``recipe``)."""
    from flap_sam.model.encoders import MODEL_TYPES
    from flap_sam.training.settings import PAPER_RECIPE, base_recipe

    rows = [[f"`{base}`"] + [f"`{base_recipe(base)[name]:g}`" for name in PAPER_RECIPE] for base in MODEL_TYPES]
    return "\n".join(
        [
            "## Each base's recipe (`auto`)",
            "",
            (
                "A recipe setting left at `auto` takes its base's value: the paper's recipe for the ViTs, and what a base "
                "declares of its own in its encoder family's `recipe` (`flap_sam.model.encoders`; LiteMedSAM: measured in "
                "[the recipe on a pretrained base](real-anatomy.md#the-recipe-on-a-pretrained-base)). A value set in a job wins "
                "for any base. Warm-up is at most a quarter of the federation's steps, and the decay ends at its last step."
            ),
            "",
            markdown_table(["model_type"] + [f"`{name}`" for name in PAPER_RECIPE], rows),
            "",
        ]
    )


def _escape(text: str) -> str:
    """Table-safe Markdown: ``|`` escaped, ``<name>`` placeholders not taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def settings_page_of_package() -> str:
    """The page of the installed package's schema and ``demo.conf``."""
    return settings_page(ConfigFactory.load_config(DEMO_CONF).to_dict())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the page here (default: print it)")
    parser.add_argument("--conf", default=SETTINGS_CONF, help="write settings.conf here (default: the package's)")
    args = parser.parse_args(argv)
    write_text(args.conf, settings_conf_text())
    page = settings_page_of_package()
    if args.out:
        write_text(args.out, page)
    else:
        print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
