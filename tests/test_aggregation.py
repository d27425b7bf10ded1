"""Server aggregation: exact LoRA aggregation (the sum of B·A re-factorised) and the site weights."""

from __future__ import annotations

import numpy as np
import pytest

from flap_sam.federated.aggregation_rules import aggregate_exact
from flap_sam.jobs.settings import check_aggregation_weights
from flap_sam.model.factory import ModelSpec
from flap_sam.model.lora import refactorize

from modeltools import noisy_payload

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def _factors(rng, out, inn, r, n):
    return [rng.normal(size=(out, r)).astype(np.float32) for _ in range(n)], [
        rng.normal(size=(r, inn)).astype(np.float32) for _ in range(n)
    ]


def test_exact_lora_aggregation_reproduces_the_weighted_sum_of_products_when_its_rank_fits():
    rng = np.random.default_rng(1)
    out, inn, r = 48, 32, 6  # out != in: a transposed factor cannot chain
    weights = [0.5, 0.3, 0.2]
    # Sites that share A (or B) give a sum of rank <= r.
    b_list, _ = _factors(rng, out, inn, r, 3)
    shared_a = rng.normal(size=(r, inn)).astype(np.float32)
    target = sum(w * b @ shared_a for w, b in zip(weights, b_list))
    new_b, new_a = refactorize(b_list, [shared_a] * 3, weights, r)
    assert new_b.shape == (out, r) and new_a.shape == (r, inn)
    np.testing.assert_allclose(new_b @ new_a, target, atol=1e-5 * np.abs(target).max())
    # Separate averaging of A and B is not the average of the products:
    _, a_list = _factors(rng, out, inn, r, 3)
    naive = sum(w * b for w, b in zip(weights, b_list)) @ sum(w * a for w, a in zip(weights, a_list))
    exact = sum(w * b @ a for w, b, a in zip(weights, b_list, a_list))
    assert np.abs(naive - exact).max() > 0.1 * np.abs(exact).max()


@pytest.mark.parametrize("sites", [2, 30])  # the factors narrower than the product (QR of each), and wider (the product itself)
def test_exact_lora_aggregation_is_the_best_rank_r_approximation_of_the_weighted_sum(sites):
    """Eckart-Young: B·A is the weighted sum's best rank-r approximation; B has orthonormal columns. 30 sites at rank 8
    give factors 240 wide, past 3/4 of the 96 x 80 product: the path that forms the product."""
    rng = np.random.default_rng(sites)
    out, inn, r = 96, 80, 8
    b_list, a_list = _factors(rng, out, inn, r, sites)
    weights = list(rng.uniform(0.1, 1.0, sites))
    product = sum(w * b.astype(np.float64) @ a.astype(np.float64) for w, b, a in zip(weights, b_list, a_list))
    u, s, vh = np.linalg.svd(product)
    best = (u[:, :r] * s[:r]) @ vh[:r]
    new_b, new_a = refactorize(b_list, a_list, weights, r)
    np.testing.assert_allclose(new_b @ new_a, best, atol=2e-5 * np.abs(best).max())
    np.testing.assert_allclose(new_b.T @ new_b, np.eye(r), atol=1e-5)
    # and nothing closer: the residual is the spectrum past r
    assert np.linalg.norm(product - new_b @ new_a) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-4)


def test_a_transposed_factor_fails():
    rng = np.random.default_rng(2)
    b_list, a_list = _factors(rng, 48, 32, 6, 2)
    with pytest.raises(ValueError, match="do not chain"):
        refactorize([b_list[0], b_list[1]], [a_list[0], a_list[1].T], [0.5, 0.5], 6)


def test_aggregate_exact_on_a_real_payload_weighs_by_steps_and_averages_the_rest():
    site_1, site_2 = noisy_payload(SPEC), {k: v * 0 + 1.0 for k, v in noisy_payload(SPEC).items()}
    result = aggregate_exact([(3.0, site_1), (1.0, site_2)])
    assert set(result) == set(site_1)
    np.testing.assert_allclose(
        result["mask_decoder.mask_tokens.weight"], 0.75 * site_1["mask_decoder.mask_tokens.weight"] + 0.25, rtol=1e-6
    )
    a = "mask_decoder.transformer.final_attn_token_to_image.q_proj.lora_A.q"
    b = a.replace(".lora_A.", ".lora_B.")
    target = 0.75 * site_1[b] @ site_1[a] + 0.25 * site_2[b] @ site_2[a]
    # Two rank-4 updates: the sum has rank <= 8 > r, so B·A is its best rank-4 approximation.
    u, s, vh = np.linalg.svd(target)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    np.testing.assert_allclose(result[b] @ result[a], best, atol=1e-4 * np.abs(target).max())


def test_rank_above_the_layer_width_is_padded_not_broken():
    rng = np.random.default_rng(3)
    b_list, a_list = _factors(rng, 16, 32, 64, 2)  # r = 64 > both dimensions (a 16-wide decoder projection)
    new_b, new_a = refactorize(b_list, a_list, [0.5, 0.5], 64)
    assert new_b.shape == (16, 64) and new_a.shape == (64, 32)
    target = 0.5 * b_list[0] @ a_list[0] + 0.5 * b_list[1] @ a_list[1]
    np.testing.assert_allclose(new_b @ new_a, target, atol=1e-4 * np.abs(target).max())


def test_aggregation_weights_are_checked_at_start_up():
    assert check_aggregation_weights({}) == {} and check_aggregation_weights({"site-1": "2"}) == {"site-1": 2.0}
    with pytest.raises(ValueError, match=r"^aggregation_weights: the weight of site-2 must be positive and finite, got -1$"):
        check_aggregation_weights({"site-2": -1})
    with pytest.raises(ValueError, match="not a number"):
        check_aggregation_weights({"site-2": "heavy"})
    assert check_aggregation_weights({"a": 1e-3}) == {"a": 1e-3}  # small but positive is a weight
    with pytest.raises(ValueError, match=r"^aggregation_weights: the weight of b must be positive and finite, got inf$"):
        check_aggregation_weights({"b": float("inf")})
