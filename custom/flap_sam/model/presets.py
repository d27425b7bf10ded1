"""The paper's fine-tuning presets: one preset decides what trains AND what may leave a site.

A preset is a LoRA configuration plus a list of regular expressions over the
state-dict names of the (adapted) SAM model. ``Preset.selects(name)`` is the single
rule used for three things, so they cannot disagree:

* which parameters get ``requires_grad`` (``apply_trainable``),
* which tensors a site sends (``exchanged_names``),
* which tensors the client result filter lets through (``flap_sam.federated.filters``).

A preset may also name a personal part (``personal``): tensors that train at each site and that
``selects`` never takes, so no payload, filter or site policy can let them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rule itself is names only: the command line reads it without importing torch
    from torch import nn

# The state-dict names of LoRA factors (``flap_sam.model.lora`` names its parameters so): ``....lora_A.q``.
A_TAG, B_TAG = ".lora_A.", ".lora_B."

_DEC = r"mask_decoder\."
# ViT: image_encoder.blocks.N.attn.*; LiteMedSAM's TinyViT: image_encoder.layers.L.blocks.N.attn.* (biases included)
_ENCODER_ATTENTION = r"image_encoder\.(layers\.\d+\.)?blocks\.\d+\.attn\."
_DECODER_ATTENTION = (
    _DEC + r"transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)|final_attn_token_to_image)\."
)
_DECODER_OUTPUT = (_DEC + r"output_upscaling\.", _DEC + r"output_hypernetworks_mlps\.", _DEC + r"mask_tokens\.")


@dataclass(frozen=True)
class Preset:
    """What trains and is exchanged.

    Attributes:
        name: preset id used in job configs and the CLI.
        description: one line, as in the paper's ablation table.
        encoder_lora / decoder_lora: where LoRA adapters are injected.
        patterns: regexes matched (``re.match``) against non-LoRA parameter names.
        fixed_rank: a rank the preset imposes (SAMed uses r=4), else the job's ``rank``.
        personal: regexes of non-LoRA parameters that train at each site and never leave it (the
            site's personal part, FedPer-style); a name the preset exchanges is never personal.
    """

    name: str
    description: str
    encoder_lora: bool = False
    decoder_lora: bool = False
    patterns: tuple[str, ...] = ()
    fixed_rank: int | None = None
    personal: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _personal: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))
        object.__setattr__(self, "_personal", tuple(re.compile(p) for p in self.personal))

    @property
    def uses_lora(self) -> bool:
        return self.encoder_lora or self.decoder_lora

    def lora_rank(self, requested: int) -> int:
        return self.fixed_rank if self.fixed_rank is not None else requested

    def selects(self, name: str) -> bool:
        """True if the tensor called ``name`` trains and may leave a site under this preset."""
        if is_lora_parameter(name):
            if name.startswith("image_encoder."):
                return self.encoder_lora
            return self.decoder_lora
        return any(p.match(name) for p in self._compiled)

    def keeps_at_site(self, name: str) -> bool:
        """True if the tensor called ``name`` is the site's personal part: it trains and never leaves the site."""
        return not is_lora_parameter(name) and not self.selects(name) and any(p.match(name) for p in self._personal)

    def trains(self, name: str) -> bool:
        """True if the tensor called ``name`` trains at a site: exchanged, or personal."""
        return self.selects(name) or self.keeps_at_site(name)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("fft", "full fine-tuning: every parameter", patterns=(r".",)),
        Preset(
            "attn_ft",
            "every attention parameter + decoder output parts + mask tokens",
            patterns=(_ENCODER_ATTENTION, _DECODER_ATTENTION) + _DECODER_OUTPUT,
        ),
        Preset("dec_ft", "the whole mask decoder", patterns=(_DEC,)),
        Preset("pdec_ft", "decoder output_upscaling, output_hypernetworks_mlps, mask_tokens", patterns=_DECODER_OUTPUT),
        Preset("lora_ft", "LoRA only (encoder qkv q/v + decoder q_proj/v_proj)", encoder_lora=True, decoder_lora=True),
        Preset(
            "flap",
            "the paper's method: LoRA + output_upscaling + output_hypernetworks_mlps + mask_tokens",
            encoder_lora=True,
            decoder_lora=True,
            patterns=_DECODER_OUTPUT,
        ),
        Preset(
            "flap_personal",
            "flap personalised (FedPer-style): LoRA travels; output_upscaling, output_hypernetworks_mlps, mask_tokens train and stay at each site",
            encoder_lora=True,
            decoder_lora=True,
            personal=_DECODER_OUTPUT,
        ),
        Preset("lora_dec", "SAMed-like: LoRA + the whole mask decoder", encoder_lora=True, decoder_lora=True, patterns=(_DEC,)),
        Preset(
            "samed",
            "SAMed proper: encoder LoRA r=4 + whole mask decoder + prompt encoder",
            encoder_lora=True,
            patterns=(_DEC, r"prompt_encoder\."),
            fixed_rank=4,
        ),
    )
}


def is_lora_parameter(name: str) -> bool:
    """True for the state-dict key of a LoRA factor (``....lora_A.q`` etc.)."""
    return A_TAG in name or B_TAG in name


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset '{name}' is unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def exchanged_names(model: nn.Module, preset: Preset) -> list[str]:
    """Names of the parameters of ``model`` that train and are exchanged under ``preset``, in model order."""
    return [name for name, _ in model.named_parameters() if preset.selects(name)]


def personal_names(model: nn.Module, preset: Preset) -> list[str]:
    """Names of the parameters of ``model`` that train and stay at the site under ``preset`` (its personal part)."""
    return [name for name, _ in model.named_parameters() if preset.keeps_at_site(name)]


def apply_trainable(model: nn.Module, preset: Preset) -> None:
    """Set ``requires_grad`` on exactly the parameters the preset trains (exchanged and personal), freeze the rest."""
    for name, param in model.named_parameters():
        param.requires_grad_(preset.trains(name))
