"""The real-anatomy demo data (ixi): the MNI152 template from nilearn's wheel, simulated subjects and scanners."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from flap_sam.cli.main import main
from flap_sam.data.anatomy import HELD_OUT_SITE, SITE_ACQUISITIONS, TISSUE_DATALIST, Acquisition, Template, make_anatomy_site, make_subject
from flap_sam.data.datalist import load_datalist
from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.errors import DataError

TRAINING_SITES = ("site-1", "site-2", "site-3")


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.load(2)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Three training sites (one volume each of training, validation, test) and the held-out site (two test volumes)."""
    root = tmp_path_factory.mktemp("anatomy")
    for name in TRAINING_SITES:
        make_anatomy_site(name, str(root / name), sizes=(1, 1, 1))
    make_anatomy_site(HELD_OUT_SITE, str(root / HELD_OUT_SITE), sizes=(0, 0, 2))
    return root


def _load(root, site, folder="labelsTr", index=0):
    name = f"{site}_{index:03d}.nii.gz"
    return nib.load(str(root / site / "imagesTr" / name)), nib.load(str(root / site / folder / name))


def test_the_labels_are_the_template_brain_mask_and_tissue_maps(template):
    from nilearn import datasets

    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0
    assert template.t1.shape == mask.shape == (99, 117, 95)
    np.testing.assert_allclose(np.diag(template.affine)[:3], [2, 2, 2])
    np.testing.assert_array_equal(template.anatomy > 0, ndimage.binary_fill_holes(mask))  # ventricles inside, as IXI-Tiny
    assert (template.t1[template.anatomy == 0] == 0).all()  # the template is skull-stripped: the head is simulated
    grey, white = (template.t1[template.anatomy == c].mean() for c in (1, 2))
    assert 0.3 < grey < white  # T1: white matter brighter than grey


def test_a_site_writes_int16_images_with_its_grid_and_binary_brain_masks(sites):
    for site in (*TRAINING_SITES, HELD_OUT_SITE):
        acquisition = Acquisition.for_site(site)
        image, label = _load(sites, site)
        assert image.get_data_dtype() == np.int16 and image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
        np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine), [2, 2, acquisition.slice_thickness_mm])
        fov = np.array(image.shape[:2]) * 2
        np.testing.assert_allclose(fov, acquisition.field_of_view_mm, atol=2)
        pixels, brain = np.asarray(image.dataobj), np.asarray(label.dataobj)
        assert set(np.unique(brain)) == {0, 1} and 0.08 < brain.mean() < 0.35
        # Not a thresholding task: the simulated scalp outside the brain is brighter than the brain's median.
        assert (pixels[brain == 0] > np.median(pixels[brain == 1])).sum() > 1000


def test_tissue_labels_are_grey_and_white_matter_inside_the_brain(sites):
    _, brain = _load(sites, "site-2")
    image, tissue = _load(sites, "site-2", "labelsTissueTr")
    brain, tissue, pixels = (np.asarray(x.dataobj) for x in (brain, tissue, image))
    assert set(np.unique(tissue)) == {0, 1, 2} and not (tissue[brain == 0]).any()
    assert pixels[tissue == 2].mean() > pixels[tissue == 1].mean()
    lists = json.loads((sites / "site-2" / TISSUE_DATALIST).read_text())
    assert lists["training"][0]["label"].startswith("labelsTissueTr/")


def test_sites_acquire_differently_and_the_held_out_site_is_outside_their_ranges():
    training = [SITE_ACQUISITIONS[s] for s in TRAINING_SITES]
    held_out = SITE_ACQUISITIONS[HELD_OUT_SITE]
    assert len(set(training + [held_out])) == 4
    for field in ("contrast_gamma", "bias", "slice_thickness_mm", "white_matter_level"):
        assert getattr(held_out, field) > max(getattr(a, field) for a in training), field
    assert Acquisition.for_site("site-7") == Acquisition.for_site("site-7") != Acquisition.for_site("site-8")


def test_the_held_out_site_only_scores_and_trains_nowhere(sites):
    held_out = load_datalist(str(sites / HELD_OUT_SITE / "datalist.json"), require_training=False)
    assert not held_out["training"] and not held_out["validation"] and len(held_out["test"]) == 2
    trained = {os.path.basename(c.image) for s in TRAINING_SITES for c in load_datalist(str(sites / s / "datalist.json"))["training"]}
    assert trained and not trained & {os.path.basename(c.image) for c in held_out["test"]}
    with pytest.raises(DataError, match="'training' list is empty"):
        load_datalist(str(sites / HELD_OUT_SITE / "datalist.json"))  # a site cannot train on it


def test_subjects_are_deterministic_by_seed_and_differ_between_seeds(template):
    acquisition = SITE_ACQUISITIONS["site-1"]
    a, b, c = (make_subject(template, acquisition, seed) for seed in (5, 5, 6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert (a[1] > 0).sum() != (c[1] > 0).sum()  # another subject: another brain shape
    overlap = 2 * ((a[1] > 0) & (c[1] > 0)).sum() / ((a[1] > 0).sum() + (c[1] > 0).sum())
    assert 0.7 < overlap < 0.99  # the same anatomy, smoothly deformed


def test_a_site_loads_through_the_real_site_loader(sites):
    data = SiteData.load(get_profile("ixi"), str(sites / "site-3"), "site-3", 32, 1)
    assert len(data.train) == len(data.validation) == len(data.test) == 1
    assert data.train[0].source.spacing == (2.0, 2.0, 4.0)


@pytest.mark.slow
def test_demo_data_command_makes_the_held_out_site(tmp_path, capsys):
    assert main(["demo-data", "--dataset", "ixi", "--site-names", "site-1", "--held-out", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "REAL ANATOMY" in out and f"{HELD_OUT_SITE}: " in out
    assert (tmp_path / "ixi-mni152-v1" / HELD_OUT_SITE / "datalist.json").is_file()
