"""Whole-volume inference: the one-forward-per-slice mode against the paper's overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.data.stacks import PreparedVolume
from flap_sam.data.volumes import VolumeSource
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.inference import predict_probabilities, segment_volume

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def _volume(image: torch.Tensor) -> PreparedVolume:
    z = image.shape[0]
    source = VolumeSource("v.nii.gz", None, (64, 64, z), np.eye(4), (64, 64, z), (1.0, 1.0, 1.0), "v.nii.gz", 2)
    return PreparedVolume(image, None, source)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SPEC)


def test_both_modes_give_class_probabilities_and_the_segmentation_is_their_argmax(model):
    volume = _volume(torch.rand(7, 64, 64, generator=torch.Generator().manual_seed(0)))
    for mode in ("overlap", "centre"):
        probs = predict_probabilities(model, volume, torch.device("cpu"), mode=mode)  # (classes + 1, Z, S, S)
        assert probs.shape == (3, 7, 64, 64) and torch.allclose(probs.sum(0), torch.ones(7, 64, 64), atol=1e-5)
        assert float(probs.min()) >= 0.0
        mask = segment_volume(model, volume, torch.device("cpu"), mode=mode)  # (S, S, Z): the volume's own axes
        np.testing.assert_array_equal(mask, probs.argmax(0).permute(1, 2, 0).numpy())


def test_centre_equals_overlap_when_every_window_scales_alike(model):
    """SAM sees each slice as its own image: the overlapping windows differ only by their min-max
    scaling. With every slice spanning 0..1, all windows scale alike, and both modes agree."""
    image = torch.rand(9, 64, 64, generator=torch.Generator().manual_seed(1))
    image[:, 0, 0], image[:, 0, 1] = 0.0, 1.0
    volume = _volume(image)
    overlap = predict_probabilities(model, volume, torch.device("cpu"), mode="overlap")
    centre = predict_probabilities(model, volume, torch.device("cpu"), mode="centre")
    assert torch.allclose(overlap, centre, atol=1e-5)


def test_an_unknown_mode_is_named(model):
    with pytest.raises(ValueError, match="inference mode 'fast' is unknown"):
        predict_probabilities(model, _volume(torch.rand(5, 64, 64)), torch.device("cpu"), mode="fast")
