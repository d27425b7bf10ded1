"""Refinements of a segmentation: flip test-time augmentation and removing small connected components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.inference import class_probabilities, remove_small_components
from flap_sam.training.settings import TrainingSettings


def test_small_components_go_class_by_class_measured_in_cubic_millimetres():
    mask = np.zeros((12, 12, 6), np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # 27 voxels = 54 mm³ at (1, 1, 2) mm
    mask[8, 8, 1] = 1  # one voxel of class 1 on its own: 2 mm³
    mask[6:8, 1:3, 4:6] = 2  # 8 voxels of class 2: 16 mm³
    mask[9, 2, 2] = mask[10, 3, 3] = 2  # two class-2 voxels touching at a corner: one object of 4 mm³ (26-connected)
    cleaned = remove_small_components(mask, (1.0, 1.0, 2.0), 10.0)
    expected = mask.copy()
    expected[8, 8, 1] = expected[9, 2, 2] = expected[10, 3, 3] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert (remove_small_components(mask, (1.0, 1.0, 2.0), 20.0) == 2).sum() == 0  # 16 mm³ < 20 mm³
    assert (remove_small_components(mask, (1.0, 1.0, 2.0), 20.0) == 1).sum() == 27
    assert remove_small_components(mask, (1.0, 1.0, 2.0), 0.0) is mask


def test_flip_tta_makes_the_prediction_mirror_equivariant_and_averages_both_views():
    """A real (tiny) SAM is not mirror-symmetric; averaged with its mirror's softmax, the prediction of a mirrored
    image is the mirror of the prediction."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("vit_test", 32, 2, "flap", 4)).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain, mirrored_plain = class_probabilities(model, images, False), class_probabilities(model, images.flip(-1), False)
        tta, mirrored_tta = class_probabilities(model, images, False, True), class_probabilities(model, images.flip(-1), False, True)
    assert not torch.allclose(mirrored_plain, plain.flip(-1), atol=1e-4)
    torch.testing.assert_close(mirrored_tta, tta.flip(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tta, (plain + mirrored_plain.flip(-1)) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tta.sum(dim=1), torch.ones(2, 32, 32), atol=1e-5, rtol=0)


def test_the_refinements_are_validation_settings_off_by_default():
    defaults = TrainingSettings.from_settings(TrainingSettings.defaults())
    assert defaults.refinements() == {"flip_tta": False, "min_component_mm3": 0.0}
    with pytest.raises(ValueError, match="min_component_mm3"):
        TrainingSettings.from_settings({**TrainingSettings.defaults(), "min_component_mm3": -1})
