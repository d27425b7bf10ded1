"""The real-CT demo (``flap_sam.data.chest_ct``): slicerio's real chest CT and its segmentation, simulated subjects
and CT scanners, a held-out scanner that never trains."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from flap_sam.data.chest_ct import (
    AIR_HU,
    CLASS_SEGMENTS,
    CLASSES,
    HELD_OUT_SITE,
    SITE_ACQUISITIONS,
    ChestCT,
    CTAcquisition,
    make_chest_ct_site,
    make_subject,
)
from flap_sam.data.demo import DEMO_DATASETS, make_demo_site
from flap_sam.data.profiles import get_profile


def _packaged(name: str) -> str:
    return str(importlib.resources.files("slicerio").joinpath("data", name))


def test_the_voxels_are_the_packages_real_ct_and_the_labels_its_segments_by_name():
    ct = ChestCT.load()
    raw, header = nrrd.read(_packaged("CTChest4.nrrd"))  # pynrrd directly, not through MONAI
    assert ct.hu.shape == raw.shape == (128, 128, 34)
    np.testing.assert_array_equal(ct.hu, np.maximum(raw, AIR_HU))  # only the scanner's -3024 outside its circle becomes air
    # LPS on disk, RAS+ here: the in-plane axes' signs flip, the spacing is the file's.
    np.testing.assert_allclose(np.abs(np.diag(ct.affine)[:3]), np.abs(np.diag(header["space directions"])))
    assert ct.affine[0, 0] > 0 and ct.affine[1, 1] > 0
    segmentation, seg_header = nrrd.read(_packaged("Segmentation.seg.nrrd"))
    names = {seg_header[f"Segment{i}_Name"]: int(seg_header[f"Segment{i}_LabelValue"]) for i in range(7)}
    for index, (name, segments) in enumerate(CLASS_SEGMENTS, start=1):
        expected = np.isin(segmentation, [names[s] for s in segments])
        np.testing.assert_array_equal(ct.label == index, expected, err_msg=name)
    assert get_profile("chest_ct").class_names == CLASSES == ("lung", "vertebrae", "ribs")


def test_a_subject_is_deterministic_and_each_site_acquires_it_differently():
    ct = ChestCT.load()
    first = make_subject(ct, CTAcquisition.for_site("site-1"), seed=7)
    again = make_subject(ct, CTAcquisition.for_site("site-1"), seed=7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    images = {site: make_subject(ct, CTAcquisition.for_site(site), seed=7) for site in SITE_ACQUISITIONS}
    # The same subject (seed): every class in every acquisition; the image in HU as the site's scanner writes it.
    for site, (image, label, affine) in images.items():
        assert image.dtype == np.int16 and set(np.unique(label)) == {0, 1, 2, 3}, site
        assert image.shape[:2] == label.shape[:2] == (round(SITE_ACQUISITIONS[site].field_of_view_mm / ct.affine[0, 0]),) * 2
    # Calibration: the lung's median HU follows each site's offset; noise: the air's spread follows its noise.
    lung = {site: float(np.median(image[label == 1])) for site, (image, label, _) in images.items()}
    assert lung[HELD_OUT_SITE] - lung["site-3"] == pytest.approx(
        SITE_ACQUISITIONS[HELD_OUT_SITE].hu_offset - SITE_ACQUISITIONS["site-3"].hu_offset, abs=25
    )
    air = {site: float(image[:8, :8].std()) for site, (image, _, _) in images.items()}
    assert air[HELD_OUT_SITE] > max(air["site-1"], air["site-3"])
    assert not np.array_equal(images["site-1"][0][:100, :100], images["site-2"][0][:100, :100])


def test_the_demo_sites_hold_every_class_and_the_held_out_site_never_trains(tmp_path):
    assert "chest_ct" in DEMO_DATASETS
    path = make_demo_site("chest_ct", "site-2", str(tmp_path / "site-2"))
    held_out = make_chest_ct_site(HELD_OUT_SITE, str(tmp_path / HELD_OUT_SITE))
    site, heldout = (json.loads(Path(p).read_text()) for p in (path, held_out))
    assert (len(site["training"]), len(site["validation"]), len(site["test"])) == (4, 1, 1)
    assert heldout["training"] == heldout["validation"] == [] and len(heldout["test"]) == 4
    files = {e["image"] for split in site.values() for e in split}
    assert len(files) == 6 and not files & {e["image"] for e in heldout["test"]}
    for entry in site["training"]:
        label = nib.load(tmp_path / "site-2" / entry["label"])
        image = nib.load(tmp_path / "site-2" / entry["image"])
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2, 3}
        np.testing.assert_allclose(label.affine, image.affine)
    # Another site name draws an acquisition in the training sites' ranges, the same on every machine.
    assert CTAcquisition.for_site("hospital-x") == CTAcquisition.for_site("hospital-x")
    assert -20 <= CTAcquisition.for_site("hospital-x").hu_offset <= 20
