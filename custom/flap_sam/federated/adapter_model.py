"""The server's model: only the exchanged tensors, so the persistor keeps the adapter, not SAM."""

from __future__ import annotations

import logging

import torch
from torch import nn

from flap_sam.jobs.spec import job_model_spec
from flap_sam.model.factory import build_model, exchanged_state, resolve_checkpoint
from flap_sam.model.fingerprint import base_fingerprint

logger = logging.getLogger(__name__)


class AdapterModel(nn.Module):
    """An ``nn.Module`` whose ``state_dict()`` is exactly the preset's exchanged tensors.

    Keys are the full SAM names (``image_encoder.blocks.0.attn.qkv.lora_A.q`` ...), held in a
    tree of plain modules. Initial values come from the same deterministic build as every
    site's (LoRA B = 0), with pretrained decoder parts when the server has the checkpoint.
    For flap with ViT-B, r = 32, 2 classes: 1.86 M parameters, 7.4 MB in fp32.

    ``base_fingerprint`` is the fingerprint of the SAM the server built (see
    ``flap_sam.model.fingerprint``); it travels with every global model, so each site can check
    that it built the same base before it trains.

    Args: the job's model settings (see ``ModelSpec``; ``dataset`` sets the class count) and an
        optional server-local ``checkpoint``.
    """

    def __init__(
        self,
        model_type: str = "vit_b",
        image_size: int = 224,
        dataset: str = "kits",
        preset: str = "flap",
        rank: int = 32,
        lora_scale: float = 1.0,
        checkpoint: str = "",
    ) -> None:
        super().__init__()
        spec = job_model_spec(model_type, image_size, dataset, preset, rank, lora_scale)
        checkpoint = resolve_checkpoint(checkpoint)
        full = build_model(spec, checkpoint)
        exchanged = exchanged_state(full, spec.preset_obj)
        for name, tensor in exchanged.items():
            self._register(name, tensor.clone())
        self.spec = spec
        self.base_fingerprint = base_fingerprint(full, exchanged, from_checkpoint=bool(checkpoint))

    def _register(self, name: str, tensor: torch.Tensor) -> None:
        *path, leaf = name.split(".")
        module: nn.Module = self
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))

    def forward(self, *args, **kwargs):
        raise RuntimeError("AdapterModel only holds the exchanged tensors; it is not a network")
