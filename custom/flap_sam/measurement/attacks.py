"""Byzantine sites, simulated to measure what an aggregation survives: the rules (the components are ``byzantine``).

The ``attack`` block of a job (``attack``, ``attack_sites``, ``attack_strength``) makes the named
sites Byzantine. ``label_flip`` happens at the site (it trains on permuted classes); every other
attack replaces the site's change on the server, just before aggregation, where the honest changes
are visible (the omniscient attacks of the robust-FL literature need them):

* ``sign_flip``: -s x the site's own change; ``scale``: s x its change;
* ``gaussian``: noise in place of the change, standard deviation s x the RMS of its change;
* ``alie`` ("A little is enough", Baruch et al. 2019): mean + s x std of the honest changes, per coordinate;
* ``ipm`` (inner-product manipulation, Xie et al. 2020): -s x the mean of the honest changes.

A change is what the site could have sent: for a LoRA pair the crafted product is re-factorised
to the pair's rank. Attacks run only in FLARE's simulator or a POC deployment (``nvflare poc``'s
project); anywhere else the server stops the job at its start and a Byzantine site refuses to
train. Every round of an attacked job says so in the server's log, and the persisted adapter
records the attack in its meta (``flap_sam_attack``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from flap_sam.federated.aggregation_rules import ChangeLayout
from flap_sam.training.settings import AttackSettings

ATTACK_META_KEY = "flap_sam_attack"
POC_PROJECT = "example_project"  # the project `nvflare poc prepare` provisions
SIMULATOR_SERVER, SIMULATOR_JOB_ID = "simulator_server", "simulate_job"  # the simulator's server and its one job (no real job has this id)


def attack_refusal(fl_ctx: FLContext) -> str | None:
    """Why this process may not run an attack (None in FLARE's simulator or a POC deployment)."""
    if fl_ctx.get_prop(FLContextKey.SIMULATE_MODE, False):  # a site in FLARE's simulator
        return None
    if fl_ctx.get_identity_name() == SIMULATOR_SERVER and fl_ctx.get_job_id() == SIMULATOR_JOB_ID:  # its server
        return None
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    root = os.path.abspath(workspace.get_root_dir()) if workspace is not None else ""
    parts = root.split(os.sep)
    if len(parts) >= 3 and parts[-3] == POC_PROJECT and parts[-2].startswith("prod_"):
        return None
    return (
        f"attack simulation is for FLARE's simulator and POC deployments only; this {root or 'process'} is neither, "
        "so the job stops (remove the attack setting)"
    )


def crafted_change(attack: str, strength: float, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Byzantine site's change (d,) from its own change (d,) and the honest sites' changes (h, d)."""
    if attack == "sign_flip":
        return -strength * own
    if attack == "scale":
        return strength * own
    if attack == "gaussian":
        return rng.normal(0.0, strength * float(np.sqrt(np.mean(own**2))), own.shape)
    if attack == "alie":
        return honest.mean(axis=0) + strength * honest.std(axis=0, ddof=1 if len(honest) > 1 else 0)
    if attack == "ipm":
        return -strength * honest.mean(axis=0)
    raise ValueError(f"attack {attack!r} is not applied on the server")


def attack_contributions(
    settings: AttackSettings, models: dict[str, dict[str, Any]], reference: dict[str, Any], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The sites' models with each attacking site's replaced by the one its crafted change gives.

    Args:
        models: site -> its model ``{name: array}`` as received; reference: the global model they started from.
    """
    attackers = [s for s in models if s in settings.sites]
    honest = [s for s in models if s not in settings.sites]
    if not settings.on_server or not attackers or not honest:
        return dict(models)
    layout = ChangeLayout.of(reference)
    honest_changes = np.stack([layout.flatten(models[s], reference) for s in honest])
    rng = np.random.default_rng(seed)
    result = dict(models)
    for site in attackers:
        change = crafted_change(settings.attack, settings.strength, layout.flatten(models[site], reference), honest_changes, rng)
        result[site] = layout.apply(reference, change)
    return result


def flipped_labels(num_classes: int) -> np.ndarray:
    """The class permutation a ``label_flip`` site trains on: foreground classes shifted by one (one class: swapped with background)."""
    if num_classes == 1:
        return np.array([1, 0])
    return np.array([0] + [c % num_classes + 1 for c in range(1, num_classes + 1)])
