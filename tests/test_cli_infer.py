"""``flap-sam infer`` turns a demo volume into a NIfTI mask with the input's grid and affine."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import torch

from flap_sam.cli.main import main
from flap_sam.data.demo import ensure_demo_site
from flap_sam.federated.adapter_model import AdapterModel


def test_infer_writes_mask_on_input_grid(tmp_path, capsys):
    site = ensure_demo_site("kits", "site-1", str(tmp_path / "demo"))
    image = json.loads((tmp_path / "demo" / "kits-v3" / "site-1" / "datalist.json").read_text())["validation"][0]["image"]
    adapter = tmp_path / "FL_global_model.pt"
    torch.save(
        {"model": AdapterModel({"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}).state_dict()},
        adapter,
    )  # the persistor's file layout
    out = tmp_path / "mask.nii.gz"
    args = [
        "infer",
        "--image",
        f"{site}/{image}",
        "--out",
        str(out),
        "--adapter",
        str(adapter),
        "--model",
        "vit_test",
        "--image-size",
        "64",
        "--rank",
        "4",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    source, mask = nib.load(f"{site}/{image}"), nib.load(str(out))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    counts = {"kidney": int((labels == 1).sum()), "tumour": int((labels == 2).sum())}
    assert capsys.readouterr().out.strip() == f"wrote {out}: voxels per class {counts}"  # what it says is what it wrote


def test_infer_with_mismatched_preset_says_what_to_check(tmp_path, capsys):
    site = ensure_demo_site("kits", "site-1", str(tmp_path / "demo"))
    adapter = tmp_path / "a.pt"
    torch.save(
        {"model": AdapterModel({"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}).state_dict()},
        adapter,
    )
    args = [
        "infer",
        "--image",
        f"{site}/imagesTr/demo_000.nii.gz",
        "--out",
        str(tmp_path / "m.nii.gz"),
        "--adapter",
        str(adapter),
        "--model",
        "vit_test",
        "--image-size",
        "64",
        "--rank",
        "8",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"flap-sam infer: adapter \S*a\.pt: tensor image_encoder\.blocks\.0\.attn\.qkv\.lora_A\.q has shape \(4, 64\), "
        r"expected \(8, 64\); check .*--rank.*",
        err,
    ), err
