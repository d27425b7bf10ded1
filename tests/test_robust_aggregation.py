"""Byzantine-robust aggregation (median, trimmed mean, FedSECA) against hand-computed cases, and the attacks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext

from flap_sam.federated.aggregation_rules import (
    ChangeLayout,
    aggregate_robust,
    concordance_ratios,
    coordinate_median,
    fedseca,
    trimmed_mean,
)
from flap_sam.measurement.attacks import attack_contributions, attack_refusal, crafted_change, flipped_labels
from flap_sam.model.factory import ModelSpec
from flap_sam.model.lora import factorize
from flap_sam.training.settings import AttackSettings

from modeltools import noisy_payload

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def test_median_and_trimmed_mean_by_hand():
    changes = np.array([[1.0, -2.0], [2.0, 0.0], [3.0, 1.0], [100.0, -50.0]])
    np.testing.assert_allclose(coordinate_median(changes), [2.5, -1.0])
    np.testing.assert_allclose(trimmed_mean(changes, 0.25), [2.5, -1.0])  # one value cut at each end of each coordinate
    with pytest.raises(ValueError, match="leaves no value"):
        trimmed_mean(changes, 0.5)


def test_concordance_ratios_count_agreeing_and_disagreeing_nonzero_signs():
    signs = np.array([[1, 1, -1, 0], [1, -1, -1, 1], [-1, -1, 1, 0]])
    c = concordance_ratios(signs)
    # site 0 vs 1: overlap on 3 coordinates, 2 agree, 1 disagrees -> 1/3; site 0 vs 2: all 3 disagree -> -1
    np.testing.assert_allclose(c, [[1, 1 / 3, -1], [1 / 3, 1, -1 / 3], [-1, -1 / 3, 1]])


def test_fedseca_elects_the_sign_of_the_concordant_sites_and_averages_only_what_agrees():
    changes = np.array(
        [
            [1.0, 2.0, -1.0, 0.5],
            [2.0, 1.0, -2.0, 0.5],
            [1.5, 1.5, -1.0, -0.5],
            [-9.0, -9.0, 9.0, 9.0],  # the attacker: every sign flipped, large
        ]
    )
    change, vote = fedseca(changes, sparsity=0.0)
    # Clip: each coordinate to the median magnitude over sites (1.75, 1.75, 1.5, 0.5).
    # Concordance: the three honest sites agree with each other (ratios > 0), the attacker with none.
    np.testing.assert_allclose(vote.weights, [0.5, 0.5, 0.5, 0.0])  # (agree - disagree) / 4 sites, the attacker clamped at 0
    np.testing.assert_array_equal(vote.elected_sign, [1, 1, -1, 1])
    # Kept: values with the elected sign, after clipping: coordinate 3 keeps 0.5, 0.5 and the attacker's clipped 0.5.
    np.testing.assert_allclose(change, [(1.0 + 1.75 + 1.5) / 3, (1.75 + 1.0 + 1.5) / 3, (-1.0 - 1.5 - 1.0) / 3, 0.5])
    np.testing.assert_array_equal(vote.kept, [4, 4, 3, 1])


def test_fedseca_sparsity_keeps_each_sites_largest_changes():
    changes = np.array([[4.0, 0.1, 0.2, 3.0], [5.0, 0.2, 0.1, 4.0], [6.0, -0.1, 0.1, 5.0]])
    _, vote = fedseca(changes, sparsity=0.5)
    np.testing.assert_array_equal(vote.kept, [2, 2, 2])  # coordinates 0 and 3 of every site
    np.testing.assert_array_equal(vote.elected_sign, [1, 0, 0, 1])


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean", "fedseca"])
def test_identical_honest_updates_come_back_unchanged(aggregation):
    reference, site = noisy_payload(SPEC, 0), noisy_payload(SPEC, 1)
    result, _ = aggregate_robust(aggregation, [site, site, site, site], reference, sparsity=0.0)
    layout = ChangeLayout.of(reference)
    # LoRA pairs compare as products (the factorisation is new), every other tensor as is.
    np.testing.assert_allclose(layout.flatten(result, reference), layout.flatten(site, reference), atol=1e-5)
    assert set(result) == set(reference) and all(result[k].shape == reference[k].shape for k in reference)


def test_fedseca_at_its_default_sparsity_returns_the_largest_tenth_of_identical_updates_exactly():
    change = np.random.default_rng(3).normal(size=200)
    result, vote = fedseca(np.stack([change] * 4), sparsity=0.9)
    kept = np.abs(change) >= np.quantile(np.abs(change), 0.9)
    np.testing.assert_allclose(result[kept], change[kept])
    assert not result[~kept].any() and vote.kept.tolist() == [int(kept.sum())] * 4


def test_a_change_in_product_space_refactorises_to_the_pairs_rank():
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(16, 4)) @ rng.normal(size=(4, 24))  # rank 4
    b, a = factorize(matrix, 4)
    assert b.shape == (16, 4) and a.shape == (4, 24)
    np.testing.assert_allclose(b @ a, matrix, atol=1e-4)
    b, a = factorize(matrix, 8)  # a rank above the matrix's: zero-padded
    np.testing.assert_allclose(b @ a, matrix, atol=1e-4)


def test_attacks_craft_their_change_from_their_own_or_the_honest_changes():
    own, honest = np.array([1.0, -2.0]), np.array([[1.0, 0.0], [3.0, 2.0]])
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(crafted_change("sign_flip", 4.0, own, honest, rng), [-4.0, 8.0])
    np.testing.assert_allclose(crafted_change("scale", 10.0, own, honest, rng), [10.0, -20.0])
    np.testing.assert_allclose(crafted_change("ipm", 4.0, own, honest, rng), [-8.0, -4.0])
    np.testing.assert_allclose(crafted_change("alie", 1.0, own, honest, rng), [2.0 + np.sqrt(2), 1.0 + np.sqrt(2)])
    assert crafted_change("gaussian", 1.0, own, honest, rng).shape == own.shape


def test_an_attacked_site_sends_what_a_site_could_send():
    reference, models = noisy_payload(SPEC, 0), {f"site-{i}": noisy_payload(SPEC, i) for i in range(1, 5)}
    settings = AttackSettings.from_settings({"attack": "sign_flip", "attack_sites": "site-4", "attack_strength": 1.0})
    attacked = attack_contributions(settings, models, reference)
    layout = ChangeLayout.of(reference)
    assert all(attacked[s] is models[s] for s in ("site-1", "site-2", "site-3"))
    for key, _ in layout.entries:
        if isinstance(key, str):  # a plain tensor: exactly the flipped change
            np.testing.assert_allclose(attacked["site-4"][key] - reference[key], -(models["site-4"][key] - reference[key]), atol=1e-6)
        else:  # a LoRA pair: the flipped product re-factorised to the pair's rank, the best a site can send
            a, b = key
            target = 2 * reference[b].astype(np.float64) @ reference[a] - models["site-4"][b].astype(np.float64) @ models["site-4"][a]
            best_b, best_a = factorize(target, reference[a].shape[0])
            np.testing.assert_allclose(attacked["site-4"][b] @ attacked["site-4"][a], best_b @ best_a, atol=1e-5)


def test_label_flip_permutes_the_classes():
    np.testing.assert_array_equal(flipped_labels(2), [0, 2, 1])
    np.testing.assert_array_equal(flipped_labels(1), [1, 0])


def test_an_attack_runs_only_in_the_simulator_or_poc(tmp_path):
    class Workspace:
        def __init__(self, root):
            self.root = root

        def get_root_dir(self):
            return self.root

    ctx = FLContext()
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(tmp_path / "hospital" / "startup_kits" / "server1")), private=True)
    assert "simulator and POC deployments only" in attack_refusal(ctx)
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(tmp_path / "poc" / "example_project" / "prod_00" / "server")), private=True)
    assert attack_refusal(ctx) is None
    sim = FLContext()
    sim.set_prop(FLContextKey.SIMULATE_MODE, True, private=True)
    assert attack_refusal(sim) is None  # a simulated site
    server = FLContext()
    server.set_prop(ReservedKey.IDENTITY_NAME, "simulator_server", private=False)
    server.set_prop(ReservedKey.RUN_NUM, "simulate_job", private=False)
    assert attack_refusal(server) is None  # the simulator's server
    server.set_prop(ReservedKey.RUN_NUM, "4f6c2b0e-job", private=False)
    assert attack_refusal(server) is not None  # a server of that name running a real job
    with pytest.raises(ValueError, match="needs attack_sites"):
        AttackSettings.from_settings({"attack": "ipm"})


def test_a_server_outside_the_simulator_and_poc_stops_an_attacked_job_at_its_start(tmp_path):
    from nvflare.apis.event_type import EventType

    from flap_sam.measurement.byzantine import ByzantineAggregator

    class Workspace:
        def get_root_dir(self):
            return str(tmp_path / "hospital-kits" / "server1")

    class Engine:  # records what the aggregator fires (FLARE's engine ends the run on FATAL_SYSTEM_ERROR)
        fired: ClassVar[list] = []

        def fire_event(self, event_type, fl_ctx):
            self.fired.append((event_type, fl_ctx.get_prop(FLContextKey.EVENT_DATA)))

        def get_clients(self):
            return []

    ctx = FLContext()
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(), private=True)
    ctx.set_prop(ReservedKey.ENGINE, Engine(), private=True)
    aggregator = ByzantineAggregator("fedseca", attack={"attack": "ipm", "attack_sites": "site-2", "attack_strength": 0.0})
    aggregator.handle_event(EventType.START_RUN, ctx)
    assert [e for e, _ in Engine.fired] == [EventType.FATAL_SYSTEM_ERROR]
    assert "attack simulation is for FLARE's simulator and POC deployments only" in Engine.fired[0][1]
