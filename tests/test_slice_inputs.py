"""What a slice's image is built from (``slice_channels``) and which slices training draws (``foreground_sampling``).

Volumes here have slice z filled with the value z, so every plane the model receives says which slice it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.data.stacks import (
    PreparedVolume,
    SliceStackDataset,
    foreground_sampler,
    plane_indices,
    sampling_weights,
    stacks_to_images,
)
from flap_sam.data.volumes import VolumeSource
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.inference import segment_volume
from flap_sam.training.local_trainer import LocalTrainer
from flap_sam.training.settings import TrainingSettings

SIZE, DEPTH = 32, 7


def _slice_numbered_volume(depth: int = DEPTH, label: torch.Tensor | None = None) -> PreparedVolume:
    """(Z, S, S) volume whose slice z holds the value z (float16, as prepared volumes are stored)."""
    image = torch.arange(depth, dtype=torch.float16)[:, None, None].expand(depth, SIZE, SIZE).contiguous()
    source = VolumeSource("slices.nii.gz", None, (SIZE, SIZE, depth), np.eye(4), (SIZE, SIZE, depth), (1.0, 1.0, 1.0), "slices", 1)
    return PreparedVolume(image, label, source)


def _planes_to_slices(planes: torch.Tensor, stack_slices: list[int]) -> torch.Tensor:
    """Undo a stack's min-max scaling: planes in [0, 1] -> the slice numbers they were made from."""
    low, high = min(stack_slices), max(stack_slices)
    return planes * (high - low) + low


def test_neighbour_planes_are_below_at_above_and_clamped_at_the_volume_ends():
    assert plane_indices(3, DEPTH, "grey") == [1, 2, 3, 4, 5]
    assert plane_indices(3, DEPTH, "neighbours") == [0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 5, 4, 5, 6]
    # At the first slice the stack repeats slice 0, whose image is (0, 0, 1) wherever it appears.
    assert plane_indices(0, DEPTH, "neighbours") == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 2, 1, 2, 3]
    assert plane_indices(DEPTH - 1, DEPTH, "neighbours")[-6:] == [5, 6, 6, 5, 6, 6]
    with pytest.raises(ValueError, match="slice_channels: 'rgb' is not one of"):
        plane_indices(0, DEPTH, "rgb")


@pytest.mark.parametrize("z", [0, 1, 3, DEPTH - 1])
def test_a_training_sample_feeds_each_slice_its_neighbours_in_order(z):
    label = torch.zeros(DEPTH, SIZE, SIZE, dtype=torch.uint8)
    dataset = SliceStackDataset([_slice_numbered_volume(label=label)], augment=None, slice_channels="neighbours")
    item = dataset[z]
    assert item["image"].shape == (15, SIZE, SIZE) and item["label"].shape == (5, SIZE, SIZE)
    images = stacks_to_images(item["image"][None], channels=3)  # (5, 3, S, S): the stack's five slices
    planes = plane_indices(z, DEPTH, "neighbours")
    received = _planes_to_slices(images[:, :, 0, 0], planes).round().long()
    centre_slices = [min(max(s, 0), DEPTH - 1) for s in range(z - 2, z + 3)]
    expected = [[max(s - 1, 0), s, min(s + 1, DEPTH - 1)] for s in centre_slices]
    assert received.tolist() == expected


def test_grey_repeats_the_slice_over_the_three_channels():
    label = torch.zeros(DEPTH, SIZE, SIZE, dtype=torch.uint8)
    item = SliceStackDataset([_slice_numbered_volume(label=label)], augment=None)[3]
    images = stacks_to_images(item["image"][None], channels=1)
    received = _planes_to_slices(images[:, :, 0, 0], [1, 5]).round().long()
    assert received.tolist() == [[s, s, s] for s in range(1, 6)]


@pytest.mark.parametrize("mode", ["centre", "overlap"])
def test_inference_feeds_the_model_the_neighbours_it_was_trained_on(mode):
    """A real (tiny) SAM built with ``slice_channels = neighbours``: every image it receives while segmenting is
    (z-1, z, z+1) of some slice z, in that order, and every slice of the volume is seen."""
    model = build_model(ModelSpec("vit_test", SIZE, 1, "flap", 4, slice_channels="neighbours"))
    received = []
    model.register_forward_pre_hook(lambda _module, args: received.append(args[0].detach().clone()))
    mask = segment_volume(model, _slice_numbered_volume(), torch.device("cpu"), mode=mode)
    assert mask.shape == (SIZE, SIZE, DEPTH)
    images = torch.cat(received)  # (n, 3, S, S), each min-max scaled with its stack
    below, at, above = images[:, 0, 0, 0], images[:, 1, 0, 0], images[:, 2, 0, 0]
    assert bool((below <= at).all() and (at <= above).all())
    assert bool((above > below).all()), "every image spans a neighbour (no volume is one slice thick)"
    # Edge slices repeat themselves: some image has below == at (slice 0) and some at == above (the last slice).
    assert bool((below == at).any() and (at == above).any())


def test_grey_inference_feeds_the_same_value_on_every_channel():
    model = build_model(ModelSpec("vit_test", SIZE, 1, "flap", 4))
    received = []
    model.register_forward_pre_hook(lambda _module, args: received.append(args[0].detach().clone()))
    segment_volume(model, _slice_numbered_volume(), torch.device("cpu"), mode="centre")
    images = torch.cat(received)
    assert images.shape[0] == DEPTH and bool((images[:, 0] == images[:, 2]).all())


def test_a_neighbours_site_trains_a_real_sam_a_few_steps():
    label = torch.zeros(DEPTH, SIZE, SIZE, dtype=torch.uint8)
    label[2:5, 8:20, 8:20] = 1
    model = build_model(ModelSpec("vit_test", SIZE, 1, "flap", 4, slice_channels="neighbours"))
    dataset = SliceStackDataset([_slice_numbered_volume(label=label)], augment=None, slice_channels="neighbours")
    settings = TrainingSettings.from_settings({**TrainingSettings.defaults(), "batch_size": 2, "lr": 1e-3}, model_type="vit_test")
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    steps, loss = LocalTrainer(model, dataset, settings, torch.device("cpu")).train(2, first_step=0, total_steps=4, round_seed=0)
    after = [p for p in model.parameters() if p.requires_grad]
    assert steps == 2 and np.isfinite(loss)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


def test_slice_channels_is_a_job_setting_checked_when_the_job_is_written():
    assert JobSpec.from_settings({"slice_channels": "neighbours"}).model.slice_channels == "neighbours"
    assert JobSpec.from_settings({}).model.slice_channels == "grey"
    with pytest.raises(ValueError, match="slice_channels"):
        JobSpec.from_settings({"slice_channels": "rgb"})


# Sampling: 100 empty slices, class 1 on 90 slices, class 2 on 10 (6 of them also hold class 1).
PRESENT = np.zeros((200, 2), bool)
PRESENT[100:190, 0] = True
PRESENT[184:194, 1] = True


def _share(weights: np.ndarray, rows: np.ndarray) -> float:
    return float(weights[rows].sum())


def test_slice_sampling_draws_foreground_slices_alike_so_a_small_class_is_rare():
    weights = sampling_weights(PRESENT, 0.5)
    assert weights.sum() == pytest.approx(1.0)
    assert _share(weights, ~PRESENT.any(axis=1)) == pytest.approx(0.5)
    assert _share(weights, PRESENT[:, 1]) == pytest.approx(0.5 * 10 / 94)


def test_class_sampling_gives_each_class_an_equal_share_of_the_foreground_draws():
    weights = sampling_weights(PRESENT, 0.5, per_class=True)
    assert weights.sum() == pytest.approx(1.0)
    assert _share(weights, ~PRESENT.any(axis=1)) == pytest.approx(0.5)
    # Each class's own share is a quarter; a slice holding both also counts for the other class.
    only_2 = PRESENT[:, 1] & ~PRESENT[:, 0]
    assert weights[only_2][0] == pytest.approx(0.25 / 10)
    assert weights[150] == pytest.approx(0.25 / 90)
    assert weights[186] == pytest.approx(0.25 / 90 + 0.25 / 10)
    assert _share(weights, PRESENT[:, 1]) >= 0.25


def test_class_sampling_reaches_every_class_of_a_real_dataset():
    """A volume with a large class on many slices and a small one on one slice: drawn by ``class`` sampling,
    the small class is at the centre of about a quarter of the stacks (slice sampling: under a tenth)."""
    label = torch.zeros(40, SIZE, SIZE, dtype=torch.uint8)
    label[5:35, 4:28, 4:28] = 1
    label[20, 10:14, 10:14] = 2
    dataset = SliceStackDataset([_slice_numbered_volume(40, label)], augment=None)
    assert dataset.classes_present.shape == (40, 2) and dataset.classes_present[:, 1].sum() == 1

    def drawn_share(sampling: str) -> float:
        drawn = list(foreground_sampler(dataset, 0.5, 4000, seed=0, sampling=sampling))
        return float(np.mean(dataset.classes_present[drawn, 1]))

    assert drawn_share("class") == pytest.approx(0.25, abs=0.03)
    assert drawn_share("slice") < 0.05
    with pytest.raises(ValueError, match="foreground_sampling: 'organ' is not one of"):
        foreground_sampler(dataset, 0.5, 10, seed=0, sampling="organ")
