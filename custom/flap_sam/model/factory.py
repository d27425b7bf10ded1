"""One place that turns the model settings of a job into the adapted SAM model, and moves its exchanged
tensors in and out of it (torch tensors for the adapter file, float32 numpy arrays for FLARE's DXO payload)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from flap_sam.model.attention import set_attention
from flap_sam.model.checkpointing import set_checkpointing
from flap_sam.model.encoders import family_for
from flap_sam.model.encoders.tiny_vit import MODEL_TYPE as LITE_MEDSAM
from flap_sam.model.lora import inject_lora
from flap_sam.model.presets import Preset, apply_trainable, exchanged_names, get_preset
from flap_sam.model.sam_builder import build_sam, check_image_size, default_checkpoint, load_sam_checkpoint
from flap_sam.model.semantic_sam import SemanticSam

logger = logging.getLogger(__name__)

# Every site and the server build the same random initialisation (frozen weights without a
# checkpoint, LoRA A factors, new decoder tokens), so a federation starts from one model.
INIT_SEED = 20240731


@dataclass(frozen=True)
class ModelSpec:
    """The settings that define the adapted model; identical at the server and every site.

    Attributes:
        model_type: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``lite_medsam`` (pretrained weights bundled) |
            ``vit_test`` (tiny, tests only).
        image_size: model input size in pixels (paper: 224 for ViT-B; LiteMedSAM's native size is 256).
        num_classes: foreground classes (KiTS: 2, IXI and prostate: 1).
        preset: what trains and is exchanged (see ``flap_sam.model.presets``).
        rank: LoRA rank (ignored by presets without LoRA; ``samed`` fixes 4).
        lora_scale: multiplier of the LoRA update.
        slice_channels: what a slice's three input channels hold : ``grey`` (the paper's) | ``neighbours``
            (checked by the schema; the data layer builds the images). The built model carries it (``model.slice_channels``).
    """

    model_type: str
    image_size: int
    num_classes: int
    preset: str
    rank: int
    lora_scale: float = 1.0  # 1.0: the LoRA update as trained
    slice_channels: str = "grey"

    def __post_init__(self) -> None:
        check_image_size(self.model_type, self.image_size)
        get_preset(self.preset)
        family_for(self.model_type).check_preset(self.model_type, self.preset)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")

    @property
    def preset_obj(self) -> Preset:
        return get_preset(self.preset)


def build_model(
    spec: ModelSpec, checkpoint: str | None = None, device: str | torch.device = "cpu", attention: str = "fused", checkpointing: str = "off"
) -> nn.Module:
    """Build SAM, load the official checkpoint (if any), inject the preset's LoRA, set trainability.

    Args:
        spec: the model settings.
        checkpoint: path to a SAM checkpoint of ``spec.model_type``; ``None`` or "" means the model type's
            default (``resolve_checkpoint``): LiteMedSAM's bundled weights, or random initialisation for a ViT
            (a loud warning is logged: only useful for tests).
        device: where the model lives.
        attention: ``fused`` (SDPA, ``flap_sam.model.attention``) | ``reference`` (segment-anything's own).
        checkpointing: ``off`` | ``encoder`` (recompute encoder blocks in backward, ``flap_sam.model.checkpointing``).
            Neither changes parameters or results; each party may choose its own.
    """
    checkpoint = resolve_checkpoint(checkpoint, spec.model_type)
    if not checkpoint and not family_for(spec.model_type).trains_from_scratch:
        logger.warning(
            "NO SAM CHECKPOINT configured: %s starts from RANDOM weights. %s", spec.model_type, random_base_remedy(spec.model_type)
        )
    model = assemble_model(spec, checkpoint)
    set_attention(model, attention)
    set_checkpointing(model, checkpointing)
    return model.to(device)


def assemble_model(spec: ModelSpec, checkpoint: str | None) -> nn.Module:
    """``build_model`` without the device move and the missing-checkpoint warning (works on the meta device)."""
    preset, family = spec.preset_obj, family_for(spec.model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        whole = family.build_model(spec.model_type, spec.image_size, spec.num_classes)
        if whole is not None:  # a family that is not a SAM encoder (the U-Net baseline): its own model, no LoRA
            apply_trainable(whole, preset)
            setattr(whole, "slice_channels", spec.slice_channels)  # noqa: B010 (a plain attribute of the model, not a submodule)
            return whole
        model = build_sam(spec.model_type, spec.image_size, spec.num_classes, sam_class=SemanticSam)
        model.whole_image_box = family.whole_image_box
        if checkpoint:
            load_sam_checkpoint(model, checkpoint)
        if preset.uses_lora:
            inject_lora(model, preset.lora_rank(spec.rank), spec.lora_scale, encoder=preset.encoder_lora, decoder=preset.decoder_lora)
    apply_trainable(model, preset)
    model.slice_channels = spec.slice_channels
    return model


def exchange_schema(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a site may send under ``spec`` (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        model = assemble_model(spec, None)
    params = dict(model.named_parameters())
    return {name: tuple(params[name].shape) for name in exchanged_names(model, spec.preset_obj)}


def resolve_checkpoint(path: str | None, model_type: str | None = None) -> str | None:
    """The weights file a party builds ``model_type`` from: ``path`` with ``~`` and variables expanded, or,
    when ``path`` is "" / None, the model type's default (``lite_medsam``: its bundled weights, checked; a ViT: None)."""
    if not path:
        return default_checkpoint(model_type) if model_type else None
    return os.path.expandvars(os.path.expanduser(path))


def refuses_random_base(model_type: str, checkpoint: str | None, demo_data: bool, random_weights: bool) -> bool:
    """True when real data would train a pretrained family's model from random weights (no checkpoint):
    not on the demo data, not when the job says ``random_weights``, never for a family that trains from scratch."""
    return not checkpoint and not demo_data and not random_weights and not family_for(model_type).trains_from_scratch


def random_base_refusal(model_type: str) -> str:
    """The one line that stops real data from training a random base."""
    return (
        f"checkpoint is not set: {model_type} would train this site's data from RANDOM weights. "
        f"{random_base_remedy(model_type)}; or set random_weights=true if random weights are meant (tests only)"
    )


def random_base_remedy(model_type: str) -> str:
    """One sentence with both ways to a pretrained base, for the messages about a random one."""
    file = family_for(model_type).official_checkpoint(model_type)
    official = f" ({file} from the segment-anything release)" if file else ""
    return (
        f"Set 'checkpoint' (sites) and 'server_checkpoint' (server) to the official SAM file{official}, "
        f"or use model_type={LITE_MEDSAM} (LiteMedSAM, pretrained weights bundled with flap-sam)"
    )


def exchanged_state(model: nn.Module, preset: Preset) -> dict[str, torch.Tensor]:
    """The tensors a site sends under ``preset``: name -> detached CPU tensor."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().cpu() for name in exchanged_names(model, preset)}


def export_weights(model: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """The named parameters as float32 numpy arrays (what a site sends): copies, which later training does not change.

    (On CPU ``tensor.numpy()`` shares the parameter's memory: without the copy, a kept "received"
    model or a result still being sent would follow the optimiser's in-place updates.)
    """
    params = dict(model.named_parameters())
    return {name: params[name].detach().float().cpu().numpy().copy() for name in names}


def import_weights(model: nn.Module, weights: dict[str, Any], names: list[str], source: str) -> None:
    """Copy received tensors into the model; they must be exactly ``names`` with matching shapes.

    Raises ``ValueError`` naming ``source`` when keys are missing, unexpected or mis-shaped.
    """
    expected, received = set(names), set(weights)
    if expected != received:
        missing, extra = sorted(expected - received), sorted(received - expected)
        raise ValueError(f"{source}: model does not match the preset (missing {missing[:3]}, unexpected {extra[:3]})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            value = torch.as_tensor(np.asarray(weights[name]))
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
