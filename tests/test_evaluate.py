"""``flap-sam evaluate``: known predictions score as they must; the model path prints per-class Dice."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from flap_sam.cli.main import main
from flap_sam.data.datalist import load_datalist
from flap_sam.data.demo import ensure_demo_site
from flap_sam.datasets.kits19.metric import flamby_kits_dice
from flap_sam.federated.adapter_model import AdapterModel


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _predictions(tmp_path, site, split, make):
    """One prediction per case of the split, written as <dir>/<image file name>."""
    folder = tmp_path / "pred"
    folder.mkdir(exist_ok=True)
    for case in load_datalist(f"{site}/datalist.json")[split]:
        label = nib.load(case.label)
        nib.save(nib.Nifti1Image(make(np.asarray(label.dataobj)), label.affine), str(folder / case.image.split("/")[-1]))
    return folder


def test_perfect_prediction_scores_one_and_empty_scores_zero(tmp_path, capsys):
    site = ensure_demo_site("kits", "site-1", str(tmp_path / "demo"))
    datalist = f"{site}/datalist.json"
    perfect = _predictions(tmp_path, site, "training", lambda label: label)
    assert (
        main(["evaluate", "--datalist", datalist, "--split", "training", "--predictions", str(perfect), "--out", str(tmp_path / "a")]) == 0
    )
    rows = _rows(tmp_path / "a" / "dice.csv")
    assert [r["case"] for r in rows] == ["demo_000", "demo_001", "demo_002", "demo_003", "mean"]
    assert all(float(r[k]) == 1.0 for r in rows for k in ("dice_kidney", "dice_tumour", "mean_dice", "flamby_dice"))
    assert all(float(r[k]) == 0.0 for r in rows for k in ("hd95_kidney", "hd95_tumour"))
    assert "| mean | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 0.0000 | 1.0000 |" in capsys.readouterr().out

    shutil.rmtree(perfect)
    empty = _predictions(tmp_path, site, "training", np.zeros_like)
    assert main(["evaluate", "--datalist", datalist, "--split", "training", "--predictions", str(empty), "--out", str(tmp_path / "b")]) == 0
    rows = _rows(tmp_path / "b" / "dice.csv")
    assert all(float(r["dice_kidney"]) == 0.0 for r in rows)
    assert all(r["hd95_kidney"] == "nan" for r in rows)  # nothing predicted: no distance is defined
    assert (
        (tmp_path / "b" / "dice.md")
        .read_text()
        .startswith("| case | dice_kidney | dice_tumour | mean_dice | hd95_kidney | hd95_tumour | flamby_dice |")
    )


def test_flamby_kits_metric_is_the_mean_of_kidney_plus_tumour_and_tumour():
    label = np.zeros((4, 4, 1), np.uint8)
    label[:2, :2] = 1
    label[0, 0] = 2
    swapped = np.where(label > 0, 3 - label, 0)  # kidney <-> tumour: union perfect, tumour wrong
    assert flamby_kits_dice(label, label) == 1.0
    assert flamby_kits_dice(swapped, label) == 0.5


def test_evaluate_runs_the_adapted_model_and_writes_overlays(tmp_path, capsys):
    site = ensure_demo_site("ixi", "site-1", str(tmp_path / "demo"))
    adapter = tmp_path / "FL_global_model.pt"
    torch.save(
        {"model": AdapterModel({"model_type": "vit_test", "image_size": 64, "dataset": "ixi", "preset": "flap", "rank": 4}).state_dict()},
        adapter,
    )
    args = [
        "evaluate",
        "--datalist",
        f"{site}/datalist.json",
        "--adapter",
        str(adapter),
        "--dataset",
        "ixi",
        "--model",
        "vit_test",
        "--image-size",
        "64",
        "--rank",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "e"),
        "--overlays",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| case | dice_brain | mean_dice |" in out and "| site-1_005 |" in out  # the demo's test case
    assert len(list((tmp_path / "e" / "overlays").glob("site-1_005_z*.png"))) == 2


def test_evaluate_names_a_missing_prediction(tmp_path, capsys):
    site = ensure_demo_site("kits", "site-1", str(tmp_path / "demo"))
    (tmp_path / "none").mkdir()
    assert main(["evaluate", "--datalist", f"{site}/datalist.json", "--predictions", str(tmp_path / "none")]) == 2
    assert f"prediction {tmp_path / 'none' / 'demo_005.nii.gz'}: file not found" in capsys.readouterr().err


def test_hd95_matches_a_hand_computed_case_on_the_volumes_spacing():
    """One voxel of class 1 predicted 3 voxels off along X, at 2 mm voxels along X: every surface
    distance is 3 x 2 = 6 mm, so the 95th percentile is 6 mm. Class 2 is absent from both (0 mm);
    class 3 only in the label (undefined: NaN, left out of the mean)."""
    from flap_sam.evaluation.scores import hd95_per_class, summarize

    label = np.zeros((12, 8, 8), np.uint8)
    prediction = np.zeros_like(label)
    label[4, 4, 4] = 1
    prediction[7, 4, 4] = 1
    label[1, 1, 1] = 3
    hd95 = hd95_per_class(prediction, label, 3, spacing=(2.0, 1.0, 1.0))
    assert hd95[0] == pytest.approx(6.0) and hd95[1] == 0.0 and np.isnan(hd95[2])
    assert summarize([{"case": "a", "hd95_x": float("nan")}, {"case": "b", "hd95_x": 4.0}])["hd95_x"] == 4.0
