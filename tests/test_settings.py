"""Every setting is declared once (settings.conf), reachable from a job, and checked when the job is written."""

from __future__ import annotations

import dataclasses
import re

import pytest

from flap_sam.cli.main import main
from flap_sam.jobs import defaults
from flap_sam.jobs.recipe import FlapSamRecipe
from flap_sam.jobs.settings_page import settings_page
from flap_sam.jobs.settings import BLOCKS, SETTINGS_CONF, block_keys, check_settings, package_defaults, training_settings
from flap_sam.jobs.writer import job_settings, read_job
from flap_sam.training.settings import SiteSettings, TrainingSettings
from jobtools import REPO

CONFIGS = REPO / "custom" / "flap_sam" / "federated" / "job_config"


@pytest.mark.parametrize("item, error", [
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
    ("privacy=svt svt_fraction=2", "privacy = svt: svt_fraction must be in (0, 1]"),
    ('site_ranks={"site-1":64}', "site_ranks: site-1 at rank 64 is above the job's rank 32"),
    ('site_ranks={"site-1":0}', "site_ranks: the rank of site-1: 0 must be at least 1"),
    ('site_ranks={"site-1":4} aggregation=average', "site_ranks: aggregation = average averages A and B one by one"),
    ('site_ranks={"site-1":2} preset=samed', "site_ranks: preset samed fixes the LoRA rank at 4"),
    ('site_ranks={"site-1":2} preset=pdec_ft', "site_ranks: preset pdec_ft trains no LoRA adapter"),
])
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


def test_a_setting_declared_by_its_one_line_reaches_the_check_a_job_folder_and_the_page(tmp_path, monkeypatch, capsys):
    """Adding a server setting is one line in settings.conf (and its consumer): the check takes its type from
    the default, ``flap-sam job`` writes it, a job folder resolves it, the settings page lists it."""
    text = open(SETTINGS_CONF, encoding="utf-8").read()
    anchor = "tracking_experiment = flap-sam"
    assert anchor in text
    conf = tmp_path / "settings.conf"
    conf.write_text(text.replace(anchor, "round_pause = 5             # seconds the server waits between rounds\n" + anchor))
    try:
        with monkeypatch.context() as patched:
            patched.setattr(defaults, "SETTINGS_CONF", str(conf))
            defaults.settings_conf.cache_clear()
            assert check_settings({})["round_pause"] == 5 and check_settings({"round_pause": "7"})["round_pause"] == 7
            with pytest.raises(ValueError, match=r"^round_pause: 'soon' is not a whole number$"):
                check_settings({"round_pause": "soon"})
            out = tmp_path / "job"
            assert main(["job", "kits_lora", "--out", str(out), "--set", "round_pause=7"]) == 0
            assert job_settings(str(out))["round_pause"] == 7
            row = next(line for line in settings_page(conf.read_text(), {}).splitlines() if "`round_pause`" in line)
            assert row == "| `round_pause` | `5` |  | seconds the server waits between rounds |"
    finally:
        defaults.settings_conf.cache_clear()
    assert "round_pause" not in package_defaults()


def test_the_blocks_are_exactly_their_typed_settings():
    assert block_keys("training") == tuple(f.name for f in dataclasses.fields(TrainingSettings))
    assert block_keys("site") == tuple(f.name for f in dataclasses.fields(SiteSettings))
    for block in BLOCKS:  # every key a block hands on is a setting of settings.conf, so it has its default there
        assert set(block_keys(block)) <= set(package_defaults()), block


def test_the_package_defaults_are_the_papers_recipe():
    recipe = training_settings()
    assert (recipe.lr, recipe.batch_size, recipe.warmup_steps, recipe.poly_power, recipe.weight_decay) == (8e-4, 24, 250, 7.0, 0.1)
    assert (recipe.seed, recipe.amp, recipe.foreground_fraction, recipe.fedprox_mu) == (0, True, 0.5, 0.0)
    assert check_settings({}).spec.model.model_type == "vit_b" and check_settings({})["num_rounds"] == 25


def test_settings_no_job_could_set_before_now_reach_the_learner_and_flap_sam_train(tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["job", "kits_lora", "--out", str(out), "--set", "seed=7", "amp=false", "foreground_fraction=0.75",
                 "fedprox_mu=0.01", 'aggregation_weights={"site-1": 2.0, "site-2": 0.5}']) == 0
    job = read_job(str(out))
    assert (job.training.seed, job.training.amp, job.training.foreground_fraction, job.training.fedprox_mu) == (7, False, 0.75, 0.01)
    assert job_settings(str(out))["aggregation_weights"] == {"site-1": 2.0, "site-2": 0.5}


def test_a_recipe_takes_a_dict_valued_setting_and_refuses_a_bad_value():
    recipe = FlapSamRecipe("kits_lora", aggregation_weights={"site-1": 2.0})
    assert recipe.configs["server"]["aggregation_weights"] == {"site-1": 2.0}
    with pytest.raises(ValueError, match=r"batch_size: 'many' is not a whole number$"):
        FlapSamRecipe("kits_lora", batch_size="many")


def test_typed_blocks_coerce_config_text_and_refuse_unknown_keys():
    values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in dataclasses.asdict(training_settings()).items()}
    assert TrainingSettings.from_settings(values) == training_settings()
    with pytest.raises(ValueError, match=r"^training: unknown setting\(s\) \['lrr'\]"):
        TrainingSettings.from_settings({**values, "lrr": 1}, where="training: ")
    site = check_settings({}).site
    with pytest.raises(ValueError, match=r"^x: unknown keys \['lr'\]; allowed: \['data_root'"):
        site.with_overrides({"lr": 1}, where="x: ")
    assert site.with_overrides({"cpu_threads": 2}, where="x: ").cpu_threads == "2"


def test_settings_conf_is_where_the_defaults_live():
    assert SETTINGS_CONF.endswith("settings.conf") and (CONFIGS / "settings.conf").samefile(SETTINGS_CONF)


def test_bf16_autocast_runs_on_a_cpu_only_where_the_site_asks_and_the_cpu_computes_bf16_natively(tmp_path, monkeypatch):
    import torch

    from flap_sam.training import device as devices

    listed = tmp_path / "cpuinfo"
    listed.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert devices.cpu_flags(str(listed)) == {"fpu", "sse2", "avx2", "avx512f"}
    assert devices.cpu_flags(str(tmp_path / "none")) == frozenset()  # no /proc/cpuinfo: no bf16 claimed
    cpu, cuda, recipe = torch.device("cpu"), torch.device("cuda"), training_settings()
    # The CPUs this machine cannot be: one without native bf16 (AVX-512 alone), and ones with AVX512-BF16 or AMX.
    for flags, native in ((frozenset({"avx512f"}), False), (frozenset({"avx512f", "avx512_bf16"}), True),
                          (frozenset({"amx_bf16"}), True)):
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
    assert site.cpu_return_memory is False and site.with_overrides({"cpu_return_memory": True}, where="x: ").cpu_return_memory
    out = tmp_path / "job"
    assert main(["job", "ixi_lora", "--out", str(out), "--set", "cpu_bf16=true"]) == 0
    assert read_job(str(out)).site.cpu_bf16 is True
