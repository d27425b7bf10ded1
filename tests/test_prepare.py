"""``flap-sam prepare``: each converter on a mock of its dataset's raw layout, made here.

The mocks have the real folder and file names and the real case lists (the published splits
shipped with the package), with tiny volumes; broken cases check that every problem is
reported, one line each, and that a failed run writes nothing.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from flap_sam.cli.main import main
from flap_sam.data.datalist import load_datalist
from flap_sam.datasets.ixi import prepare as ixi
from flap_sam.datasets.kits19 import prepare as kits19
from flap_sam.datasets.prostate import prepare as prostate

SHAPE = (8, 8, 4)


def _nifti(path, label_value: int | None = None, shape=SHAPE, spacing=(0.8, 0.8, 3.0)):
    """A tiny image (label_value None) or label with foreground on slices 1 and 2."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if label_value is None:
        data = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    else:
        data = np.zeros(shape, np.uint8)
        data[2:5, 2:5, 1:3] = label_value
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))


def _counts(out, site):
    lists = load_datalist(str(out / f"{site}.json"))
    return len(lists["training"]) + len(lists["validation"]), len(lists["test"]), len(lists["validation"])


# ---- KiTS19 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kits_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("kits19") / "data"
    for case_id, _, _ in kits19.read_split():
        _nifti(raw / case_id / "imaging.nii.gz")
        _nifti(raw / case_id / "segmentation.nii.gz", label_value=2)
    _nifti(raw / "case_00300" / "imaging.nii.gz")  # a KiTS case outside Fed-KiTS: ignored
    return raw


def test_kits19_gives_the_published_fed_kits_split(kits_raw, tmp_path, capsys):
    out = tmp_path / "kits"
    assert main(["prepare", "kits19", "--raw", str(kits_raw), "--out", str(out)]) == 0
    expected = {"site-1": (9, 3), "site-2": (11, 3), "site-3": (9, 3), "site-4": (9, 3), "site-5": (12, 4), "site-6": (24, 6)}
    for site, (train, test) in expected.items():
        n_train, n_test, n_val = _counts(out, site)
        assert (n_train, n_test) == (train, test), site
        assert n_val == round(0.2 * train)  # validation comes out of the training split only
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sites"]["site-6"]["foreground_slices"] == 30 * 2
    printed = capsys.readouterr().out
    assert "| site-1 | Fed-KiTS centre 0 | 7 | 2 | 3 | 24/48 | 0.80x0.80x3.00 |" in printed
    entry = load_datalist(str(out / "site-1.json"))["test"][0]
    assert entry.image.startswith(str(kits_raw)) and entry.image.endswith("imaging.nii.gz")  # points at the raw files


def test_kits19_one_hospital_prepares_only_its_site_and_can_copy(kits_raw, tmp_path):
    out = tmp_path / "site3"
    assert main(["prepare", "kits19", "--raw", str(kits_raw), "--out", str(out), "--sites", "site-3", "--copy"]) == 0
    assert sorted(os.listdir(out)) == ["images", "labels", "site-3.json", "summary.json"]
    cases = load_datalist(str(out / "site-3.json"))["training"]
    assert len(cases) > 1 and all(case.image.startswith(str(out)) and os.path.isfile(case.image) for case in cases)
    assert len({case.image for case in cases}) == len(cases)  # every case its own copy (KiTS19 names each case's file alike)


def test_kits19_reports_every_broken_case_and_writes_nothing(kits_raw, tmp_path, capsys):
    raw = tmp_path / "data"
    for case_id, _, _ in kits19.read_split()[:4]:
        (raw / case_id).mkdir(parents=True)
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            os.symlink(kits_raw / case_id / name, raw / case_id / name)
    for case_id, _, _ in kits19.read_split()[4:]:
        os.symlink(kits_raw / case_id, raw / case_id)
    ids = [c for c, _, _ in kits19.read_split()]
    os.remove(raw / ids[0] / "segmentation.nii.gz")  # missing file
    os.remove(raw / ids[1] / "imaging.nii.gz")
    (raw / ids[1] / "imaging.nii.gz").write_bytes(b"\x1f\x8b truncated")  # unreadable
    os.remove(raw / ids[2] / "segmentation.nii.gz")
    _nifti(raw / ids[2] / "segmentation.nii.gz", label_value=1, shape=(8, 8, 5))  # shape mismatch
    os.remove(raw / ids[3] / "segmentation.nii.gz")
    _nifti(raw / ids[3] / "segmentation.nii.gz", label_value=7)  # label out of range
    out = tmp_path / "out"
    assert main(["prepare", "kits19", "--raw", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s), nothing written" in err
    assert f"{ids[0]}: {raw / ids[0] / 'segmentation.nii.gz'} not found" in err
    assert f"{ids[1]}: image {raw / ids[1] / 'imaging.nii.gz'}: cannot be read as NIfTI" in err
    assert f"{ids[2]}: label {raw / ids[2] / 'segmentation.nii.gz'}: shape (8, 8, 5) differs" in err
    assert f"{ids[3]}: label {raw / ids[3] / 'segmentation.nii.gz'}: values 0..7 outside 0..2" in err
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no output, no partial folder


def test_prepare_refuses_to_overwrite_and_names_a_wrong_raw_folder(kits_raw, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["prepare", "kits19", "--raw", str(kits_raw), "--out", str(tmp_path / "out")]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main(["prepare", "kits19", "--raw", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no case_XXXXX folders; point --raw at the KiTS19 'data' folder" in capsys.readouterr().err
    assert main(["prepare", "kits19", "--raw", str(kits_raw), "--out", str(tmp_path / "x"), "--sites", "site-9"]) == 2
    assert "--sites site-9: not a site of kits19" in capsys.readouterr().err


# ---- IXI-Tiny ----------------------------------------------------------------------------
def test_ixi_gives_the_published_fed_ixi_split(tmp_path, capsys):
    root = tmp_path / "7kd5wj7v7p-3" / "IXI_sample"  # as FLamby's archive extracts
    for patient, (centre, _) in ixi.read_split().items():
        subject = f"IXI{patient:03d}-{centre}-{1000 + patient}"
        _nifti(root / subject / "T1" / f"{subject}_image.nii.gz")
        _nifti(root / subject / "label" / f"{subject}_label.nii.gz", label_value=1)
    out = tmp_path / "ixi"
    assert main(["prepare", "ixi", "--raw", str(tmp_path), "--out", str(out)]) == 0
    assert [_counts(out, s)[:2] for s in ("site-1", "site-2", "site-3")] == [(249, 62), (145, 36), (59, 15)]
    assert "| site-3 | IOP |" in capsys.readouterr().out


def test_ixi_reports_missing_subjects_and_wrong_centres(tmp_path, capsys):
    root = tmp_path / "IXI_sample"
    split = sorted(ixi.read_split().items())
    (p0, (c0, _)), (p1, (c1, _)) = split[0], split[1]
    _nifti(root / f"IXI{p0:03d}-{c0}-0001" / "T1" / "a.nii.gz")  # label folder missing
    wrong = "IOP" if c1 != "IOP" else "HH"
    _nifti(root / f"IXI{p1:03d}-{wrong}-0002" / "T1" / "b.nii.gz")
    assert main(["prepare", "ixi", "--raw", str(root), "--out", str(tmp_path / "out"), "--sites", ixi.site_name(c0)]) == 2
    err = capsys.readouterr().err
    assert f"IXI{p0:03d}: {root / f'IXI{p0:03d}-{c0}-0001' / 'label'}: expected one .nii.gz file, found 0" in err
    assert "no subject folder" in err and not (tmp_path / "out").exists()


# ---- prostate ----------------------------------------------------------------------------
def test_prostate_gives_the_published_split_and_maps_label_2(tmp_path):
    raw = tmp_path / "prostate"
    for centre, spec in prostate.read_split().items():
        numbers = sorted(set(spec["test"]) | {f"{i:02d}" for i in range(50, 50 + spec["cases"] - len(spec["test"]))})
        for n in numbers:
            _nifti(raw / centre / f"Case{n}.nii.gz")
            _nifti(raw / centre / f"Case{n}_segmentation.nii.gz", label_value=2 if centre in ("BMC", "HK") else 1)
    out = tmp_path / "out"
    assert main(["prepare", "prostate", "--raw", str(raw), "--out", str(out)]) == 0
    expected = {"site-1": (24, 6), "site-2": (24, 6), "site-3": (15, 4), "site-4": (10, 3), "site-5": (9, 3), "site-6": (9, 3)}
    assert {s: _counts(out, s)[:2] for s in expected} == expected
    test_cases = [os.path.basename(c.image) for c in load_datalist(str(out / "site-4.json"))["test"]]
    assert test_cases == ["Case01.nii.gz", "Case32.nii.gz", "Case34.nii.gz"]


def test_prostate_reports_missing_segmentations_and_test_cases(tmp_path, capsys):
    raw = tmp_path / "prostate"
    _nifti(raw / "HK" / "Case38.nii.gz")  # no segmentation; 41 and 46 (test) absent
    assert main(["prepare", "prostate", "--raw", str(raw), "--out", str(tmp_path / "out"), "--sites", "site-6"]) == 2
    err = capsys.readouterr().err
    assert "HK/Case38: segmentation file missing" in err
    assert "HK/Case41: held-out test case not found" in err
    assert "HK: 1 cases in" in err and "the collection has 12" in err
