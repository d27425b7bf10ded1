"""Presets: exact counts for ViT-B at 224 px, 2 classes, rank 32 (official segment-anything decoder)."""

from __future__ import annotations

import pytest

from flap_sam.cli.main import main
from flap_sam.cli.params import count_parameters
from flap_sam.model.factory import ModelSpec, exchange_schema
from flap_sam.model.presets import PRESETS, get_preset

# The paper's table counts the reference code's slightly larger decoder; LoRA counts agree exactly
# (encoder 36,864·r + decoder 5,888·r = 1,368,064 at r = 32).
EXPECTED = {
    "fft": 90_548_751,
    "attn_ft": 30_068_928,
    "dec_ft": 3_918_019,
    "pdec_ft": 494_144,
    "lora_ft": 1_368_064,
    "flap": 1_862_208,
    "lora_dec": 5_286_083,
    "samed": 4_071_695,
}


@pytest.fixture(scope="module")
def counts():
    return {name: count_parameters(ModelSpec("vit_b", 224, 2, name, 32)) for name in PRESETS}


def test_exact_counts_vit_b_224(counts):
    for name, expected in EXPECTED.items():
        assert counts[name]["exchanged"] == expected, name
        assert counts[name]["trainable"] == expected, name  # one preset decides both


def test_lora_building_blocks():
    assert count_parameters(ModelSpec("vit_b", 224, 2, "lora_ft", 1))["exchanged"] == 36_864 + 5_888
    assert (
        count_parameters(ModelSpec("vit_b", 224, 2, "samed", 32))["exchanged"]
        == count_parameters(ModelSpec("vit_b", 224, 2, "samed", 4))["exchanged"]
    )


def test_paper_ratios(counts):
    assert counts["fft"]["exchanged"] / counts["flap"]["exchanged"] >= 48
    assert counts["lora_dec"]["exchanged"] / counts["flap"]["exchanged"] >= 2.7


def test_flap_exchanges_no_frozen_encoder_weight():
    schema = exchange_schema(ModelSpec("vit_b", 224, 2, "flap", 32))
    assert not any(k.startswith("image_encoder.") and ".lora_" not in k for k in schema)
    assert "mask_decoder.output_upscaling.0.weight" in schema
    assert "mask_decoder.iou_prediction_head.layers.0.weight" not in schema


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="preset 'flapp' is unknown"):
        get_preset("flapp")


def test_params_command_prints_the_table(capsys):
    assert main(["params", "--model", "vit_b", "--preset", "flap", "--rank", "32", "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "1,862,208" in out and "7,448,832" in out
