"""Every setting's package default, read from the one file that declares them: ``settings.conf``.

``federated/job_config/settings.conf`` holds each setting once, with its default (the paper's
recipe) and a comment saying what it does; the jobs include it, and the code and the command
line take their defaults from here instead of retyping them.
"""

from __future__ import annotations

import functools
import os

from pyhocon import ConfigFactory

SETTINGS_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "federated", "job_config", "settings.conf")
BLOCKS = ("job_spec", "training", "site", "attack_simulation")  # settings.conf's blocks of "{setting}" references, each handed whole to a component


@functools.cache
def settings_conf() -> dict:
    """settings.conf as FLARE's config loader reads it (blocks included).

    Parsed with pyhocon, the parser under FLARE's loader, without importing FLARE: the command
    line takes its defaults from here and starts in well under a second.
    """
    return ConfigFactory.parse_file(SETTINGS_CONF).as_plain_ordered_dict()


def package_defaults() -> dict:
    """Every setting and its package default; a fresh copy."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings_conf().items() if k not in BLOCKS and k != "format_version"}


def block_keys(block: str) -> tuple[str, ...]:
    """The settings one block of ``settings.conf`` hands to its component, in order."""
    return tuple(settings_conf()[block])
