"""SAM built from segment-anything's own modules, LoRA adapters and the paper's presets."""

from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.model.presets import PRESETS, Preset, get_preset
from flap_sam.model.semantic_sam import SemanticSam

__all__ = ["ModelSpec", "build_model", "PRESETS", "Preset", "get_preset", "SemanticSam"]
