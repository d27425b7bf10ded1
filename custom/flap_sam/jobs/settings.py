"""Every setting of a FLAP-SAM job, checked in one place when a job is written.

``flap_sam.training.schema`` declares each setting once (type, default, allowed values, bounds);
here a job's settings are filled in from the package defaults, each value is checked against its
declaration, the four blocks are built into their typed objects (``JobSpec``, ``TrainingSettings``,
``SiteSettings``, ``AttackSettings``), and the checks that span several settings run.
``flap-sam job``, ``FlapSamRecipe`` and ``job.py`` refuse a bad value with one line before they
write a job; the components check their own settings again at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flap_sam.data.site import DEMO as DEMO_DATA_ROOT
from flap_sam.jobs.spec import JobSpec
from flap_sam.training.schema import BLOCKS, block_keys, checked_value, package_defaults
from flap_sam.training.settings import AttackSettings, SiteSettings, TrainingSettings


def check_aggregation_weights(weights) -> dict[str, float]:
    """``{site: weight}`` with positive finite weights (a copy); None / {} -> {}; one-line ValueError otherwise."""
    if not weights:
        return {}
    if not isinstance(weights, Mapping):
        raise ValueError(f"aggregation_weights: expected a mapping site -> weight, got {weights!r}")  # noqa: TRY004 (a bad setting)
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
        settings: any settings of the schema by name (a job's, ``--set``'s, a recipe's keywords).
        where: prefix of an error (e.g. the job folder).

    Raises:
        ValueError: one line naming the first setting that is unknown or invalid.
    """
    defaults = package_defaults()
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        names = ", ".join(name if name.isidentifier() else repr(name) for name in unknown)  # a stray newline stays visible
        raise ValueError(f"{where}no setting {names} (settings: {', '.join(sorted(defaults))})")
    try:
        values = {name: checked_value(name, settings.get(name, default)) for name, default in defaults.items()}
        check_aggregation_weights(values["aggregation_weights"])
        block = {name: {k: values[k] for k in block_keys(name)} for name in BLOCKS}
        AttackSettings.from_settings(block["attack_simulation"])
        spec = JobSpec.from_settings(block["job_spec"])
        site = SiteSettings.from_settings(block["site"])
        for name in site.site_ranks:
            site.lora_rank(name, spec.model)
        site.structures(spec.task.class_names)
        if site.site_ranks and values["aggregation"] == "average":
            raise ValueError(
                "site_ranks: aggregation = average averages A and B one by one, which needs every site at the "
                "job's rank; use lora_exact (or a robust aggregation), which aggregate B·A"
            )
        if site.site_ranks and values["attack"] != "none":
            raise ValueError("site_ranks: the attack simulation crafts updates of the job's rank; run it with every site at that rank")
        training = TrainingSettings.from_settings(block["training"], model_type=spec.model.model_type)
        training.loss_weights(spec.task.class_names)
        return JobSettings(spec, training, site, values)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None


def training_settings(**changes) -> TrainingSettings:
    """The package's training recipe with some values changed (``training_settings(lr=0.01, batch_size=2)``)."""
    return check_settings(changes).training


def runs_demo_budget(settings: Mapping) -> bool:
    """Whether a job with ``settings`` (a job's own, over its shipped configuration) keeps the demo's short budget:
    only on the built-in demo data, and not when it says ``demo_budget = false``."""
    return str(settings.get("data_root", DEMO_DATA_ROOT)) == DEMO_DATA_ROOT and settings.get("demo_budget") is not False
