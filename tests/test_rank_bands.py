"""Sites at mixed LoRA ranks: the energy of the global update per rank band, and each rank component
averaged over the sites that train it (``rank_weighting = supplied``), on constructed cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from flap_sam.federated.aggregation_rules import aggregate_exact, component_weights, rank_bands, update_band_energy

OUT, IN, RANK = 12, 10, 8
A_NAME, B_NAME = "blocks.0.attn.qkv.lora_A.weight", "blocks.0.attn.qkv.lora_B.weight"


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, cols)))
    return q


U, V = _orthonormal(OUT, RANK, 0), _orthonormal(IN, RANK, 1)  # one basis for every model: products stay of rank <= 8


def _pair(strengths) -> dict[str, np.ndarray]:
    """A LoRA pair whose component k is strengths[k] * u_k v_k^T (B = U, A = diag(strengths) V^T), at rank len(strengths)."""
    strengths = np.asarray(strengths, dtype=np.float64)
    r = len(strengths)
    return {B_NAME: U[:, :r].astype(np.float32), A_NAME: (strengths[:, None] * V[:, :r].T).astype(np.float32)}


def _product(model: dict) -> np.ndarray:
    return model[B_NAME].astype(np.float64) @ model[A_NAME].astype(np.float64)


def test_the_bands_end_at_each_sites_rank_and_the_jobs():
    assert rank_bands([4, 8, 16, 32, 8], 32) == [(0, 4), (4, 8), (8, 16), (16, 32)]
    assert rank_bands({32}, 32) == [(0, 4), (4, 8), (8, 16), (16, 32)]  # one rank: powers of two, the reference
    assert rank_bands({4}, 4) == [(0, 4)] and rank_bands([2, 4], 4) == [(0, 2), (2, 4)]


def test_the_energy_of_an_update_of_known_singular_values_falls_in_its_bands():
    before = _pair([1, 1, 1, 1, 1, 1, 1, 1])
    change = np.array([4.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0])  # singular values of the update, largest first
    after = _pair(1 + change)
    shares = update_band_energy(before, after, [(0, 2), (2, 4), (4, 8)])
    squared = change**2
    assert shares == pytest.approx(
        [squared[:2].sum() / squared.sum(), squared[2:4].sum() / squared.sum(), squared[4:].sum() / squared.sum()]
    )
    assert update_band_energy(before, before, [(0, 4), (4, 8)]).tolist() == [0.0, 0.0]


def test_each_component_is_weighed_by_the_sites_that_supply_it():
    weights = component_weights([4, 8, 8], [0.5, 0.25, 0.25], RANK)
    assert weights[:, :4].tolist() == [[0.5] * 4, [0.25] * 4, [0.25] * 4]
    assert weights[:, 4:].tolist() == [[0.0] * 4, [0.5] * 4, [0.5] * 4]


def test_supplied_averages_an_upper_component_over_the_sites_that_train_it_and_all_dilutes_it():
    """Global model: components 8, 7, ..., 1 (largest first, as the server keeps it). Site A (rank 4, its first four
    components) moves them to 9; site B (rank 8) moves all eight to 3. ``supplied``: components 1-4 -> (9 + 3) / 2,
    5-8 -> 3 (site B alone). ``all``: 5-8 -> (g_k + 3) / 2, site A's share keeping the global value there."""
    global_strengths = np.arange(RANK, 0, -1.0)
    reference = _pair(global_strengths)
    site_a, site_b = _pair([9.0] * 4), _pair([3.0] * RANK)
    contributions = [(1.0, site_a), (1.0, site_b)]
    expected = {"supplied": [6.0] * 4 + [3.0] * 4, "all": [6.0] * 4 + list((global_strengths[4:] + 3.0) / 2)}
    for weighting, strengths in expected.items():
        result = aggregate_exact(contributions, reference, rank_weighting=weighting)
        assert result[A_NAME].shape == (RANK, IN) and result[B_NAME].shape == (OUT, RANK)
        np.testing.assert_allclose(_product(result), _product(_pair(strengths)), atol=1e-5, err_msg=weighting)
    # The upper band's share of the update: its change is halved under `all`, whole under `supplied`.
    bands = rank_bands([4, 8], RANK)
    upper = {w: update_band_energy(reference, aggregate_exact(contributions, reference, rank_weighting=w), bands)[1] for w in expected}
    assert upper["all"] < upper["supplied"]


def test_with_every_site_at_one_rank_both_weightings_give_the_same_model():
    reference = _pair([1.0] * RANK)
    contributions = [(3.0, _pair([2.0] * RANK)), (1.0, _pair(np.linspace(0.5, 4.0, RANK)))]
    supplied = aggregate_exact(contributions, reference, rank_weighting="supplied")
    every = aggregate_exact(contributions, reference, rank_weighting="all")
    assert all(np.array_equal(supplied[n], every[n]) for n in every)
    with pytest.raises(ValueError, match="rank_weighting: 'bands' is not one of"):
        aggregate_exact(contributions, reference, rank_weighting="bands")


def test_components_no_site_holds_keep_the_global_value_under_supplied():
    reference = _pair(np.arange(RANK, 0, -1.0))
    result = aggregate_exact([(1.0, _pair([5.0] * 4)), (1.0, _pair([7.0] * 2))], reference, rank_weighting="supplied")
    np.testing.assert_allclose(_product(result), _product(_pair([6.0, 6.0, 5.0, 5.0, 4.0, 3.0, 2.0, 1.0])), atol=1e-5)
