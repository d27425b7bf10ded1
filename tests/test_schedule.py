"""The learning-rate schedule spans the federation: one smooth curve over all rounds, the same
through a restart; AdamW starts each round from the received global model without old moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.data.demo import ensure_demo_site
from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset
from flap_sam.jobs.settings import check_settings, training_settings
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.local_trainer import LocalTrainer
from flap_sam.training.schedule import federation_steps, fitted_warmup, warmup_poly_factor
from flap_sam.training.settings import PAPER_RECIPE, TrainingSettings, base_recipe

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def test_the_curve_has_no_jump_where_warm_up_ends():
    factors = np.array([warmup_poly_factor(s, 250, 2500, 7.0) for s in range(2500)])
    assert factors[249] == 1.0 and factors[250] == 1.0  # the poly decay starts where warm-up ends
    assert np.abs(np.diff(factors)).max() <= 1 / 250 + 1e-9  # the largest step is one warm-up increment
    assert np.all(np.diff(factors[250:]) <= 0) and 0 <= factors[-1] < 1e-10


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> SliceStackDataset:
    """The training stacks of a demo site at the test model's 64 px."""
    root = ensure_demo_site("kits", "site-1", str(tmp_path_factory.mktemp("demo")))
    site = SiteData.load(get_profile("kits"), root, "site-1", SPEC.image_size, SPEC.num_classes)
    return SliceStackDataset(site.train, None, seed=0)


def _trainer(settings: TrainingSettings, stacks: SliceStackDataset) -> tuple[LocalTrainer, list[float]]:
    """A real trainer on real stacks; torch's optimizer hook records the lr of every step it takes."""
    torch.manual_seed(0)
    trainer = LocalTrainer(build_model(SPEC), stacks, settings, torch.device("cpu"))
    lrs: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"]))
    return trainer, lrs


def _run_rounds(trainer, rounds, num_rounds, steps):
    for r in rounds:
        first, total = federation_steps(r, num_rounds, steps)
        trainer.train(steps, first_step=first, total_steps=total, round_seed=r)


def test_the_lr_is_one_curve_over_the_rounds_and_through_a_restart(stacks):
    settings = training_settings(lr=8e-4, warmup_steps=6, poly_power=7.0, batch_size=1)
    num_rounds, steps = 4, 2
    straight, lrs = _trainer(settings, stacks)
    _run_rounds(straight, range(num_rounds), num_rounds, steps)
    expected = [8e-4 * warmup_poly_factor(s, 6, num_rounds * steps, 7.0) for s in range(num_rounds * steps)]
    assert np.allclose(lrs, expected)
    # A site (or server) that restarts before round 2 goes on along the same curve, not from warm-up.
    before, lrs_before = _trainer(settings, stacks)
    _run_rounds(before, range(2), num_rounds, steps)
    after, lrs_after = _trainer(settings, stacks)
    _run_rounds(after, range(2, num_rounds), num_rounds, steps)
    assert np.allclose(lrs_before + lrs_after, lrs)


def test_adamw_moments_start_afresh_each_round():
    torch.manual_seed(0)
    trainer = LocalTrainer(build_model(SPEC), [], training_settings(lr=0.01, batch_size=2, warmup_steps=0), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    stacks, labels = torch.rand(2, 5, 64, 64, generator=g), torch.randint(0, 3, (2, 5, 64, 64), generator=g)
    trainer.start_round()
    trainer.step(stacks, labels)
    assert len(trainer.optimizer.state) > 0
    trainer.start_round()  # the global model has replaced the local weights
    assert len(trainer.optimizer.state) == 0


@pytest.mark.parametrize("warmup_steps", [0, 6, 250])
@pytest.mark.parametrize("total_steps", [1, 7, 80, 200, 1000, 2500])
def test_warm_up_and_decay_fit_any_federation(warmup_steps, total_steps):
    factors = np.array([warmup_poly_factor(s, warmup_steps, total_steps, 7.0) for s in range(total_steps)])
    top = int(np.argmax(factors))
    assert factors[top] == 1.0 and top <= max(0, total_steps // 4 - 1)  # warm-up: at most a quarter of the steps
    assert np.all(np.diff(factors[top:]) <= 0)  # then only decay ...
    assert warmup_poly_factor(total_steps, warmup_steps, total_steps, 7.0) == 0.0  # ... which ends with the federation


def test_the_papers_warm_up_stays_in_the_papers_federations_and_shrinks_in_a_short_one():
    assert fitted_warmup(250, 25 * 40) == 250  # 25 rounds of a 40-step local epoch
    assert fitted_warmup(250, 4 * 20) == 20  # 4 rounds of 20 steps
    assert fitted_warmup(6, 4 * 20) == 6  # a shorter warm-up is kept


def test_auto_recipe_settings_take_the_bases_values_and_a_set_value_wins():
    paper = check_settings({}).training
    assert (paper.lr, paper.warmup_steps, paper.poly_power) == (
        PAPER_RECIPE["lr"],
        PAPER_RECIPE["warmup_steps"],
        PAPER_RECIPE["poly_power"],
    )
    lite = check_settings({"model_type": "lite_medsam"}).training
    assert (lite.lr, lite.warmup_steps, lite.poly_power) == tuple(
        base_recipe("lite_medsam")[k] for k in ("lr", "warmup_steps", "poly_power")
    )
    assert base_recipe("lite_medsam") != PAPER_RECIPE  # LiteMedSAM declares a recipe of its own
    mine = check_settings({"model_type": "lite_medsam", "lr": "0.0005", "poly_power": 7}).training
    assert (mine.lr, mine.poly_power, mine.warmup_steps) == (0.0005, 7.0, base_recipe("lite_medsam")["warmup_steps"])
    with pytest.raises(ValueError, match="^lr: 'fast' is not a number$"):
        check_settings({"lr": "fast"})


def test_a_round_reports_its_progress_within_the_round_and_not_after_its_last_step(stacks):
    trainer, _ = _trainer(training_settings(lr=1e-3, warmup_steps=0, batch_size=1), stacks)
    reports = []
    done, _ = trainer.train(4, 0, 8, 0, on_progress=reports.append, progress_every_s=0.0, current_round=3)
    assert done == 4 and [r.steps_done for r in reports] == [1, 2, 3] and {(r.round, r.steps) for r in reports} == {(3, 4)}
    assert all(r.seconds_per_step > 0 and np.isfinite(r.mean_loss) for r in reports)
    last = reports[-1]
    assert last.seconds_left == pytest.approx(last.seconds_per_step)
    assert last.describe() == (
        f"round 3: 3/4 steps, loss {last.mean_loss:.4f}, {last.seconds_per_step:.1f} s a step, about {last.seconds_per_step:.0f} s left"
    )
    quiet = []
    trainer.train(4, 4, 8, 1, on_progress=quiet.append, progress_every_s=3600.0)
    assert quiet == []  # at most every progress_every_s
