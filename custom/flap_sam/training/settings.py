"""The typed blocks a component receives: the training recipe, a site's own settings, the attack simulation.

A job hands each block whole to its component (``training``, ``site`` and ``attack_simulation`` in
``settings.conf``); ``flap-sam train`` and the bench build the same blocks from a job folder, so a
baseline trains exactly as the federation does. A block's fields are its settings in
``flap_sam.training.schema`` (``settings_block``): their types, defaults, bounds and allowed values
are declared there once, and ``from_settings`` checks every value against them; what a block adds
here is its behaviour and the checks that span several of its settings. A value that does not fit
raises ``ValueError`` with one line naming the setting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from typing_extensions import Self

from flap_sam.model.encoders import family_for
from flap_sam.training.device import autocast_bf16, resolve_device
from flap_sam.training.schema import AUTO, SETTING, SITE_OVERRIDABLE, block_defaults, block_keys, block_values, checked_value

if TYPE_CHECKING:
    from flap_sam.data.dicom.labels import StructureNames
    from flap_sam.model.factory import ModelSpec


BlockT = TypeVar("BlockT", bound="type[SettingsBlock]")


def settings_block(block: str) -> Callable[[BlockT], BlockT]:
    """Class decorator (above ``@dataclass(frozen=True)``): the class is the typed form of ``block``.

    Its fields are the block's settings in the schema's order, each annotated with the setting's type
    (``auto``-able ones may also take ``str``; a ``dict`` may say its item types): written out so a type
    checker sees them, and checked here, at import, against the schema, where every setting is declared
    (its default, bounds and meaning). The class gets ``BLOCK`` and its docstring's ``Attributes`` from the
    settings' meanings.

    Raises:
        TypeError: the fields are not the block's settings, in order, of their declared types.
    """

    def check(cls: BlockT) -> BlockT:
        names = block_keys(block)
        fields = list(dataclasses.fields(cls))  # type: ignore[arg-type]  # a dataclass: the decorator sits above @dataclass
        if [f.name for f in fields] != list(names):
            raise TypeError(f"{cls.__name__}: fields {[f.name for f in fields]} are not the {block} block's settings {list(names)}")
        for f in fields:
            annotation = str(f.type)
            declared = SETTING[f.name].type.__name__
            allowed = {declared, *([f"{declared} | str"] if SETTING[f.name].auto else [])}
            if annotation.split("[")[0] not in allowed and annotation not in allowed:
                raise TypeError(f"{cls.__name__}.{f.name}: annotated {annotation}, declared {declared} (flap_sam.training.schema)")
        cls.__doc__ = (
            (cls.__doc__ or "").rstrip()
            + "\n\n    Attributes (``flap_sam.training.schema``):\n"
            + "".join(f"        {n}: {SETTING[n].doc}\n" for n in names)
        )
        cls.BLOCK = block
        return cls

    return check


class SettingsBlock:
    """What every typed block has: built from a mapping of its settings, checked against the schema."""

    BLOCK: ClassVar[str] = ""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = "") -> Self:
        """Build and check the block from a mapping with exactly its keys (``where`` prefixes an error)."""
        values = block_values(cls.BLOCK, settings, where)
        try:
            values = cls._checked(values)
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        return cls(**values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The block's settings at their package defaults."""
        return block_defaults(cls.BLOCK)

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        return values


# The recipe settings whose package default is ``auto``: each takes its base's value. The paper's recipe
# is that of ViT-B (and -L, -H, and the test size); a base that needs other values declares them once, in
# its encoder family's ``recipe`` (LiteMedSAM: measured on the real-anatomy and kits demos,
# docs/real-anatomy.md#the-recipe-on-a-pretrained-base).
PAPER_RECIPE: dict[str, float] = {"lr": 8e-4, "poly_power": 7.0, "warmup_steps": 250}


def base_recipe(model_type: str) -> dict[str, float]:
    """The values ``auto`` takes for ``model_type``: the paper's, with what its base declares of its own."""
    return {**PAPER_RECIPE, **family_for(model_type).recipe}


@settings_block("training")
@dataclass(frozen=True)
class TrainingSettings(SettingsBlock):
    """The local training recipe (AdamW, warm-up + poly, 0.2 CE + 0.8 Dice) and how a site validates.

    ``lr``, ``warmup_steps`` and ``poly_power`` set to ``auto`` take the model's base recipe
    (``base_recipe``): the built block always holds numbers.
    """

    local_epochs: float
    max_steps_per_round: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    poly_power: float
    augment: bool
    acquisition_augment: bool
    class_weights: dict[str, float]
    foreground_fraction: float
    foreground_sampling: str
    amp: bool
    seed: int
    round_inference: str
    final_inference: str
    flip_tta: bool
    min_component_mm3: float
    fedprox_mu: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = "", model_type: str = "vit_b") -> Self:
        """Build and check the block from a mapping with exactly its keys (``where`` prefixes an error);
        ``auto`` values take ``model_type``'s base recipe."""
        recipe = base_recipe(model_type)
        settings = {k: (recipe[k] if k in recipe and str(v).strip().lower() == AUTO else v) for k, v in settings.items()}
        return super().from_settings(settings, where)

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        weights = {}
        for name, weight in values["class_weights"].items():
            try:
                weights[str(name)] = float(weight)
            except (TypeError, ValueError):
                raise ValueError(f"class_weights: the weight of {name}: {weight!r} is not a number") from None
            if not (math.isfinite(weights[str(name)]) and weights[str(name)] > 0):
                raise ValueError(f"class_weights: the weight of {name}: {weight!r} must be a number above 0")
        values["class_weights"] = weights
        return values

    def loss_weights(self, class_names: tuple[str, ...]) -> list[float] | None:
        """Each class's weight in the loss, background first ((K + 1,)); None when every weight is 1.

        Raises:
            ValueError: ``class_weights`` names a class the task does not have.
        """
        unknown = sorted(set(self.class_weights) - set(class_names))
        if unknown:
            raise ValueError(f"class_weights: no class {', '.join(unknown)} in this task (classes: {', '.join(class_names)})")
        weights = [1.0] + [self.class_weights.get(name, 1.0) for name in class_names]
        return None if all(w == 1.0 for w in weights) else weights

    def steps_per_round(self, steps_per_epoch: int) -> int:
        """Local steps of one round: ``local_epochs`` epochs, capped by ``max_steps_per_round`` (0: no cap)."""
        return self.capped(max(1, round(self.local_epochs * steps_per_epoch)))

    def capped(self, steps: int) -> int:
        """``steps`` under the ``max_steps_per_round`` cap (0: no cap)."""
        return min(steps, self.max_steps_per_round) if self.max_steps_per_round > 0 else steps

    def round_seed(self, round_number: int) -> int:
        """The sampling seed of one round (or one baseline epoch): differs per round, reproducible per seed."""
        return self.seed * 100_003 + round_number

    def refinements(self) -> dict[str, Any]:
        """The keywords of ``segment_volume`` / ``evaluate_volumes`` that refine a segmentation (``flip_tta``,
        ``min_component_mm3``)."""
        return {"flip_tta": self.flip_tta, "min_component_mm3": self.min_component_mm3}

    def uses_amp(self, device: torch.device, cpu_bf16: bool = False) -> bool:
        """bf16 autocast runs on CUDA, and on a CPU with native bf16 (AVX512-BF16, AMX) whose site sets ``cpu_bf16``."""
        return autocast_bf16(self.amp, device, cpu_bf16)


@settings_block("site")
@dataclass(frozen=True)
class SiteSettings(SettingsBlock):
    """Where a site's data and checkpoint are, what fits its machine, and what the job lets it train.

    A site may override the settings of ``OVERRIDABLE`` (``site_overridable`` in the schema) in
    ``<workspace>/local/flap_sam_site.json``. ``data_workers`` and ``cpu_threads`` hold a count or
    ``auto``, typed once here; the site resolves ``auto`` on its machine (``resolve_data_workers``, ``resolve_cpu_threads``;
    ``checkpointing`` and ``cpu_return_memory``: ``flap_sam.training.memory_plan``).
    """

    data_root: str
    datalist: str
    structure_names: dict[str, tuple[str, ...]]
    train_volumes: int
    checkpoint: str
    random_weights: bool
    device: str
    attention: str
    checkpointing: str  # off | encoder | auto
    data_workers: int | str
    cpu_threads: int | str
    cpu_bf16: bool
    cpu_return_memory: bool | str
    progress_every_s: float
    site_ranks: dict[str, int]
    demo_budget: bool

    OVERRIDABLE: ClassVar[tuple[str, ...]] = SITE_OVERRIDABLE

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        resolve_device(values["device"])  # auto | cpu | cuda | cuda:N
        values["site_ranks"] = {
            str(site): checked_value("rank", rank, label=f"site_ranks: the rank of {site}") for site, rank in values["site_ranks"].items()
        }
        from flap_sam.data.dicom.labels import names_of

        values["structure_names"] = {str(name): names_of(name, names) for name, names in values["structure_names"].items()}
        return values

    def structures(self, class_names: tuple[str, ...]) -> StructureNames:
        """Which DICOM segment labels and ROI names mean which of ``class_names`` (checked: every key is a class)."""
        from flap_sam.data.dicom.labels import StructureNames

        return StructureNames.build(class_names, self.structure_names)

    def lora_rank(self, site: str, spec: ModelSpec) -> int:
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

    def with_overrides(self, overrides: Mapping[str, Any], where: str) -> SiteSettings:
        """This block with a site's own values (only ``OVERRIDABLE`` keys), checked again."""
        unknown = sorted(set(overrides) - set(self.OVERRIDABLE))
        if unknown:
            raise ValueError(f"{where}unknown keys {unknown}; allowed: {list(self.OVERRIDABLE)}")
        return SiteSettings.from_settings({**dataclasses.asdict(self), **overrides}, where)


SITE_ATTACKS = ("label_flip",)  # the attacks a site runs in its own training (the rest: the server crafts the update)
DEFAULT_STRENGTH = {"sign_flip": 4.0, "scale": 10.0, "gaussian": 1.0, "alie": 1.0, "ipm": 4.0, "label_flip": 1.0}


@dataclass(frozen=True)
class AttackSettings:
    """The ``attack_simulation`` block, resolved: which sites attack, how, how hard.

    Attributes:
        attack: the attack (``none``: no simulation); sites: the Byzantine sites;
        strength: ``attack_strength``, or the attack's default where that is 0 (``DEFAULT_STRENGTH``).
    """

    attack: str
    sites: tuple[str, ...]
    strength: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> AttackSettings:
        """From the block (or some of its keys: the rest take their defaults; None: no attack)."""
        values = block_values("attack_simulation", {**block_defaults("attack_simulation"), **(settings or {})})
        attack, sites = values["attack"], values["attack_sites"]
        sites = tuple(s.strip() for s in sites.split(",") if s.strip())
        if attack != "none" and not sites:
            raise ValueError(f'attack = {attack} needs attack_sites (e.g. "site-4")')
        return cls(attack, sites, values["attack_strength"] or DEFAULT_STRENGTH.get(attack, 0.0))

    @property
    def active(self) -> bool:
        return self.attack != "none"

    @property
    def on_server(self) -> bool:
        return self.active and self.attack not in SITE_ATTACKS

    def describe(self) -> str:
        return f"ATTACK SIMULATION {self.attack} (strength {self.strength:g}) by {', '.join(self.sites)}"

    def record(self) -> dict[str, Any]:
        return {"attack": self.attack, "sites": list(self.sites), "strength": self.strength}
