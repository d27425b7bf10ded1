"""Site data: datalists, NIfTI checks (one-line errors naming the file), demo data, 2.5D stacks."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from flap_sam.data.datalist import load_datalist
from flap_sam.data.demo import ScannerShift, ensure_demo_site, make_demo_site
from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset, build_augmentation, stack_indices
from flap_sam.data.volumes import load_volume, save_mask
from flap_sam.errors import DataError


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _site(tmp_path, image, label, affine_label=None):
    _write(tmp_path / "img.nii.gz", image)
    _write(tmp_path / "lab.nii.gz", label, affine_label)
    _write(tmp_path / "val_img.nii.gz", _good()[0])  # a good validation case (a datalist lists each case once)
    _write(tmp_path / "val_lab.nii.gz", _good()[1])
    (tmp_path / "datalist.json").write_text(
        json.dumps(
            {
                "training": [{"image": "img.nii.gz", "label": "lab.nii.gz"}],
                "validation": [{"image": "val_img.nii.gz", "label": "val_lab.nii.gz"}],
            }
        )
    )
    return str(tmp_path)


def _load(root):
    return SiteData.load(get_profile("kits"), root, "site-1", 64, 2)


def _good():
    image = np.random.default_rng(0).normal(0, 50, (16, 16, 6)).astype(np.float32)
    label = np.zeros((16, 16, 6), np.uint8)
    label[4:8, 4:8, 2:4] = 1
    return image, label


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda img, lab: (img, lab[:, :, :5]), r"lab.nii.gz: shape \(16, 16, 5\) differs"),
        (lambda img, lab: (img, np.where(lab > 0, 3, 0).astype(np.uint8)), r"lab.nii.gz: values 0..3 outside 0..2"),
        (lambda img, lab: (np.where(lab > 0, np.nan, img).astype(np.float32), lab), r"img.nii.gz: contains NaN"),
        (lambda img, lab: (np.where(lab > 0, 1e300, img.astype(np.float64)), lab), r"img.nii.gz: .* out-of-range \(beyond float32\)"),
    ],
)
def test_bad_volumes_fail_at_start_with_one_line(tmp_path, mutate, message):
    image, label = mutate(*_good())
    with pytest.raises(DataError, match=message) as err:
        _load(_site(tmp_path, image, label))
    assert "\n" not in str(err.value)


def test_affine_mismatch_and_corrupt_and_missing_files(tmp_path):
    image, label = _good()
    shifted = np.eye(4)
    shifted[0, 3] = 10
    with pytest.raises(DataError, match="lab.nii.gz: affine differs"):
        _load(_site(tmp_path, image, label, shifted))
    (tmp_path / "img.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DataError, match="img.nii.gz: cannot be read as NIfTI"):
        _load(str(tmp_path))
    os.remove(tmp_path / "img.nii.gz")
    with pytest.raises(DataError, match="img.nii.gz: file not found"):
        _load(str(tmp_path))


def test_datalist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no datalist found"):
        _load(str(tmp_path))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(DataError, match="datalist.json: the 'training' list is empty"):
        load_datalist(str(tmp_path / "datalist.json"))
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(DataError, match="datalist.json: not valid JSON"):
        load_datalist(str(tmp_path / "datalist.json"))


def test_reorientation_round_trip(tmp_path):
    """A LPS-oriented file is read in RAS+ and a mask written back lands on the original voxels."""
    image, label = _good()
    affine = np.diag([-1.0, -1.0, 2.5, 1.0])
    img_path = _write(tmp_path / "img.nii.gz", image, affine)
    lab_path = _write(tmp_path / "lab.nii.gz", label, affine)
    volume = load_volume(img_path, lab_path, 2)
    np.testing.assert_array_equal(volume.label, label[::-1, ::-1, :])
    assert volume.spacing == (1.0, 1.0, 2.5)
    save_mask(volume.label, volume, str(tmp_path / "mask.nii.gz"))
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    np.testing.assert_allclose(written.affine, affine)


def test_demo_data_is_deterministic_per_site_and_shifted_between_sites(tmp_path):
    a = make_demo_site("kits", "site-1", str(tmp_path / "a"), n_train=1, n_val=1)
    b = make_demo_site("kits", "site-1", str(tmp_path / "b"), n_train=1, n_val=1)
    img_a = nib.load(os.path.join(os.path.dirname(a), "imagesTr", "demo_000.nii.gz")).get_fdata()
    img_b = nib.load(os.path.join(os.path.dirname(b), "imagesTr", "demo_000.nii.gz")).get_fdata()
    np.testing.assert_array_equal(img_a, img_b)
    assert ScannerShift.for_site("site-1") != ScannerShift.for_site("site-2")
    lab = nib.load(os.path.join(os.path.dirname(a), "labelsTr", "demo_000.nii.gz")).get_fdata()
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).sum() > 0
    kidney = img_a[lab == 1].mean()
    assert 100 < kidney < 220 and img_a.min() < -900  # contrast-enhanced kidney, air


def test_demo_site_created_once_atomically(tmp_path):
    first = ensure_demo_site("kits", "site-3", str(tmp_path))
    mtime = os.path.getmtime(os.path.join(first, "datalist.json"))
    assert ensure_demo_site("kits", "site-3", str(tmp_path)) == first
    assert os.path.getmtime(os.path.join(first, "datalist.json")) == mtime
    assert not [p for p in os.listdir(os.path.dirname(first)) if ".tmp-" in p]


def test_train_volumes_keeps_the_first_labelled_volumes_and_every_scoring_volume(tmp_path):
    """The setting ``train_volumes`` (Dice against labelled data): at most the first N training volumes; validation
    and test stay whole, and N beyond the list takes them all."""
    root = ensure_demo_site("kits", "site-1", str(tmp_path))
    every = SiteData.load(get_profile("kits"), root, "site-1", 32, 2)
    one = SiteData.load(get_profile("kits"), root, "site-1", 32, 2, train_volumes=1)
    assert len(every.train) == 4 and [v.source.image_path for v in one.train] == [every.train[0].source.image_path]
    assert [v.source.image_path for v in one.validation] == [v.source.image_path for v in every.validation]
    assert len(one.test) == len(every.test) == 1
    assert len(SiteData.load(get_profile("kits"), root, "site-1", 32, 2, train_volumes=9).train) == 4


def test_stacks_are_edge_padded_and_augmented_in_range(tmp_path):
    assert stack_indices(0, 10) == [0, 0, 0, 1, 2]
    assert stack_indices(9, 10) == [7, 8, 9, 9, 9]
    root = ensure_demo_site("kits", "site-1", str(tmp_path))
    data = SiteData.load(get_profile("kits"), root, "site-1", 32, 2)
    dataset = SliceStackDataset(data.train, build_augmentation(32), seed=1)
    item = dataset[3]
    assert item["image"].shape == (5, 32, 32) and item["label"].shape == (5, 32, 32)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}
    assert dataset.has_foreground.any() and not dataset.has_foreground.all()


def test_acquisition_augmentation_changes_only_the_image_and_keeps_it_in_range():
    from monai.transforms import Compose

    from flap_sam.data.stacks import acquisition_transforms

    plain, acquisition = build_augmentation(32), build_augmentation(32, acquisition=True)
    assert len(acquisition.transforms) == len(plain.transforms) + len(acquisition_transforms())
    ramp = torch.linspace(0, 1, 32).repeat(5, 32, 1)  # (5, 32, 32): a smooth image in [0, 1]
    label = (ramp > 0.5).long()
    transforms = Compose(acquisition_transforms()).set_random_state(seed=0)
    changed = 0
    for _ in range(20):
        out = transforms({"image": ramp.clone(), "label": label.clone()})
        assert torch.equal(torch.as_tensor(out["label"]), label)  # where the anatomy is does not change
        image = torch.as_tensor(out["image"])
        assert image.shape == ramp.shape and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        changed += not torch.allclose(image, ramp)
    assert 5 <= changed < 20  # each transform on about a third of the samples: most are changed, not all


def test_a_4d_image_needs_a_channel_and_gets_the_one_chosen(tmp_path):
    import nibabel as nib

    from flap_sam.data.volumes import load_volume
    from flap_sam.errors import DataError

    image = np.stack([np.full((8, 8, 4), 10.0), np.full((8, 8, 4), 20.0), np.full((8, 8, 4), 30.0)], axis=-1).astype(np.float32)
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), path)
    with pytest.raises(DataError, match=rf"image {path}: has 3 channels \(sequences or phases\); set channel"):
        load_volume(str(path), None, 1)
    with pytest.raises(DataError, match="channel 3 does not exist"):
        load_volume(str(path), None, 1, channel=3)
    assert float(load_volume(str(path), None, 1, channel=1).image.mean()) == 20.0
