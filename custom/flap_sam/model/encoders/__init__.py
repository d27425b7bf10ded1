"""Model families: one module per base, found by name (SAM's image encoders, and the U-Net baseline).

A family is everything the rest of ``flap_sam.model`` needs to know about one kind of image
encoder: how to build it at an input size, its stride and pixel statistics, the prompt and decoder
widths that go with it, its blocks (activation checkpointing), its attention modules and their q
and v columns (LoRA, fused attention), how a pretrained tensor is fitted to another input size,
where its default weights are, and the training recipe its weights need (``recipe``: what ``auto``
takes). Code outside this package asks ``family_for(model_type)`` or ``family_of(encoder)``; it
never tests an encoder's class.

A family that is not a SAM encoder builds its whole model instead (``build_model``, the U-Net
baseline in ``unet.py``): a network with ``SemanticSam``'s forward, trained by the same Learner.

Adding a base is one new module here that defines ``FAMILY`` (an ``EncoderFamily``); the model
types it declares become valid ``model_type`` values everywhere (settings, CLI, docs page).
Modules are light at import: a family imports its encoder's package when it builds one.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

FAMILY_ATTR = "flap_sam_encoder_family"  # set on every encoder a family builds: how family_of finds it again

Columns = tuple[int, int] | tuple[tuple[int, int], ...]  # ``(lo, hi)`` or one range per head, of a fused qkv output


@dataclass(frozen=True)
class DecoderSizes:
    """Widths of the prompt encoder and mask decoder (segment-anything's modules) that go with an encoder."""

    prompt_dim: int = 256
    mlp_dim: int = 2048
    heads: int = 8


@dataclass(frozen=True)
class EncoderFamily:
    """One kind of SAM image encoder. Subclasses implement the methods that raise ``NotImplementedError``.

    Attributes:
        name: the family's name (its module's).
        model_types: the ``model_type`` values it builds.
        stride: input pixels per output embedding (embedding grid = image_size / stride).
        pixel_mean, pixel_std: ``Sam``'s normalisation of 0..255 inputs that the weights expect.
        whole_image_box: prompt with one box over the whole image (weights trained only with box prompts).
        recipe: what the training settings' ``auto`` takes for these weights, beside the paper's recipe.
        presets: the presets that apply to its models (None: every preset).
        trains_from_scratch: it has no pretrained weights by design (a baseline), so building it without
            a checkpoint is meant, not a random SAM to refuse.
    """

    name: str
    model_types: tuple[str, ...]
    stride: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    whole_image_box: bool = False
    recipe: dict[str, Any] = field(default_factory=dict[str, Any])
    presets: tuple[str, ...] | None = None
    trains_from_scratch: bool = False

    def check_preset(self, model_type: str, preset: str) -> None:
        """Refuse, in one line, a preset that does not apply to this family's models."""
        if self.presets is not None and preset not in self.presets:
            raise ValueError(f"preset '{preset}' does not apply to model_type {model_type}; choose one of {list(self.presets)}")

    def build_model(self, model_type: str, image_size: int, num_classes: int) -> nn.Module | None:
        """The whole segmentation model for a family that is not a SAM encoder, with random weights:
        images (B, 3, S, S) in [0, 1] -> logits (B, num_classes + 1, S, S). None (SAM's encoders): SAM is
        assembled around ``build``."""
        return None

    def decoder_sizes(self, model_type: str) -> DecoderSizes:
        return DecoderSizes()

    def build(self, model_type: str, image_size: int) -> nn.Module:
        """The encoder with random weights: images (B, 3, S, S) -> embeddings (B, prompt_dim, S/stride, S/stride)."""
        raise NotImplementedError

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        """Its blocks in order, each called as ``block(x)`` (activation checkpointing wraps them)."""
        raise NotImplementedError

    def qv_columns(self, encoder: nn.Module) -> list[tuple[nn.Module, dict[str, Columns]]]:
        """(attention module with a fused ``qkv`` linear, the q and v output columns of that linear) for every attention."""
        raise NotImplementedError

    def use_fused_attention(self, encoder: nn.Module) -> int:
        """Route its attention modules through SDPA in place (same parameters and results); returns how many."""
        raise NotImplementedError

    def fit_tensor(self, key: str, value: torch.Tensor, want: torch.Tensor) -> torch.Tensor | None:
        """A pretrained encoder tensor of another shape fitted to ``want``'s (e.g. another input size), or None."""
        return None

    def default_checkpoint(self, model_type: str) -> str | None:
        """The weights ``model_type`` starts from when a job names none (checked), or None (random)."""
        return None

    def official_checkpoint(self, model_type: str) -> str | None:
        """The file name of the published weights a user must fetch, for messages (None: bundled or none)."""
        return None

    def tag(self, encoder: nn.Module) -> nn.Module:
        setattr(encoder, FAMILY_ATTR, self.name)
        return encoder


def _discover() -> dict[str, EncoderFamily]:
    families = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        family = importlib.import_module(f"{__name__}.{info.name}").FAMILY
        families[family.name] = family
    return families


FAMILIES: dict[str, EncoderFamily] = _discover()
FAMILY_OF_TYPE: dict[str, EncoderFamily] = {t: f for f in FAMILIES.values() for t in f.model_types}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILY_OF_TYPE)


def family_for(model_type: str) -> EncoderFamily:
    """The family that builds ``model_type``; one line naming the valid ones when it is unknown."""
    if model_type not in FAMILY_OF_TYPE:
        raise ValueError(f"model_type '{model_type}' is unknown; choose one of {list(MODEL_TYPES)}")
    return FAMILY_OF_TYPE[model_type]


def family_of(encoder: nn.Module) -> EncoderFamily:
    """The family that built ``encoder`` (``sam.image_encoder`` of a model from ``flap_sam.model``)."""
    name = getattr(encoder, FAMILY_ATTR, None)
    if name not in FAMILIES:
        raise TypeError(f"{type(encoder).__name__} was not built by an encoder family of flap_sam.model.encoders")
    return FAMILIES[name]


__all__ = ["FAMILIES", "MODEL_TYPES", "Columns", "DecoderSizes", "EncoderFamily", "family_for", "family_of"]
