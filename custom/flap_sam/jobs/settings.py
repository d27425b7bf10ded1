"""Every setting of a FLAP-SAM job, checked in one place: when a job is written and when it starts.

``federated/job_config/settings.conf`` declares each setting once, with its default (the paper's
recipe) and a comment saying what it does (``docs/settings.md`` is generated from it). Here each
setting gets its type (that of its default) and, where it has them, its allowed values and its
minimum; the three blocks of settings.conf (``job_spec``, ``training``, ``site``) are built into
their typed objects (``JobSpec``, ``TrainingSettings``, ``SiteSettings``), which check the rest.
``flap-sam job``, ``FlapSamRecipe`` and ``job.py`` refuse a bad value with one line before they
write a job; the components refuse the same values again at start-up.
"""

from __future__ import annotations

import re

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flap_sam.data.profiles import PROFILES
from flap_sam.data.site import DEMO as DEMO_DATA_ROOT
from flap_sam.jobs.defaults import BLOCKS, SETTINGS_CONF, block_keys, package_defaults  # noqa: F401 (the catalogue's API)
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.encoders import MODEL_TYPES
from flap_sam.model.presets import PRESETS
from flap_sam.training.settings import SiteSettings, TrainingSettings, at_least, one_of, typed_value

# The values of the settings that the federated components implement (they import these names).
AGGREGATIONS = ("average", "lora_exact", "fedseca", "median", "trimmed_mean")
ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip", "alie", "ipm")  # flap_sam.federated.attacks
TRANSPORT_MODES = ("fp32", "fp16", "bf16", "int8")
PRIVACY_MODES = ("none", "percentile", "svt")
TRACKERS = ("tensorboard", "mlflow", "wandb")

CHOICES = {"model_type": MODEL_TYPES, "preset": tuple(PRESETS), "dataset": tuple(PROFILES), "aggregation": AGGREGATIONS,
           "transport": TRANSPORT_MODES, "privacy": PRIVACY_MODES, "tracking": TRACKERS, "attack": ATTACKS}
MINIMUM = {"image_size": 16, "rank": 1, "num_rounds": 1, "min_clients": 1, "train_timeout": 0, "cross_site_timeout": 0,
           "get_task_timeout": 0, "submit_task_result_timeout": 0, "svt_noise_var": 0, "svt_gamma": 0, "svt_tau": 0,
           "trim_fraction": 0, "fedseca_sparsity": 0, "attack_strength": 0}
KIND = {"privacy_percentile": float}  # a number whose default happens to be whole


SITE_ATTACKS = ("label_flip",)  # the attacks a site runs in its own training (the rest: the server crafts the update)
DEFAULT_STRENGTH = {"sign_flip": 4.0, "scale": 10.0, "gaussian": 1.0, "alie": 1.0, "ipm": 4.0, "label_flip": 1.0}


@dataclass(frozen=True)
class AttackSettings:
    """The ``attack`` block: which sites attack, how, how hard (``strength`` 0: the attack's default)."""

    attack: str
    sites: tuple[str, ...]
    strength: float

    @classmethod
    def from_settings(cls, settings: Mapping | None) -> "AttackSettings":
        settings = dict(settings or {})
        attack = str(settings.get("attack", "none"))
        if attack not in ATTACKS:
            raise ValueError(f"attack: {attack!r} is not one of {list(ATTACKS)}")
        sites = settings.get("attack_sites") or ""
        sites = tuple(s.strip() for s in sites.split(",") if s.strip()) if isinstance(sites, str) else tuple(map(str, sites))
        if attack != "none" and not sites:
            raise ValueError(f"attack = {attack} needs attack_sites (e.g. \"site-4\")")
        strength = float(settings.get("attack_strength", 0.0) or 0.0) or DEFAULT_STRENGTH.get(attack, 0.0)
        return cls(attack, sites, strength)

    @property
    def active(self) -> bool:
        return self.attack != "none"

    @property
    def on_server(self) -> bool:
        return self.active and self.attack not in SITE_ATTACKS

    def describe(self) -> str:
        return f"ATTACK SIMULATION {self.attack} (strength {self.strength:g}) by {', '.join(self.sites)}"

    def record(self) -> dict:
        return {"attack": self.attack, "sites": list(self.sites), "strength": self.strength}


def _kind(name: str, default) -> type:
    return KIND.get(name, dict if isinstance(default, dict) else type(default))


def check_aggregation_weights(weights) -> dict[str, float]:
    """``{site: weight}`` with positive finite weights (a copy); None / {} -> {}; one-line ValueError otherwise."""
    if not weights:
        return {}
    if not isinstance(weights, Mapping):
        raise ValueError(f"aggregation_weights: expected a mapping site -> weight, got {weights!r}")
    checked = {}
    for site, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"aggregation_weights: the weight of {site} is not a number ({weight!r})") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"aggregation_weights: the weight of {site} must be positive and finite, got {weight!r}")
        checked[str(site)] = value
    return checked


def check_privacy_parameters(privacy: str, privacy_percentile, percentile_gamma, svt_fraction, svt_epsilon) -> None:
    """The parameters the chosen ``privacy`` mode uses must make sense (one-line ValueError)."""
    one_of("privacy", privacy, PRIVACY_MODES)
    if privacy == "percentile" and (not 0 <= float(privacy_percentile) <= 100 or float(percentile_gamma) <= 0):
        raise ValueError(f"privacy = percentile: privacy_percentile must be in 0..100 and percentile_gamma > 0, "
                         f"got {privacy_percentile} and {percentile_gamma}")
    if privacy == "svt" and (not 0 < float(svt_fraction) <= 1 or float(svt_epsilon) <= 0):
        raise ValueError(f"privacy = svt: svt_fraction must be in (0, 1] and svt_epsilon > 0, got {svt_fraction} and {svt_epsilon}")


@dataclass(frozen=True)
class JobSettings:
    """A job's settings, typed and checked: the three blocks and every value by name."""

    spec: JobSpec
    training: TrainingSettings
    site: SiteSettings
    values: dict

    def __getitem__(self, name: str):
        return self.values[name]


def check_settings(settings: Mapping, where: str = "") -> JobSettings:
    """``settings`` over the package defaults, every value typed and checked.

    Args:
        settings: any settings of ``settings.conf`` by name (a job's, ``--set``'s, a recipe's keywords).
        where: prefix of an error (e.g. the job folder).

    Raises:
        ValueError: one line naming the first setting that is unknown or invalid.
    """
    defaults = package_defaults()
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"{where}no setting {', '.join(unknown)} (settings: {', '.join(sorted(defaults))})")
    try:
        values = {name: typed_value(name, settings.get(name, default), _kind(name, default)) for name, default in defaults.items()}
        for name, choices in CHOICES.items():
            one_of(name, values[name], choices)
        for name, minimum in MINIMUM.items():
            at_least(name, values[name], minimum)
        check_aggregation_weights(values["aggregation_weights"])
        check_privacy_parameters(*(values[k] for k in ("privacy", "privacy_percentile", "percentile_gamma", "svt_fraction", "svt_epsilon")))
        if values["trim_fraction"] >= 0.5:
            raise ValueError(f"trim_fraction: {values['trim_fraction']} must be below 0.5 (it is cut at both ends)")
        if values["fedseca_sparsity"] >= 1:
            raise ValueError(f"fedseca_sparsity: {values['fedseca_sparsity']} must be below 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", values["scope"]):
            raise ValueError(f"scope: {values['scope']!r} is not a scope name (letters, digits, _ . -)")
        block = {name: {k: values[k] for k in block_keys(name)} for name in BLOCKS}
        AttackSettings.from_settings(block["attack_simulation"])
        spec = JobSpec.from_settings(block["job_spec"])
        site = SiteSettings.from_settings(block["site"])
        for name in site.site_ranks:
            site.lora_rank(name, spec.model)
        if site.site_ranks and values["aggregation"] == "average":
            raise ValueError("site_ranks: aggregation = average averages A and B one by one, which needs every site at the "
                             "job's rank; use lora_exact (or a robust aggregation), which aggregate B·A")
        if site.site_ranks and values["attack"] != "none":
            raise ValueError("site_ranks: the attack simulation crafts updates of the job's rank; run it with every site at that rank")
        return JobSettings(spec, TrainingSettings.from_settings(block["training"], model_type=spec.model.model_type), site, values)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None


def training_settings(**changes) -> TrainingSettings:
    """The package's training recipe with some values changed (``training_settings(lr=0.01, batch_size=2)``)."""
    return check_settings(changes).training


def runs_demo_budget(settings: Mapping) -> bool:
    """Whether a job with ``settings`` (a job's own, over its shipped configuration) keeps the demo's short budget:
    only on the built-in demo data, and not when it says ``demo_budget = false``."""
    return str(settings.get("data_root", DEMO_DATA_ROOT)) == DEMO_DATA_ROOT and settings.get("demo_budget") is not False
