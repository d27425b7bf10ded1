"""One pretrained base everywhere: every party fingerprints the SAM it built; a site whose base
differs from the server's stops before training with one line saying which side has which."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flap_sam.federated.adapter_model import AdapterModel
from flap_sam.model.adapter_file import base_fingerprint, base_mismatch
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.model.presets import exchanged_names

from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator, save_tiny_checkpoint

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def _site_base(checkpoint=None):
    model = build_model(SPEC, checkpoint=str(checkpoint) if checkpoint else None)
    return base_fingerprint(model, exchanged_names(model, SPEC.preset_obj), from_checkpoint=bool(checkpoint))


def _server_base(checkpoint=""):
    return AdapterModel(
        {"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}, checkpoint=str(checkpoint)
    ).base_fingerprint


def test_server_and_site_of_the_same_base_agree(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "sam.pth")
    assert base_mismatch(_server_base(), _site_base()) is None
    assert base_mismatch(_server_base(ckpt), _site_base(ckpt)) is None
    assert str(tmp_path) not in str(_server_base(ckpt))  # no file path travels


def test_each_kind_of_difference_is_one_line_saying_which_side_has_which(tmp_path):
    ckpt, other = save_tiny_checkpoint(tmp_path / "a.pth"), save_tiny_checkpoint(tmp_path / "b.pth", seed=1)
    assert base_mismatch(_server_base(), _site_base(ckpt)).startswith(
        "the server built SAM from random weights, this site from its checkpoint: set server_checkpoint"
    )
    assert base_mismatch(_server_base(ckpt), _site_base()).startswith(
        "the server built SAM from its checkpoint, this site from random weights: set checkpoint"
    )
    assert "checkpoint differs from this site's" in base_mismatch(_server_base(ckpt), _site_base(other))
    assert "sent no fingerprint" in base_mismatch(None, _site_base())


def test_the_fingerprint_covers_frozen_and_exchanged_tensors():
    model = build_model(SPEC)
    names = exchanged_names(model, SPEC.preset_obj)
    before = base_fingerprint(model, names, from_checkpoint=False)
    with torch.no_grad():
        dict(model.named_parameters())["image_encoder.patch_embed.proj.weight"].add_(1e-3)  # frozen
    frozen_changed = base_fingerprint(model, names, from_checkpoint=False)
    assert frozen_changed["frozen"] != before["frozen"] and frozen_changed["exchanged"] == before["exchanged"]
    with torch.no_grad():
        dict(model.named_parameters())["mask_decoder.mask_tokens.weight"].add_(1e-3)  # exchanged
    assert base_fingerprint(model, names, from_checkpoint=False)["exchanged"] != before["exchanged"]


@pytest.mark.slow
def test_sites_with_a_checkpoint_and_a_server_without_stop_before_training(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "sam_vit_test.pth")
    job = copy_job("kits_lora", tmp_path, {**TEST_MODEL, **TEST_TRAINING, "num_rounds": 1, "checkpoint": str(ckpt)})
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the server built SAM from random weights, this site from its checkpoint: set server_checkpoint" in log
    assert "local steps" not in log  # nothing trained
    assert "it built another SAM base than the server" in (tmp_path / "ws" / "server" / "log.txt").read_text()


@pytest.mark.slow
def test_a_checkpoint_on_every_side_keeps_the_pretrained_decoder_parts(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "sam_vit_test.pth")
    settings = {
        **TEST_MODEL,
        **TEST_TRAINING,
        "num_rounds": 1,
        "max_steps_per_round": 2,
        "checkpoint": str(ckpt),
        "server_checkpoint": str(ckpt),
    }
    result = run_simulator(
        copy_job("kits_lora", tmp_path, settings), tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}, timeout=400
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    persisted = torch.load(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    name = "mask_decoder.output_upscaling.0.weight"
    pretrained, trained = torch.load(ckpt, weights_only=True)[name].flatten(), persisted[name].flatten()
    assert float(torch.nn.functional.cosine_similarity(pretrained, trained, dim=0)) > 0.9
    assert np.isfinite(trained.numpy()).all()
