"""Every setting is declared once (the schema), reachable from a job, and checked when the job is written."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from flap_sam.cli.main import main
from flap_sam.jobs.recipe import FlapSamRecipe
from flap_sam.jobs.settings import check_settings, training_settings
from flap_sam.jobs.settings_page import SETTINGS_CONF, settings_page
from flap_sam.jobs.writer import config_path, job_settings, read_job, source_job, write_job
from flap_sam.training import schema
from flap_sam.training.schema import AUTO, BLOCKS, SCHEMA, SERVER, TRAINING, Setting, block_keys, package_defaults, settings_conf_text
from flap_sam.training.settings import SettingsBlock, SiteSettings, TrainingSettings, settings_block

from jobtools import REPO

CONFIGS = REPO / "custom" / "flap_sam" / "federated" / "job_config"


@pytest.mark.parametrize(
    "item, error",
    [
        ("batch_size=abc", "batch_size: 'abc' is not a whole number"),
        ("classes=liver,liver", "classes: a name appears twice"),
        ("modality=pet", "modality: 'pet' is not one of ['ct', 'mri']"),
        ("transport=fp8", "transport: 'fp8' is not one of"),
        ("lr=-1", "lr: -1.0 must be at least 0.0"),
        ("num_rounds=0", "num_rounds: 0 must be at least 1"),
        ("device=gpu0", "device: 'gpu0' is not auto, cpu, cuda or cuda:N"),
        ("round_inference=fast", "round_inference: 'fast' is not one of"),
        ("augment=3", "augment: 3 is not true or false"),
        ('aggregation_weights={"site-1":0}', "aggregation_weights: the weight of site-1 must be positive"),
        ("privacy=svt svt_fraction=2", "svt_fraction: 2.0 must be at most 1"),
        ("aggregation=trimmed_mean trim_fraction=0.5", "trim_fraction: 0.5 must be below 0.5 (it is cut at both ends)"),
        ("scope=a/b", "scope: 'a/b' is not of the form"),
        ("cpu_threads=0", "cpu_threads: 0 must be at least 1"),
        ('site_ranks={"site-1":64}', "site_ranks: site-1 at rank 64 is above the job's rank 32"),
        ('site_ranks={"site-1":0}', "site_ranks: the rank of site-1: 0 must be at least 1"),
        ('site_ranks={"site-1":4} aggregation=average', "site_ranks: aggregation = average averages A and B one by one"),
        ('site_ranks={"site-1":2} preset=samed', "site_ranks: preset samed fixes the LoRA rank at 4"),
        ('site_ranks={"site-1":2} preset=pdec_ft', "site_ranks: preset pdec_ft trains no LoRA adapter"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_before_the_job_is_written(tmp_path, capsys, item, error):
    out = tmp_path / "job"
    assert main(["job", "kits_lora", "--out", str(out), "--set", *item.split()]) == 2
    err = capsys.readouterr().err.strip()
    assert error in err and "\n" not in err and "kits_lora" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_every_setting_reaches_a_component():
    """Each setting is used by name in client.conf, server.conf or one of settings.conf's blocks (so a job can set it)."""
    text = "\n".join((CONFIGS / name).read_text() for name in ("client.conf", "server.conf"))
    used = set(re.findall(r'"\{(\w+)\}"', text)) | {k for block in BLOCKS for k in block_keys(block)}
    used |= {"get_task_timeout", "submit_task_result_timeout"}  # read by FLARE's client itself from the app config
    used |= {"scope"}  # goes into the job's meta.json (flap-sam job, the recipe), where FLARE reads it
    assert set(package_defaults()) - used == set()


def _declare(monkeypatch, *settings: Setting) -> None:
    """Add settings to the schema for one test (SCHEMA is the declaration; SETTING indexes it by name)."""
    monkeypatch.setattr(schema, "SCHEMA", schema.SCHEMA + settings)
    for setting in settings:
        monkeypatch.setitem(schema.SETTING, setting.name, setting)


def test_a_setting_declared_once_reaches_the_check_a_job_folder_settings_conf_and_the_page(tmp_path, monkeypatch, capsys):
    """Adding a server setting is one declaration in the schema (and its consumer): the check takes its type and
    bound, ``flap-sam job`` writes it, a job folder resolves it, settings.conf and the settings page list it."""
    _declare(monkeypatch, Setting("round_pause", 5, "seconds the server waits between rounds", SERVER, minimum=0))
    assert check_settings({})["round_pause"] == 5 and check_settings({"round_pause": "7"})["round_pause"] == 7
    with pytest.raises(ValueError, match=r"^round_pause: 'soon' is not a whole number$"):
        check_settings({"round_pause": "soon"})
    assert main(["job", "kits_lora", "--out", str(tmp_path / "bad"), "--set", "round_pause=-1"]) == 2
    assert "round_pause: -1 must be at least 0" in capsys.readouterr().err
    out = tmp_path / "job"
    assert main(["job", "kits_lora", "--out", str(out), "--set", "round_pause=7"]) == 0
    assert job_settings(str(out))["round_pause"] == 7
    assert "round_pause = 5" in settings_conf_text()
    row = next(line for line in settings_page({}).splitlines() if "`round_pause`" in line)
    assert row == "| `round_pause` | `5` |  | ≥ 0 | seconds the server waits between rounds |"


def test_a_block_setting_declared_in_the_schema_must_be_a_typed_field_of_its_block(monkeypatch):
    """A training setting is declared once, in the schema (default, bounds, meaning); its block's class names it
    as a typed field, for the type checker, and the class is checked against the schema when it is made: a
    missing or mistyped field stops the import, so the two cannot drift. settings.conf hands it to the Learner."""
    _declare(monkeypatch, Setting("grad_clip", 0.0, "clip the gradient norm to this (0 = no clip)", TRAINING, "training", minimum=0))
    fields = {f.name: f.type for f in dataclasses.fields(TrainingSettings)}

    def block(annotations: dict[str, str]) -> type:
        cls = type("Recipe", (SettingsBlock,), {"__annotations__": annotations, "__doc__": "A training block."})
        return settings_block("training")(dataclasses.dataclass(frozen=True)(cls))

    with pytest.raises(TypeError, match=r"Recipe: fields \[.*'fedprox_mu'\] are not the training block's settings \[.*'grad_clip'\]"):
        block(fields)
    with pytest.raises(TypeError, match=r"^Recipe.grad_clip: annotated str, declared float"):
        block({**fields, "grad_clip": "str"})
    Recipe = block({**fields, "grad_clip": "float"})
    values = {**Recipe.defaults(), "lr": 8e-4, "warmup_steps": 250, "poly_power": 7.0}
    assert Recipe.from_settings({**values, "grad_clip": "1.5"}).grad_clip == 1.5
    assert "grad_clip: clip the gradient norm" in Recipe.__doc__
    with pytest.raises(ValueError, match=r"^training: grad_clip: -1.0 must be at least 0.0$"):
        Recipe.from_settings({**values, "grad_clip": -1}, where="training: ")
    assert '  grad_clip = "{grad_clip}"' in settings_conf_text().partition("\ntraining {")[2].partition("\n}")[0]


def test_the_typed_blocks_hold_exactly_their_declared_settings():
    assert block_keys("training") == tuple(f.name for f in dataclasses.fields(TrainingSettings))
    assert block_keys("site") == tuple(f.name for f in dataclasses.fields(SiteSettings))
    assert SiteSettings.OVERRIDABLE == tuple(s.name for s in SCHEMA if s.site_overridable)
    assert "random_weights" in block_keys("site") and "random_weights" not in SiteSettings.OVERRIDABLE
    assert {s.section.party for s in SCHEMA if s.site_overridable} == {"sites"}  # a site overrides only what the sites read


def test_every_allowed_value_list_named_by_reference_exists_below_the_schema():
    """A reference names the code that implements the values; it is resolved at a check, so a typo would only
    show then: each resolves here, to a module of a layer the schema's layer (training) may import."""
    for setting in SCHEMA:
        if isinstance(setting.choices, str):
            module = setting.choices.partition(":")[0]
            assert module.split(".")[1] in {"model", "data", "training"}, setting.name
            assert setting.default in setting.allowed() or (setting.auto and setting.default == AUTO), setting.name
        elif setting.choices is not None:
            assert setting.default in setting.choices, setting.name


def test_settings_conf_is_generated_from_the_schema():
    assert Path(SETTINGS_CONF).read_text(encoding="utf-8") == settings_conf_text(), (
        "settings.conf is stale: python -m flap_sam.jobs.settings_page --out docs/settings.md"
    )


def test_the_shipped_jobs_resolve_to_the_configuration_they_had_before_the_schema(tmp_path):
    """Each job folder ``flap-sam job`` writes (the three jobs, as shipped and on real data) resolves, with FLARE's
    config loader, to the configuration it resolved to when settings.conf was written by hand (``fixtures/``)."""
    from nvflare.fuel.utils.config_factory import ConfigFactory

    real = {
        "kits_lora": {"data_root": "/data/kits", "min_clients": 6},
        "ixi_lora": {"data_root": "/data/ixi", "min_clients": 3},
        "prostate_lora": {"data_root": "/data/prostate", "min_clients": 6},
    }
    before = json.loads((REPO / "tests" / "fixtures" / "resolved_jobs.json").read_text())
    for job, real_data in real.items():
        for kind, settings in (("shipped", {}), ("real", real_data)):
            folder = write_job(source_job(job), os.path.join(tmp_path, f"{job}_{kind}"), settings)
            resolved = {
                side: _without(ConfigFactory.load_config(config_path(folder, side)).to_dict(), ADDED_SINCE_FIXTURE)
                for side in ("server", "client")
            }
            expected = _with_defaults_changed_since(_without_attack_arguments(before[f"{job}/{kind}"]))
            assert json.loads(json.dumps(resolved)) == expected, f"{job} ({kind})"


# Defaults changed on purpose since the fixture was written: setting -> (its default then, now).
DEFAULTS_CHANGED_SINCE_FIXTURE = {"checkpointing": ("off", "auto"), "cpu_return_memory": (False, "auto")}  # the memory plan


def _with_defaults_changed_since(config: dict) -> dict:
    for side in config.values():
        for name, (then, now) in DEFAULTS_CHANGED_SINCE_FIXTURE.items():
            assert side[name] == then, name
            side[name] = now
    return config


def _without_attack_arguments(config: dict) -> dict:
    """The fixture as production jobs are since the attack simulation left them: the aggregator's and the
    learner's ``attack`` argument is gone (measurement jobs name ``flap_sam.measurement.byzantine``)."""
    config = json.loads(json.dumps(config))
    for side in config.values():
        for component in side["components"]:
            if component["id"] in ("aggregator", "learner"):
                assert component["args"].pop("attack") == "{attack_simulation}"
    return config


# Settings declared after fixtures/resolved_jobs.json was recorded: the only keys a job folder may have beyond it.
ADDED_SINCE_FIXTURE = {
    "class_weights",
    "acquisition_augment",
    "train_volumes",
    "structure_names",
    "progress_every_s",
    "slice_channels",
    "foreground_sampling",
    "rank_weighting",
    "silent_site_timeout",
    "flip_tta",
    "min_component_mm3",
    "start_from",
    "aggregator_component",  # the aggregator of components, by name (a measurement job replaces it)
    "learner_component",
}


def _without(config, keys: set):
    """``config`` (a resolved FLARE config) without ``keys`` at any depth: the top-level defaults and inside the blocks."""
    if isinstance(config, dict):
        return {k: _without(v, keys) for k, v in config.items() if k not in keys}
    if isinstance(config, list):
        return [_without(v, keys) for v in config]
    return config


def test_the_package_defaults_are_the_papers_recipe():
    recipe = training_settings()
    assert (recipe.lr, recipe.batch_size, recipe.warmup_steps, recipe.poly_power, recipe.weight_decay) == (8e-4, 24, 250, 7.0, 0.1)
    assert (recipe.seed, recipe.amp, recipe.foreground_fraction, recipe.fedprox_mu) == (0, True, 0.5, 0.0)
    assert check_settings({}).spec.model.model_type == "vit_b" and check_settings({})["num_rounds"] == 25


def test_settings_no_job_could_set_before_now_reach_the_learner_and_flap_sam_train(tmp_path, capsys):
    out = tmp_path / "job"
    assert (
        main(
            [
                "job",
                "kits_lora",
                "--out",
                str(out),
                "--set",
                "seed=7",
                "amp=false",
                "foreground_fraction=0.75",
                "fedprox_mu=0.01",
                'aggregation_weights={"site-1": 2.0, "site-2": 0.5}',
            ]
        )
        == 0
    )
    job = read_job(str(out))
    assert (job.training.seed, job.training.amp, job.training.foreground_fraction, job.training.fedprox_mu) == (7, False, 0.75, 0.01)
    assert job_settings(str(out))["aggregation_weights"] == {"site-1": 2.0, "site-2": 0.5}


def test_a_recipe_takes_a_dict_valued_setting_and_refuses_a_bad_value():
    recipe = FlapSamRecipe("kits_lora", aggregation_weights={"site-1": 2.0})
    assert recipe.configs["server"]["aggregation_weights"] == {"site-1": 2.0}
    with pytest.raises(ValueError, match=r"batch_size: 'many' is not a whole number$"):
        FlapSamRecipe("kits_lora", batch_size="many")


def test_typed_blocks_coerce_config_text_and_refuse_unknown_keys():
    values = {
        k: v if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v)  # a mapping stays one in HOCON
        for k, v in dataclasses.asdict(training_settings()).items()
    }
    assert TrainingSettings.from_settings(values) == training_settings()
    with pytest.raises(ValueError, match=r"^training: unknown setting\(s\) \['lrr'\]"):
        TrainingSettings.from_settings({**values, "lrr": 1}, where="training: ")
    site = check_settings({}).site
    with pytest.raises(ValueError, match=r"^x: unknown keys \['lr'\]; allowed: \['data_root'"):
        site.with_overrides({"lr": 1}, where="x: ")
    assert site.with_overrides({"cpu_threads": "2"}, where="x: ").cpu_threads == 2  # typed once, as its declaration says
    assert site.with_overrides({"cpu_threads": "Auto"}, where="x: ").cpu_threads == "auto"


def test_bf16_autocast_runs_on_a_cpu_only_where_the_site_asks_and_the_cpu_computes_bf16_natively(tmp_path, monkeypatch):
    import torch

    from flap_sam.training import device as devices

    listed = tmp_path / "cpuinfo"
    listed.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert devices.cpu_flags(str(listed)) == {"fpu", "sse2", "avx2", "avx512f"}
    assert devices.cpu_flags(str(tmp_path / "none")) == frozenset()  # no /proc/cpuinfo: no bf16 claimed
    cpu, cuda, recipe = torch.device("cpu"), torch.device("cuda"), training_settings()
    # The CPUs this machine cannot be: one without native bf16 (AVX-512 alone), and ones with AVX512-BF16 or AMX.
    for flags, native in ((frozenset({"avx512f"}), False), (frozenset({"avx512f", "avx512_bf16"}), True), (frozenset({"amx_bf16"}), True)):
        monkeypatch.setattr(devices, "cpu_flags", lambda flags=flags: flags)
        devices.cpu_has_native_bf16.cache_clear()
        assert recipe.uses_amp(cpu, cpu_bf16=True) is native
        assert not recipe.uses_amp(cpu)  # the default: a CPU site trains in fp32
        assert recipe.uses_amp(cuda) and not training_settings(amp=False).uses_amp(cpu, cpu_bf16=True)
    devices.cpu_has_native_bf16.cache_clear()
    monkeypatch.undo()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        here = bool(set(f.read().split()) & {"avx512_bf16", "amx_bf16"})
    assert devices.cpu_has_native_bf16() is here  # this machine, read as it is


def test_a_site_turns_on_cpu_bf16_in_its_own_settings(tmp_path, capsys):
    site = check_settings({}).site
    assert site.cpu_bf16 is False and site.with_overrides({"cpu_bf16": True}, where="x: ").cpu_bf16 is True
    assert site.cpu_return_memory == "auto" and site.with_overrides({"cpu_return_memory": True}, where="x: ").cpu_return_memory is True
    out = tmp_path / "job"
    assert main(["job", "ixi_lora", "--out", str(out), "--set", "cpu_bf16=true"]) == 0
    assert read_job(str(out)).site.cpu_bf16 is True


def test_each_check_of_the_schema_gives_its_one_line_at_its_bound():
    """The bounds as declared: ``above`` and ``below`` exclude the bound, ``minimum`` and ``maximum`` include it;
    each refusal names the setting and what it must be."""
    check = schema.checked_value
    assert check("svt_fraction", 1) == 1.0 and check("foreground_fraction", 0) == 0.0  # maximum, minimum: included
    with pytest.raises(ValueError, match=r"^svt_epsilon: 0\.0 must be above 0"):
        check("svt_epsilon", 0)
    with pytest.raises(ValueError, match=r"^svt_fraction: 1\.5 must be at most 1"):
        check("svt_fraction", 1.5)
    with pytest.raises(ValueError, match=r"^foreground_fraction: -0\.1 must be at least 0"):
        check("foreground_fraction", -0.1)
    with pytest.raises(ValueError, match=r"^lr: 'nan' is not a finite number$"):
        check("lr", "nan")
    for name, value, kind in (("lr", "fast", "a number"), ("batch_size", 2.5, "a whole number"), ("class_weights", [1], "a mapping")):
        with pytest.raises(ValueError, match=rf"^{name}: .* is not {kind}$"):
            check(name, value)
    with pytest.raises(ValueError, match=r"^model_type: \['vit_b'\] is not a text$"):  # a list is never taken for a text
        check("model_type", ["vit_b"])


def test_a_block_is_refused_whole_when_a_setting_is_missing_or_the_block_unknown():
    defaults = {name: package_defaults()[name] for name in block_keys("training")}
    assert schema.block_values("training", defaults) == defaults
    with pytest.raises(ValueError, match=r"^lr: 'fast' is not a number$"):
        schema.block_values("training", {**defaults, "lr": "fast"})
    del defaults["lr"]
    with pytest.raises(ValueError, match=r"^site-1: missing setting\(s\) \['lr'\]$"):
        schema.block_values("training", defaults, where="site-1: ")
    with pytest.raises(ValueError, match=rf"^no settings block 'nope' \(blocks: {', '.join(BLOCKS)}\)$"):
        block_keys("nope")


def test_package_defaults_are_a_fresh_copy_and_mappings_are_written_as_hocon():
    defaults = package_defaults()
    defaults["class_weights"]["ribs"] = 3.0
    assert package_defaults()["class_weights"] == {}  # the schema's default is not changed through a copy
    assert schema.hocon_value({"ribs": 3, "lung": 0.5}) == '{"ribs" = 3, "lung" = 0.5}'
    assert schema.choices_of("transport") == schema.SETTING["transport"].allowed()
    with pytest.raises(KeyError, match="lr has no list of allowed values"):
        schema.choices_of("lr")
