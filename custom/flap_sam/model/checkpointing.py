"""Activation checkpointing of SAM's image-encoder blocks (setting ``checkpointing``: off | encoder).

A LoRA preset trains a few tensors, yet backpropagating into the encoder's LoRA factors keeps
every block's activations (attention matrices, MLP hidden states) until the backward pass. With
``encoder`` each block keeps only its input and recomputes the rest during backward
(``torch.utils.checkpoint``, non-reentrant, so LoRA factors inside a frozen block still get
gradients): less memory for about one more encoder forward per step. Gradients are the same.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from flap_sam.model.encoders import family_of

CHECKPOINTING_MODES = ("off", "encoder")


def _checkpointed(original: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return checkpoint(original, x, use_reentrant=False)
        return original(x)

    return forward


def checkpoint_encoder_blocks(model: nn.Module) -> int:
    """Checkpoint every block of ``model.image_encoder`` in place (training with gradients only); returns how many."""
    encoder = getattr(model, "image_encoder", model)  # a family that builds its whole model is tagged on it
    blocks = family_of(encoder).blocks(encoder)
    for block in blocks:
        block.forward = types.MethodType(_checkpointed(block.forward), block)
    return len(blocks)


def set_checkpointing(model: nn.Module, mode: str) -> None:
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"checkpointing: {mode!r} is not one of {list(CHECKPOINTING_MODES)}")
    if mode == "encoder":
        checkpoint_encoder_blocks(model)
