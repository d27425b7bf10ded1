"""The server's model: only the exchanged tensors, so the persistor keeps the adapter, not SAM."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from flap_sam.jobs.spec import JobSpec
from flap_sam.model.adapter_file import base_fingerprint
from flap_sam.model.factory import build_model, exchanged_state, resolve_checkpoint
from flap_sam.training.schema import package_defaults

logger = logging.getLogger(__name__)
# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()


class AdapterModel(nn.Module):
    """An ``nn.Module`` whose ``state_dict()`` is exactly the preset's exchanged tensors.

    Keys are the full SAM names (``image_encoder.blocks.0.attn.qkv.lora_A.q`` ...), held in a
    tree of plain modules. Initial values come from the same deterministic build as every
    site's (LoRA B = 0), with pretrained decoder parts when the server has the checkpoint.
    For flap with ViT-B, r = 32, 2 classes: 1.86 M parameters, 7.4 MB in fp32.

    ``base_fingerprint`` is the fingerprint of the SAM the server built (see
    ``flap_sam.model.adapter_file``); it travels with every global model, so each site can check
    that it built the same base before it trains.

    Args:
        spec: the job's model and task settings (the ``job_spec`` block; see ``JobSpec``).
        checkpoint: an optional server-local official SAM checkpoint.
    """

    def __init__(self, spec: dict[str, Any], checkpoint: str = DEFAULT["server_checkpoint"]) -> None:
        super().__init__()
        model_spec = JobSpec.from_settings(spec).model
        resolved = resolve_checkpoint(checkpoint, model_spec.model_type)
        full = build_model(model_spec, resolved)
        exchanged = exchanged_state(full, model_spec.preset_obj)
        for name, tensor in exchanged.items():
            self._register(name, tensor.clone())
        self.spec = model_spec
        self.base_fingerprint = base_fingerprint(full, exchanged, from_checkpoint=bool(resolved))

    def _register(self, name: str, tensor: torch.Tensor) -> None:
        *path, leaf = name.split(".")
        module: nn.Module = self
        for part in path:
            if not isinstance(getattr(module, part, None), nn.Module):
                module.add_module(part, nn.Module())
            module = module.get_submodule(part)
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("AdapterModel only holds the exchanged tensors; it is not a network")
