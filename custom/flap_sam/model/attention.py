"""Fused attention for segment-anything's modules, without vendoring them.

segment-anything computes attention explicitly: ``softmax(q kᵀ · scale + bias) v``, keeping the
(B·heads, N, N) attention matrix and its softmax for the backward pass. ``use_fused_attention``
replaces the ``forward`` of each attention module of a built SAM by one that calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU,
a fused kernel on CPU). The mask decoder's attentions are routed here; the image encoder's by its
family (``flap_sam.model.encoders``: ViT's decomposed relative positions, TinyViT's learned biases,
each as the additive mask).
Parameters, state-dict keys and results (to float rounding) are unchanged: the replacement is a
runtime choice of each party (setting ``attention``), not part of the model.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch import nn

from flap_sam.model.encoders import family_of

ATTENTION_MODES = ("fused", "reference")


def _decoder_forward(self: DecoderAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``DecoderAttention.forward`` through SDPA: q (B, Nq, dim), k and v (B, Nk, dim) -> (B, Nq, dim)."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def use_fused_attention(model: nn.Module) -> int:
    """Route every SAM attention module of ``model`` through SDPA in place; returns how many.

    Works on the modules as built or after ``inject_lora`` (the projections are called as modules).
    The image encoder's attentions are its family's to route (``EncoderFamily.use_fused_attention``:
    ViT's relative positions and TinyViT's learned biases enter as the additive mask).
    """
    encoder = getattr(model, "image_encoder", None)
    count = family_of(encoder).use_fused_attention(encoder) if encoder is not None else 0
    for module in model.modules():
        if isinstance(module, DecoderAttention):
            module.forward = types.MethodType(_decoder_forward, module)
            count += 1
    return count


def set_attention(model: nn.Module, mode: str) -> None:
    """``fused`` (SDPA) or ``reference`` (segment-anything's own forward, as built)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention: {mode!r} is not one of {list(ATTENTION_MODES)}")
    if mode == "fused":
        use_fused_attention(model)
