"""Every setting of a FLAP-SAM job, declared once: name, type, default, allowed values or bounds, the
party and block it belongs to, whether a site may override it, and its one-line meaning.

``SCHEMA`` is the one declaration; everything else is derived from it:

* ``federated/job_config/settings.conf``, the HOCON file every job includes (top-level defaults and
  the blocks of ``"{name}"`` references handed whole to a component), and ``docs/settings.md``
  (both written by ``python -m flap_sam.jobs.settings_page``; a test keeps them current);
* the defaults of the command line and of the FLARE components' keywords (``package_defaults``);
* the typed blocks the components receive (``flap_sam.training.settings``: a block's fields are its
  settings here) and the site-override list (``SITE_OVERRIDABLE``);
* the check of every value, when a job is written (``flap_sam.jobs.settings.check_settings``) and
  when a component starts (``checked_value``).

Allowed values live with the code that implements them: a list from a lower module is named by
reference (``"flap_sam.model.attention:ATTENTION_MODES"``, resolved when a value is checked, so this
module imports nothing heavy and the command line starts at once); the values the federated
components implement are declared here, the lowest layer that checks them, and those components
take them from here (``choices_of``).

This module imports only the standard library: ``flap-sam --help`` reads its defaults without
torch, MONAI or FLARE.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUTO = "auto"  # the value of a setting that takes what its context decides (a base's recipe, the machine)
_KINDS = (bool, int, float, str, dict)


@dataclass(frozen=True)
class Section:
    """A heading of ``settings.conf`` and ``docs/settings.md``: which party its settings are for."""

    title: str
    party: str  # "both" (must be identical on server and sites) | "server" | "sites"


MODEL = Section("model (must be identical on server and clients)", "both")
TASK = Section("task (must be identical on server and clients): dataset is the shortcut, the rest override it", "both")
SERVER = Section("server", "server")
ATTACK = Section(
    "attack simulation (measuring robustness only: a job with an attack names flap_sam.measurement's components, which only FLARE's simulator allows)",
    "both",
)
TRANSPORT = Section("transport (both sides)", "both")
PRIVACY = Section("privacy on the update (sites): FLARE's filters on the update as a difference (docs/security.md)", "sites")
TIMEOUTS = Section("FLARE's client timeouts (sites)", "sites")
SITE = Section("site (a site may override these in <workspace>/local/flap_sam_site.json)", "sites")
TRAINING = Section("local training", "sites")
VALIDATION = Section("validation: how a volume is segmented (docs/real-data.md#how-training-and-validation-work)", "sites")


@dataclass(frozen=True)
class Setting:
    """One setting: everything the package knows about it.

    Attributes:
        name: the key in a job's config, ``--set`` and ``FlapSamRecipe``'s keywords.
        default: the package default (the paper's recipe); its type is the setting's unless ``kind`` says.
        doc: the one-line meaning (``settings.conf``'s comment, ``docs/settings.md``'s table).
        section: where it is listed, and which party it is for.
        block: the block of ``settings.conf`` that hands it to its component with others
            (``job_spec`` | ``training`` | ``site`` | ``attack_simulation``); None: passed by name.
        kind: bool | int | float | str | dict, when not the default's type.
        choices: the allowed values: a tuple, or ``"module:NAME"`` of the code that implements them.
        minimum / maximum: inclusive bounds; above / below: exclusive bounds.
        auto: ``auto`` is allowed besides a value of ``kind``.
        pattern: a regular expression the whole (text) value matches.
        site_overridable: a site may set it in ``<workspace>/local/flap_sam_site.json``.
        why: appended to the error of a bound or a pattern (what it protects, what the value must be).
    """

    name: str
    default: object
    doc: str
    section: Section
    block: str | None = None
    kind: type | None = None
    choices: tuple[Any, ...] | str | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    auto: bool = False
    pattern: str | None = None
    site_overridable: bool = False
    why: str = ""

    @property
    def type(self) -> type:
        """The setting's type: ``kind``, else the default's."""
        kind = self.kind or type(self.default)
        if kind not in _KINDS:
            raise TypeError(f"setting {self.name}: type {kind.__name__} is not one of bool, int, float, str, dict")
        return kind

    def allowed(self) -> tuple[Any, ...] | None:
        """The allowed values (a reference is imported now), or None when any value of the type is."""
        if isinstance(self.choices, str):
            module, _, name = self.choices.partition(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices


SCHEMA: tuple[Setting, ...] = (
    # model: one block, `spec`, to the Learner, the result filter and the server's adapter model (JobSpec)
    Setting(
        "model_type",
        "vit_b",
        "vit_b | vit_l | vit_h (official SAM file in checkpoint) | lite_medsam (pretrained weights bundled) | "
        "unet (MONAI's 2D U-Net from scratch, the baseline; preset fft) | vit_test (tiny, tests only)",
        MODEL,
        "job_spec",
        choices="flap_sam.model.encoders:MODEL_TYPES",
    ),
    Setting(
        "image_size",
        224,
        "SAM input size in pixels, a multiple of 16 (the paper: 224; lite_medsam's native size: 256)",
        MODEL,
        "job_spec",
        minimum=16,
    ),
    Setting(
        "dataset",
        "kits",
        "kits | ixi | prostate | chest_ct: the built-in task (classes, modality, label map) unless overridden below",
        MODEL,
        "job_spec",
        choices="flap_sam.data.profiles:PROFILES",
    ),
    Setting(
        "preset", "flap", "what trains and what is exchanged (docs/presets.md)", MODEL, "job_spec", choices="flap_sam.model.presets:PRESETS"
    ),
    Setting(
        "slice_channels",
        "grey",
        "what a slice's three input channels hold: grey (the paper's: its grey value repeated) | neighbours (the slices "
        "below, at and above it: 2.5D context for thin structures)",
        MODEL,
        "job_spec",
        choices="flap_sam.data.stacks:SLICE_CHANNELS",
    ),
    Setting("rank", 32, "LoRA rank", MODEL, "job_spec", minimum=1),
    Setting("lora_scale", 1.0, "LoRA output scale", MODEL, "job_spec"),
    # task
    Setting("classes", "", 'foreground class names in label order, e.g. "liver,lesion" ("" = the dataset\'s)', TASK, "job_spec"),
    Setting("modality", "", 'ct | mri ("" = the dataset\'s): the intensity recipe', TASK, "job_spec"),
    Setting(
        "label_map", "", 'source label value -> class index, e.g. "2:1" ("" = the dataset\'s, or none for own classes)', TASK, "job_spec"
    ),
    Setting("ct_window", "", 'HU window LOW,HIGH for `flap-sam infer` without site statistics ("" = the dataset\'s)', TASK, "job_spec"),
    Setting("channel", "", '4D images (several sequences in one file): the index to use ("" = refuse 4D images)', TASK, "job_spec"),
    # server
    Setting("server_checkpoint", "", 'SAM checkpoint on the server ("" = lite_medsam\'s bundled weights; random for a ViT)', SERVER),
    Setting("num_rounds", 25, "the paper: 25 rounds", SERVER, minimum=1),
    Setting("min_clients", 2, "set it to the number of sites (Fed-KiTS: 6)", SERVER, minimum=1),
    Setting(
        "scope",
        "flap",
        "the privacy scope this job asks the sites for (meta.json): flap | flap_percentile, as provisioned sites "
        "define them (docs/deployment.md#site-policies)",
        SERVER,
        pattern=r"[A-Za-z0-9_.-]+",
        why="a scope name: letters, digits, _ . -",
    ),
    Setting(
        "rank_weighting",
        "all",
        "sites at mixed LoRA ranks (site_ranks), lora_exact: all (each site weighs in every rank component; one above its "
        "rank keeps the global value for its share) | supplied (each component averaged over the sites that train it)",
        SERVER,
        choices=("all", "supplied"),
    ),
    Setting(
        "silent_site_timeout",
        900.0,
        "seconds a site may stay silent within a round (no result, no progress report) before the server takes it as "
        "gone: the job stops with a line naming it if fewer than min_clients sites remain (0 = wait as long as it takes)",
        SERVER,
        minimum=0,
    ),
    Setting("train_timeout", 0, "seconds per round (0 = wait as long as it takes)", SERVER, minimum=0),
    Setting(
        "aggregation",
        "lora_exact",
        "lora_exact (the paper: per LoRA pair the weighted sum of B·A, re-factorised by rank-r SVD; "
        "other tensors averaged) | average (NVFlare's weighted average of every tensor) | fedseca, median, trimmed_mean "
        "(Byzantine-robust, on each site's change; docs/security.md)",
        SERVER,
        choices=("average", "lora_exact", "fedseca", "median", "trimmed_mean"),
    ),
    Setting(
        "trim_fraction",
        0.25,
        "trimmed_mean: share of the sites' values cut at each end of every coordinate",
        SERVER,
        minimum=0,
        below=0.5,
        why="it is cut at both ends",
    ),
    Setting(
        "fedseca_sparsity",
        0.9,
        "fedseca: share of each site's smallest changes set to 0 before the sign vote (the paper's 0.9)",
        SERVER,
        minimum=0,
        below=1,
    ),
    Setting(
        "aggregation_weights",
        {},
        "site -> weight multiplier, e.g. { site-1 = 1.0, site-2 = 0.5 }; sites not named weigh 1.0 (x their local steps)",
        SERVER,
    ),
    Setting("resume_from", "", "id of a job this server was running when it stopped: go on from its last finished round", SERVER),
    Setting(
        "start_from",
        "",
        "id of a finished job on this server (or an adapter file's absolute path): its global adapter is this job's "
        "first global model, all rounds run (a hospital that joins: docs/deployment.md#a-hospital-that-joins)",
        SERVER,
    ),
    Setting(
        "cross_site_timeout",
        1800,
        "seconds a site may take to score a global model at the end (a dropped site is skipped after it)",
        SERVER,
        minimum=0,
    ),
    Setting(
        "tracking",
        "tensorboard",
        "tensorboard | mlflow | wandb: also send the sites' metrics there (TensorBoard events are always written)",
        SERVER,
        choices=("tensorboard", "mlflow", "wandb"),
    ),
    Setting(
        "tracking_uri", "", 'mlflow: tracking server or file: store ("" = file:<server job folder>/mlruns); wandb: online | offline', SERVER
    ),
    Setting("tracking_experiment", "flap-sam", "MLflow experiment / W&B project", SERVER),
    # attack simulation: one block to the Learner and the aggregator (AttackSettings)
    Setting(
        "attack",
        "none",
        "none | sign_flip | scale | gaussian | label_flip | alie | ipm: what attack_sites do (docs/security.md)",
        ATTACK,
        "attack_simulation",
        choices=("none", "sign_flip", "scale", "gaussian", "label_flip", "alie", "ipm"),
    ),
    Setting("attack_sites", "", 'the Byzantine sites, e.g. "site-4"', ATTACK, "attack_simulation"),
    Setting(
        "attack_strength",
        0.0,
        "0 = the attack's default: sign_flip 4, scale 10, gaussian 1 (x the change's RMS), alie 1 (z), ipm 4",
        ATTACK,
        "attack_simulation",
        minimum=0,
    ),
    # transport and privacy: to the filters by name
    Setting(
        "transport",
        "fp32",
        "fp32 | fp16 | bf16 | int8: how exchanged tensors travel, both directions",
        TRANSPORT,
        choices=("fp32", "fp16", "bf16", "int8"),
    ),
    Setting("privacy", "none", "none | percentile | svt", PRIVACY, choices=("none", "percentile", "svt")),
    Setting(
        "privacy_percentile",
        10,
        "percentile: send only differences above this percentile of |difference| per step",
        PRIVACY,
        kind=float,
        minimum=0,
        maximum=100,
    ),
    Setting("percentile_gamma", 0.01, "percentile: clip each difference to this per local step", PRIVACY, above=0),
    Setting("svt_fraction", 0.1, "svt: share of the differences sent", PRIVACY, above=0, maximum=1),
    Setting("svt_epsilon", 0.1, "svt: privacy budget of the selection, per round", PRIVACY, above=0),
    Setting("svt_noise_var", 0.1, "svt: release noise", PRIVACY, minimum=0),
    Setting("svt_gamma", 1e-5, "svt: clip of the released values", PRIVACY, minimum=0),
    Setting("svt_tau", 1e-6, "svt: threshold", PRIVACY, minimum=0),
    Setting(
        "get_task_timeout",
        0,
        "seconds to receive a task (0 = FLARE's default); fft sends 362 MB per site and round: e.g. 1800",
        TIMEOUTS,
        minimum=0,
    ),
    Setting(
        "submit_task_result_timeout",
        0,
        "seconds to send a result (0 = FLARE's default); raise with get_task_timeout for fft",
        TIMEOUTS,
        minimum=0,
    ),
    # site: one block to the Learner (SiteSettings), which a site may partly override
    Setting("data_root", "demo", 'folder with the site\'s datalist; "demo" = built-in synthetic data', SITE, "site", site_overridable=True),
    Setting(
        "datalist", "", 'datalist file ("" = <data_root>/<site>.json or <data_root>/datalist.json)', SITE, "site", site_overridable=True
    ),
    Setting(
        "structure_names",
        {},
        "DICOM labels: class -> the SEG segment labels or RTSTRUCT ROI names that mean it, e.g. { kidney = "
        '"Kidney_L|Kidney_R", tumour = GTV } (each class also matches its own name; docs/hospital-data.md)',
        SITE,
        "site",
        site_overridable=True,
    ),
    Setting(
        "train_volumes",
        0,
        "labelled volumes a site trains on: at most the first N of its datalist's training list (0 = all; "
        "measures Dice against labelled data, docs/baselines.md)",
        SITE,
        "site",
        minimum=0,
        site_overridable=True,
    ),
    Setting(
        "checkpoint",
        "",
        'SAM checkpoint at the site ("" = lite_medsam\'s bundled weights; a ViT: none, refused on real data)',
        SITE,
        "site",
        site_overridable=True,
    ),
    Setting(
        "random_weights",
        False,
        "true: the job means a ViT without checkpoint to train real data from random weights (tests only)",
        SITE,
        "site",
    ),
    Setting("device", "auto", "auto | cpu | cuda | cuda:N", SITE, "site", site_overridable=True),
    Setting(
        "attention",
        "fused",
        "fused (torch SDPA) | reference (segment-anything's explicit softmax): same results",
        SITE,
        "site",
        choices="flap_sam.model.attention:ATTENTION_MODES",
        site_overridable=True,
    ),
    Setting(
        "checkpointing",
        AUTO,
        "off | encoder: recompute encoder blocks in backward (less memory, slower steps; auto: encoder where a step "
        "would not fit the site's share of its machine, docs/performance.md#what-auto-chooses-for-a-sites-memory)",
        SITE,
        "site",
        choices="flap_sam.model.checkpointing:CHECKPOINTING_MODES",
        auto=True,
        site_overridable=True,
    ),
    Setting(
        "data_workers",
        AUTO,
        "processes building batches beside training (auto: 0 on CPU, up to 4 with a GPU)",
        SITE,
        "site",
        kind=int,
        auto=True,
        minimum=0,
        site_overridable=True,
    ),
    Setting(
        "cpu_threads",
        AUTO,
        "torch threads of a site on a CPU (auto: every core; sites sharing a machine: cores / sites)",
        SITE,
        "site",
        kind=int,
        auto=True,
        minimum=1,
        site_overridable=True,
    ),
    Setting(
        "cpu_bf16",
        False,
        "true, with amp: bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16, AMX), fp32 on others "
        "(docs/performance.md#bf16-on-a-cpu)",
        SITE,
        "site",
        site_overridable=True,
    ),
    Setting(
        "cpu_return_memory",
        AUTO,
        "true: a CPU site gives freed activations back to the OS at once (less peak memory, more CPU time; auto: true "
        "where a step would not fit otherwise, docs/performance.md#what-auto-chooses-for-a-sites-memory)",
        SITE,
        "site",
        kind=bool,
        auto=True,
        site_overridable=True,
    ),
    Setting(
        "progress_every_s",
        30.0,
        "seconds between a site's reports within a round (steps done, loss, s a step, time left) to its log and to the "
        "server (flap-sam monitor, show_stats)",
        SITE,
        "site",
        minimum=0,
        site_overridable=True,
    ),
    Setting(
        "site_ranks",
        {},
        "site -> the LoRA rank it trains at and exchanges, at most rank, e.g. { site-1 = 4 } (sites not named: "
        "rank; docs/heterogeneous-sites.md)",
        SITE,
        "site",
        site_overridable=True,
    ),
    # local training: one block to the Learner, `flap-sam train` and the bench (TrainingSettings)
    Setting("local_epochs", 1.0, "local epochs per round", TRAINING, "training", above=0),
    Setting(
        "max_steps_per_round", 0, "cap on local steps (0 = no cap: one local epoch per round, the paper)", TRAINING, "training", minimum=0
    ),
    Setting("batch_size", 24, "2.5D stacks per step (each 5 slices)", TRAINING, "training", minimum=1),
    Setting(
        "lr",
        AUTO,
        "AdamW base learning rate: linear warm-up, then poly decay over the whole federation (auto: the base's recipe, "
        "docs/settings.md#each-bases-recipe-auto)",
        TRAINING,
        "training",
        kind=float,
        auto=True,
        minimum=0,
    ),
    Setting("weight_decay", 0.1, "AdamW weight decay", TRAINING, "training", minimum=0),
    Setting(
        "warmup_steps",
        AUTO,
        "linear warm-up over the first global steps of the federation, at most a quarter of its steps (auto: the base's recipe)",
        TRAINING,
        "training",
        kind=int,
        auto=True,
        minimum=0,
    ),
    Setting(
        "poly_power",
        AUTO,
        "exponent of the poly decay after warm-up, which ends at the federation's last step (auto: the base's recipe)",
        TRAINING,
        "training",
        kind=float,
        auto=True,
        minimum=0,
    ),
    Setting(
        "augment",
        True,
        "rot90/flip, rotation, gamma, erasing, two of shear/scale/translate/contrast/brightness/sharpness (MONAI)",
        TRAINING,
        "training",
    ),
    Setting(
        "acquisition_augment",
        False,
        "true, with augment: also simulate other acquisitions (MONAI's bias field, histogram shift, noise, low "
        "resolution; docs/baselines.md#acquisition-augmentation)",
        TRAINING,
        "training",
    ),
    Setting(
        "class_weights",
        {},
        "class -> its weight in the loss (cross-entropy and Dice), e.g. { ribs = 3 } (the background and classes not "
        "named: 1; docs/baselines.md#per-class-loss-weights)",
        TRAINING,
        "training",
    ),
    Setting(
        "foreground_fraction", 0.5, "share of sampled stacks centred on a slice with foreground", TRAINING, "training", minimum=0, maximum=1
    ),
    Setting(
        "foreground_sampling",
        "slice",
        "slice: foreground_fraction of the stacks centred on any slice with foreground | class: that share split evenly "
        "among the classes, each over its own slices (a small structure drawn as often as a large one)",
        TRAINING,
        "training",
        choices="flap_sam.data.stacks:FOREGROUND_SAMPLING",
    ),
    Setting("amp", True, "bf16 autocast on a GPU (a CPU trains in fp32 unless its site sets cpu_bf16)", TRAINING, "training"),
    Setting("seed", 0, "sampling and augmentation seed of every site", TRAINING, "training"),
    # validation
    Setting(
        "round_inference",
        "centre",
        "per-round validation: centre (one forward per slice) | overlap (5 windows per slice, the paper's)",
        VALIDATION,
        "training",
        choices="flap_sam.training.inference:INFERENCE_MODES",
    ),
    Setting(
        "final_inference",
        "overlap",
        "the final cross-site evaluation: overlap | centre",
        VALIDATION,
        "training",
        choices="flap_sam.training.inference:INFERENCE_MODES",
    ),
    Setting(
        "flip_tta",
        False,
        "true: each slice's softmax averaged with that of its left-right mirror (test-time augmentation; 2x the forwards)",
        VALIDATION,
        "training",
    ),
    Setting(
        "min_component_mm3",
        0.0,
        "remove each class's connected components smaller than this volume in mm³ from a segmentation (0 = keep all)",
        VALIDATION,
        "training",
        minimum=0,
    ),
    Setting(
        "fedprox_mu",
        0.0,
        "FedProx: adds mu/2·‖w − w_global‖² over the trainable tensors to the local loss (0 = plain FedAvg)",
        VALIDATION,
        "training",
        minimum=0,
    ),
    Setting("demo_budget", False, "true only in demo.conf: a site refuses to train real data on the demo's budget", VALIDATION, "site"),
)

SETTING: dict[str, Setting] = {s.name: s for s in SCHEMA}
# The blocks of settings.conf, each handed whole to its component (in the order settings.conf lists them).
BLOCKS = ("job_spec", "training", "site", "attack_simulation")
SITE_OVERRIDABLE = tuple(s.name for s in SCHEMA if s.site_overridable)


def package_defaults() -> dict[str, Any]:
    """Every setting and its package default; a fresh copy."""
    return {s.name: (dict(s.default) if isinstance(s.default, dict) else s.default) for s in SCHEMA}


def block_keys(block: str) -> tuple[str, ...]:
    """The settings one block hands to its component, in declaration order."""
    keys = tuple(s.name for s in SCHEMA if s.block == block)
    if not keys:
        raise ValueError(f"no settings block {block!r} (blocks: {', '.join(BLOCKS)})")
    return keys


def block_defaults(block: str) -> dict[str, Any]:
    """The settings of one block at their package defaults."""
    defaults = package_defaults()
    return {name: defaults[name] for name in block_keys(block)}


def choices_of(name: str) -> tuple[Any, ...]:
    """The allowed values of setting ``name`` (for the code that implements them)."""
    allowed = SETTING[name].allowed()
    if allowed is None:
        raise KeyError(f"setting {name} has no list of allowed values")
    return allowed


def typed_value(name: str, value: object, kind: type) -> Any:
    """``value`` as ``kind`` (bool, int, float, str, dict); ``"24"`` -> 24, ``"true"`` -> True.

    Raises:
        ValueError: ``<name>: <value> is not <a kind>`` (a bool is never taken for a number, NaN and infinity
            are no setting's value).
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
            if number is not None and not math.isfinite(number):
                raise ValueError(f"{name}: {value!r} is not a finite number")
            if number is not None and (kind is float or number.is_integer()):
                return kind(number)
    elif kind is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    article = {bool: "true or false", int: "a whole number", float: "a number", dict: "a mapping", str: "a text"}[kind]
    raise ValueError(f"{name}: {value!r} is not {article}")


def checked_value(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` of setting ``name``, typed and checked against its declaration.

    Args:
        label: the name in an error (default ``name``; e.g. ``"site_ranks: the rank of site-1"``).

    Raises:
        ValueError: one line naming the setting: not of its type, not an allowed value, out of bounds.
    """
    setting, label = SETTING[name], label or name
    if setting.auto and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    value = typed_value(label, value, setting.type)
    allowed = setting.allowed()
    if allowed is not None and value not in allowed:
        raise ValueError(f"{label}: {value!r} is not one of {list(allowed)}")
    why = f" ({setting.why})" if setting.why else ""
    if setting.minimum is not None and value < setting.minimum:
        raise ValueError(f"{label}: {value} must be at least {type(value)(setting.minimum)}{why}")
    if setting.above is not None and not value > setting.above:
        raise ValueError(f"{label}: {value} must be above {setting.above}{why}")
    if setting.maximum is not None and value > setting.maximum:
        raise ValueError(f"{label}: {value} must be at most {setting.maximum}{why}")
    if setting.below is not None and not value < setting.below:
        raise ValueError(f"{label}: {value} must be below {setting.below}{why}")
    if setting.pattern is not None and not re.fullmatch(setting.pattern, value):
        raise ValueError(f"{label}: {value!r} is not of the form {setting.pattern}{why}")
    return value


def block_values(block: str, settings: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A block's settings from a mapping with exactly its keys, each typed and checked (``where`` prefixes an error)."""
    keys = block_keys(block)
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ValueError(f"{where}unknown setting(s) {unknown}; known: {list(keys)}")
    missing = [name for name in keys if name not in settings]
    if missing:
        raise ValueError(f"{where}missing setting(s) {missing}")
    try:
        return {name: checked_value(name, settings[name]) for name in keys}
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None


# ---- settings.conf, written from SCHEMA ------------------------------------------------------------

CONF_HEADER = """\
# GENERATED from flap_sam/training/schema.py (python -m flap_sam.jobs.settings_page): do not edit.
# Default settings of every FLAP-SAM job (top-level keys; "{name}" placeholders in
# client.conf / server.conf resolve to them): the paper's recipe. A job overrides any of them
# after its include of client.conf / server.conf; the shipped jobs also include demo.conf, the
# demo's short budget, which `flap-sam job ... --set data_root=DIR` leaves out.

format_version = 2
"""


def hocon_value(value: object) -> str:
    """A default as HOCON text: JSON for texts, numbers and booleans; ``{ k = v }`` for mappings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {hocon_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def settings_conf_text() -> str:
    """``settings.conf`` as the schema declares it: every default under its section, then the blocks."""
    lines, section = [CONF_HEADER], None
    for s in SCHEMA:
        if s.section is not section:
            section = s.section
            lines.append(f"\n# ---- {section.title} ----")
        lines.append(f"{s.name} = {hocon_value(s.default)}".ljust(40) + f"# {s.doc}")
    lines.append("\n# The blocks, each handed whole to its component, which checks it again at start-up.")
    for block in BLOCKS:
        lines.append(f"{block} {{")
        lines += [f'  {name} = "{{{name}}}"' for name in block_keys(block)]
        lines.append("}")
    return "\n".join(lines) + "\n"
