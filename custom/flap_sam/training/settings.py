"""The training recipe and a site's own settings as two typed blocks, checked once.

A job hands each block whole to the Learner (``training`` and ``site`` in ``settings.conf``);
``flap-sam train`` and the bench build the same blocks from a job folder, so a baseline trains
exactly as the federation does. Every field is a setting of ``settings.conf``, where its default
(the paper's recipe) and its meaning are declared; ``flap_sam.jobs.settings`` fills what a caller
leaves out from there. Values from a config or a JSON file are coerced to the field's type; a
value that does not fit raises ``ValueError`` with one line naming the setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from flap_sam.model.attention import ATTENTION_MODES
from flap_sam.model.checkpointing import CHECKPOINTING_MODES
from flap_sam.model.encoders import family_for
from flap_sam.training.device import autocast_bf16, resolve_cpu_threads, resolve_device
from flap_sam.training.inference import INFERENCE_MODES
from flap_sam.training.loader import resolve_data_workers

if TYPE_CHECKING:
    from flap_sam.model.factory import ModelSpec


def typed_value(name: str, value, kind: type):
    """``value`` as ``kind`` (bool, int, float, str, dict); ``"24"`` -> 24, ``"true"`` -> True.

    Raises:
        ValueError: ``<name>: <value> is not <a kind>`` (a bool is never taken for a number).
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind in (int, float):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and (kind is float or number.is_integer()):
                return kind(number)
    elif kind is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    article = {bool: "true or false", int: "a whole number", float: "a number", dict: "a mapping", str: "a text"}[kind]
    raise ValueError(f"{name}: {value!r} is not {article}")


def at_least(name: str, value, minimum) -> None:
    if value < minimum:
        raise ValueError(f"{name}: {value} must be at least {minimum}")


def one_of(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")


# The recipe settings whose package default is ``auto``: each takes its base's value. The paper's recipe
# is that of ViT-B (and -L, -H, and the test size); a base that needs other values declares them once, in
# its encoder family's ``recipe`` (LiteMedSAM: measured on the real-anatomy and kits demos,
# docs/real-anatomy.md#the-recipe-on-a-pretrained-base).
PAPER_RECIPE = {"lr": 8e-4, "poly_power": 7.0, "warmup_steps": 250}
AUTO = "auto"


def base_recipe(model_type: str) -> dict:
    """The values ``auto`` takes for ``model_type``: the paper's, with what its base declares of its own."""
    return {**PAPER_RECIPE, **family_for(model_type).recipe}


def _typed_fields(cls, settings: Mapping, where: str) -> dict:
    """The dataclass's fields from ``settings``, each coerced to its annotated type; missing or unknown keys refused."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"{where}unknown setting(s) {unknown}; known: {list(fields)}")
    missing = [name for name in fields if name not in settings]
    if missing:
        raise ValueError(f"{where}missing setting(s) {missing}")
    kinds = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}
    try:
        return {name: typed_value(name, settings[name], kinds[kind]) for name, kind in fields.items()}
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None


@dataclass(frozen=True)
class TrainingSettings:
    """The local training recipe (AdamW, warm-up + poly, 0.2 CE + 0.8 Dice) and how a site validates.

    ``lr``, ``warmup_steps`` and ``poly_power`` set to ``auto`` take the model's base recipe
    (``base_recipe``): the built block always holds numbers.

    Attributes:
        local_epochs: local epochs per round (the paper: 1).
        max_steps_per_round: cap on local steps per round (0: no cap).
        batch_size: 2.5D stacks per step (each stack = 5 slices).
        lr: base learning rate; weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up over the first global steps (at most a quarter of the federation's:
            ``flap_sam.training.local_trainer``); poly_power: exponent of the poly decay.
        foreground_fraction: share of sampled stacks centred on a slice with foreground.
        augment: random flips, rotations, intensity changes of the training stacks.
        amp: bf16 autocast on a GPU (and on a CPU whose site sets ``cpu_bf16``: ``flap_sam.training.device.autocast_bf16``).
        seed: sampling and augmentation seed (each round draws from ``round_seed``).
        fedprox_mu: FedProx proximal weight mu (0: plain FedAvg); adds mu/2 * ||w - w_global||^2 over
            the trainable tensors, w_global being the weights at the round's start.
        round_inference / final_inference: how a volume is segmented in the per-round validation and
            in the final cross-site evaluation (``flap_sam.training.inference``).
    """

    local_epochs: float
    max_steps_per_round: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    poly_power: float
    foreground_fraction: float
    augment: bool
    amp: bool
    seed: int
    fedprox_mu: float
    round_inference: str
    final_inference: str

    @classmethod
    def from_settings(cls, settings: Mapping, where: str = "", model_type: str = "vit_b") -> "TrainingSettings":
        """Build and check the block from a mapping with exactly its keys (``where`` prefixes an error);
        ``auto`` values take ``model_type``'s base recipe."""
        recipe = base_recipe(model_type)
        settings = {k: (recipe[k] if k in recipe and v == AUTO else v) for k, v in settings.items()}
        values = _typed_fields(cls, settings, where)
        try:
            for name, minimum in (("local_epochs", 1e-9), ("max_steps_per_round", 0), ("batch_size", 1), ("lr", 0.0),
                                  ("weight_decay", 0.0), ("warmup_steps", 0), ("poly_power", 0.0), ("foreground_fraction", 0.0),
                                  ("fedprox_mu", 0.0)):
                at_least(name, values[name], minimum)
            if values["foreground_fraction"] > 1:
                raise ValueError(f"foreground_fraction: {values['foreground_fraction']} must be at most 1")
            one_of("round_inference", values["round_inference"], INFERENCE_MODES)
            one_of("final_inference", values["final_inference"], INFERENCE_MODES)
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        return cls(**values)

    def steps_per_round(self, steps_per_epoch: int) -> int:
        """Local steps of one round: ``local_epochs`` epochs, capped by ``max_steps_per_round`` (0: no cap)."""
        return self.capped(max(1, round(self.local_epochs * steps_per_epoch)))

    def capped(self, steps: int) -> int:
        """``steps`` under the ``max_steps_per_round`` cap (0: no cap)."""
        return min(steps, self.max_steps_per_round) if self.max_steps_per_round > 0 else steps

    def round_seed(self, round_number: int) -> int:
        """The sampling seed of one round (or one baseline epoch): differs per round, reproducible per seed."""
        return self.seed * 100_003 + round_number

    def uses_amp(self, device: torch.device, cpu_bf16: bool = False) -> bool:
        """bf16 autocast runs on CUDA, and on a CPU with native bf16 (AVX512-BF16, AMX) whose site sets ``cpu_bf16``."""
        return autocast_bf16(self.amp, device, cpu_bf16)


@dataclass(frozen=True)
class SiteSettings:
    """Where a site's data and checkpoint are, what fits its machine, and what the job lets it train.

    A site may override the fields of ``OVERRIDABLE`` in ``<workspace>/local/flap_sam_site.json``.

    Attributes:
        data_root: folder with the site's datalist (``demo``: the built-in synthetic data).
        datalist: the datalist file ("" = ``<data_root>/<site>.json`` or ``<data_root>/datalist.json``).
        checkpoint: SAM checkpoint at the site ("" = lite_medsam's bundled weights; none for a ViT).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        attention: ``fused`` | ``reference``; checkpointing: ``off`` | ``encoder``.
        data_workers: batch-building processes (``auto`` or a count); cpu_threads: torch threads (``auto`` or a count).
        cpu_bf16: with ``amp``, bf16 autocast on this site's CPU where it computes bf16 natively.
        cpu_return_memory: on a CPU, freed activations go back to the OS at once
            (``flap_sam.training.device.release_freed_tensors_on_cpu``): less peak memory, more CPU time.
        random_weights: the job means a ViT without checkpoint to train real data (tests only).
        demo_budget: the job runs the demo's short budget, on the demo data only.
        site_ranks: site name -> the LoRA rank it trains at and exchanges, at most the job's ``rank``
            (sites not named: the job's rank; ``docs/heterogeneous-sites.md``).
    """

    data_root: str
    datalist: str
    checkpoint: str
    device: str
    attention: str
    checkpointing: str
    data_workers: str
    cpu_threads: str
    cpu_bf16: bool
    cpu_return_memory: bool
    random_weights: bool
    demo_budget: bool
    site_ranks: dict

    OVERRIDABLE = ("data_root", "datalist", "checkpoint", "device", "attention", "checkpointing", "data_workers", "cpu_threads", "cpu_bf16",
                   "cpu_return_memory", "site_ranks")

    @classmethod
    def from_settings(cls, settings: Mapping, where: str = "") -> "SiteSettings":
        """Build and check the block from a mapping with exactly its keys (``where`` prefixes an error)."""
        values = _typed_fields(cls, settings, where)
        try:
            one_of("attention", values["attention"], ATTENTION_MODES)
            one_of("checkpointing", values["checkpointing"], CHECKPOINTING_MODES)
            resolve_device(values["device"])
            resolve_data_workers(values["data_workers"], torch.device("cpu"))
            resolve_cpu_threads(values["cpu_threads"])
            values["site_ranks"] = {str(site): typed_value(f"site_ranks: the rank of {site}", rank, int)
                                    for site, rank in values["site_ranks"].items()}
            for site, rank in values["site_ranks"].items():
                at_least(f"site_ranks: the rank of {site}", rank, 1)
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        return cls(**values)

    def lora_rank(self, site: str, spec: "ModelSpec") -> int:
        """The LoRA rank ``site`` trains at under ``spec``: its ``site_ranks`` entry, else the job's.

        Raises:
            ValueError: one line when the entry is above the job's rank, or the preset trains no LoRA
                or fixes its rank (the check at job-writing and at the site's start).
        """
        job_rank = spec.preset_obj.lora_rank(spec.rank)
        if site not in self.site_ranks:
            return job_rank
        rank = self.site_ranks[site]
        preset = spec.preset_obj
        if not preset.uses_lora:
            raise ValueError(f"site_ranks: preset {preset.name} trains no LoRA adapter, so {site} has no rank to set")
        if preset.fixed_rank is not None:
            raise ValueError(f"site_ranks: preset {preset.name} fixes the LoRA rank at {preset.fixed_rank}; {site} cannot train at {rank}")
        if rank > job_rank:
            raise ValueError(f"site_ranks: {site} at rank {rank} is above the job's rank {job_rank} (the global adapter's)")
        return rank

    def with_overrides(self, overrides: Mapping, where: str) -> "SiteSettings":
        """This block with a site's own values (only ``OVERRIDABLE`` keys), checked again."""
        unknown = sorted(set(overrides) - set(self.OVERRIDABLE))
        if unknown:
            raise ValueError(f"{where}unknown keys {unknown}; allowed: {list(self.OVERRIDABLE)}")
        return SiteSettings.from_settings({**dataclasses.asdict(self), **overrides}, where)
