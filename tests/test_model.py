"""The model is segment-anything's own ``Sam``: adapted outputs, checkpoints, LoRA merge."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from flap_sam.errors import CheckpointError
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.model.lora import LoRALinear, merge_lora
from flap_sam.model.sam_builder import build_sam
from flap_sam.model.semantic_sam import SemanticSam

SPEC = ModelSpec(model_type="vit_test", image_size=64, num_classes=2, preset="flap", rank=4)


def _official_twin(model: SemanticSam) -> Sam:
    """An official ``Sam`` (no LoRA) carrying the adapted model's base weights."""
    twin = build_sam("vit_test", 64, 2)
    base = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    twin.load_state_dict(base, strict=True)
    return twin.eval()


def test_semantic_forward_is_each_images_low_res_logits_upsampled():
    """(B, 3, S, S) -> (B, classes + 1, S, S): the mask decoder's logits, bilinearly at the input's size, and an
    image's logits do not depend on the other images of its batch."""
    model = build_model(SPEC).eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        low = model.low_res_logits(images)
        alone = model(images[1:2])
    assert logits.shape == (3, SPEC.num_classes + 1, 64, 64)
    torch.testing.assert_close(logits, torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False))
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[0], logits[1])  # the images differ, and so do their logits


def test_untrained_lora_gives_official_sam_output():
    """B = 0 at start: the adapted model must reproduce segment-anything's Sam.forward to 1e-5."""
    model = build_model(SPEC).eval()
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    twin = _official_twin(model)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.low_res_logits(images)
        full = model(images)
        for i in range(2):
            out = twin([{"image": images[i] * 255.0, "original_size": (64, 64)}], multimask_output=True)[0]
            # Sam.forward with multimask_output drops the first mask token (our background).
            torch.testing.assert_close(ours[i : i + 1, 1:], out["low_res_logits"], atol=1e-5, rtol=1e-5)
            upscaled = twin.postprocess_masks(ours[i : i + 1], (64, 64), (64, 64))
            torch.testing.assert_close(full[i : i + 1], upscaled, atol=1e-5, rtol=1e-5)


def test_merged_lora_loads_into_official_sam_and_matches():
    model = build_model(SPEC).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.02)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        adapted = model(images)
        merged_state = merge_lora(model).state_dict()
    official = build_sam("vit_test", 64, 2, sam_class=SemanticSam)
    official.load_state_dict(merged_state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(official.eval()(images), adapted, atol=1e-4, rtol=1e-4)


def test_lora_touches_only_q_and_v_of_fused_qkv():
    model = build_model(SPEC).eval()
    qkv = model.image_encoder.blocks[0].attn.qkv
    dim = qkv.in_features
    x = torch.randn(5, dim)
    with torch.no_grad():
        qkv.lora_B["q"].fill_(0.1)
        qkv.lora_B["v"].fill_(-0.1)
        base = torch.nn.functional.linear(x, qkv.weight, qkv.bias)
        out = qkv(x)
    assert torch.equal(out[:, dim : 2 * dim], base[:, dim : 2 * dim])  # k untouched
    assert not torch.allclose(out[:, :dim], base[:, :dim])
    assert not torch.allclose(out[:, 2 * dim :], base[:, 2 * dim :])


def test_every_site_builds_the_same_initial_model():
    a, b = build_model(SPEC), build_model(SPEC)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def _save_official_like(tmp_path, model_type, image_size, num_classes=3, name="ckpt.pth"):
    """A checkpoint laid out like the official release: Sam.state_dict() at 1024 px, 3 multimask outputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam(model_type, image_size, num_classes)
    path = tmp_path / name
    torch.save(sam.state_dict(), path)
    return path, sam.state_dict()


def test_checkpoint_at_other_size_is_resized(tmp_path):
    path, official = _save_official_like(tmp_path, "vit_test", 256)
    model = build_model(SPEC, checkpoint=str(path))
    state = model.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 4, 4, 64)
    assert official["image_encoder.pos_embed"].shape == (1, 16, 16, 64)
    # global-attention block 1: 2*16-1 -> 2*4-1 positions; windowed block 0 keeps its table
    assert state["image_encoder.blocks.1.attn.rel_pos_h"].shape[0] == 7
    torch.testing.assert_close(state["image_encoder.blocks.0.attn.rel_pos_h"], official["image_encoder.blocks.0.attn.rel_pos_h"])
    torch.testing.assert_close(state["image_encoder.patch_embed.proj.weight"], official["image_encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(state["mask_decoder.output_upscaling.0.weight"], official["mask_decoder.output_upscaling.0.weight"])


def test_wrong_or_broken_checkpoint_fails_with_one_line_naming_file(tmp_path):
    broken = tmp_path / "sam_vit_b_01ec64.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth.*cannot be read") as err:
        build_model(SPEC, checkpoint=str(broken))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="file not found"):
        build_model(SPEC, checkpoint=str(tmp_path / "absent.pth"))
    other, _ = _save_official_like(tmp_path, "vit_test", 64, name="other.pth")
    state = torch.load(other)
    state["image_encoder.blocks.0.mlp.lin1.weight"] = torch.zeros(3, 3)
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="other.pth: tensor image_encoder.blocks.0.mlp.lin1.weight"):
        build_model(SPEC, checkpoint=str(other))


@pytest.mark.slow
def test_official_vit_b_layout_loads_at_224(tmp_path):
    """The real ViT-B layout: a state dict of segment-anything's own vit_b builder (1024 px, random
    weights; the 375 MB release file cannot be downloaded here) loads at 224 px with 2 classes."""
    sam = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    model = build_model(ModelSpec("vit_b", 224, 2, "flap", 32), checkpoint=str(path))
    state = model.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 14, 14, 768)
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].shape == (27, 64)
    torch.testing.assert_close(state["image_encoder.blocks.3.attn.qkv.weight"], sam.state_dict()["image_encoder.blocks.3.attn.qkv.weight"])
    with pytest.raises(CheckpointError, match="another model_type"):
        build_model(ModelSpec("vit_l", 224, 2, "flap", 32), checkpoint=str(path))
