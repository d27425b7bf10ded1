"""Helpers for tests of the model itself."""

from __future__ import annotations

import torch


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA B starts at 0; give it values so the LoRA path takes part in a comparison (in place; returns ``model``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def noisy_payload(spec, seed: int = 0) -> dict:
    """The exchanged tensors of ``spec``'s freshly built model plus N(0, 0.05) noise: a site's update as the server receives it."""
    import numpy as np

    from flap_sam.model.factory import build_model, export_weights
    from flap_sam.model.presets import exchanged_names

    model = build_model(spec)
    weights = export_weights(model, exchanged_names(model, spec.preset_obj))
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in weights.items()}
