"""Privacy on the update: FLARE's PercentilePrivacy / SVTPrivacy on the site's update as a WEIGHT_DIFF,
and the server applying the filtered difference to the global model it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext

from flap_sam.federated.privacy import UpdatePrivacyFilter

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator, scalars


def _update(kind: str = DataKind.WEIGHT_DIFF):
    rng = np.random.default_rng(0)
    data = {"a.lora_B.q": rng.normal(0, 0.01, (8, 4)).astype(np.float32), "b.weight": rng.normal(0, 0.01, (16,)).astype(np.float32)}
    return DXO(kind, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2}).to_shareable(), data


def test_percentile_privacy_keeps_only_the_largest_differences_clipped():
    shareable, data = _update()
    out = from_shareable(UpdatePrivacyFilter("percentile", privacy_percentile=75, percentile_gamma=0.005).process(shareable, FLContext()))
    assert out.data_kind == DataKind.WEIGHT_DIFF and all(v.dtype == np.float32 for v in out.data.values())
    kept = np.concatenate([(out.data[k] != 0).ravel() for k in data])
    assert 0.2 <= kept.mean() <= 0.3  # about a quarter of the differences travel
    assert max(np.abs(v).max() for v in out.data.values()) <= 0.005 * 2 + 1e-7  # clipped per step, x 2 steps


def test_svt_privacy_sends_a_noisy_fraction_as_float32():
    shareable, data = _update()
    out = from_shareable(UpdatePrivacyFilter("svt", svt_fraction=0.25, svt_epsilon=1.0).process(shareable, FLContext()))
    assert all(v.dtype == np.float32 and v.shape == data[k].shape for k, v in out.data.items())
    assert not all(np.array_equal(out.data[k], data[k]) for k in data)


def test_only_differences_are_filtered_and_bad_settings_are_refused():
    shareable, _data = _update(DataKind.METRICS)
    assert UpdatePrivacyFilter("percentile").process(shareable, FLContext()) is shareable
    with pytest.raises(ValueError, match=r"^privacy: 'dp' is not one of \['none', 'percentile', 'svt'\]$"):
        UpdatePrivacyFilter("dp")
    with pytest.raises(ValueError, match=r"^privacy_percentile: 150.0 must be at most 100$"):
        UpdatePrivacyFilter("percentile", privacy_percentile=150)


@pytest.mark.slow
def test_a_federation_with_percentile_privacy_trains_through_differences(tmp_path):
    job = copy_job(
        "kits_lora",
        tmp_path,
        {**TEST_MODEL, **TEST_TRAINING, "num_rounds": 2, "privacy": "percentile", "privacy_percentile": 50, "percentile_gamma": 1.0},
    )
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "cutoff" in log  # FLARE's PercentilePrivacy ran on the sites' updates
    assert "Max abs delta_w: 0.0," not in log  # on real differences
    assert "leaving out the update" not in log
    job_dir = tmp_path / "ws" / "server" / "simulate_job"
    state = torch.load(job_dir / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    assert any(".lora_B." in k and state[k].abs().sum() > 0 for k in state), "the filtered differences reached the global model"
    dice = scalars(job_dir / "tb_events" / "site-1", "val_dice")
    assert dice[1] != dice[0]  # the global model of round 1 is not the initial one
    assert len(scalars(job_dir / "tb_events" / "site-1", "val_dice")) == 2
