"""The model settings of a job, resolved: the ``ModelSpec`` every party of a federation builds."""

from __future__ import annotations

from flap_sam.data.profiles import get_profile
from flap_sam.model.factory import ModelSpec


def job_model_spec(model_type: str, image_size: int, dataset: str, preset: str, rank: int, lora_scale: float) -> ModelSpec:
    """The ``ModelSpec`` of a job's settings; the class count follows ``dataset`` (server, filter and sites alike)."""
    return ModelSpec(model_type, image_size, get_profile(dataset).num_classes, preset, rank, lora_scale)
