"""Fused attention for segment-anything's modules, without vendoring them.

segment-anything computes attention explicitly: ``softmax(q kᵀ · scale + bias) v``, keeping the
(B·heads, N, N) attention matrix and its softmax for the backward pass. ``use_fused_attention``
replaces the ``forward`` of each attention module of a built SAM by one that calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU,
a fused kernel on CPU). The image encoder's decomposed relative-position terms (MViTv2, as in
``segment_anything.modeling.image_encoder.add_decomposed_rel_pos``) enter as the additive mask.
Parameters, state-dict keys and results (to float rounding) are unchanged: the replacement is a
runtime choice of each party (setting ``attention``), not part of the model.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention as EncoderAttention, ImageEncoderViT, get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch import nn

ATTENTION_MODES = ("fused", "reference")


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The decomposed relative-position term of SAM's encoder as an additive attention mask.

    Args:
        q: (B·heads, H·W, C) unscaled queries.
        rel_pos_h, rel_pos_w: (2H-1, C) and (2W-1, C) relative position tables.
        size: (H, W) token grid of the (window of the) image.

    Returns:
        (B·heads, H·W, H·W) bias, in q's dtype.
    """
    h, w = size
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))  # (B·heads, H, W, H)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))  # (B·heads, H, W, W)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, h * w)


def _encoder_forward(self: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """``EncoderAttention.forward`` through SDPA: x (B, H, W, dim) -> (B, H, W, dim)."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)  # each (B·heads, H·W, C)
    bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def _decoder_forward(self: DecoderAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``DecoderAttention.forward`` through SDPA: q (B, Nq, dim), k and v (B, Nk, dim) -> (B, Nq, dim)."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def use_fused_attention(model: nn.Module) -> int:
    """Route every SAM attention module of ``model`` through SDPA in place; returns how many.

    Works on the modules as built or after ``inject_lora`` (the projections are called as modules).
    LiteMedSAM's TinyViT attentions take their learned biases as the additive mask
    (``flap_sam.model.lite_medsam.fused_forward``).
    """
    count = 0
    encoder = getattr(model, "image_encoder", None)
    if encoder is not None and not isinstance(encoder, ImageEncoderViT):
        from flap_sam.model import lite_medsam  # imported only for a LiteMedSAM encoder

        for module in lite_medsam.attention_modules(encoder):
            module.forward = types.MethodType(lite_medsam.fused_forward, module)
            count += 1
    for module in model.modules():
        if isinstance(module, EncoderAttention):
            module.forward = types.MethodType(_encoder_forward, module)
            count += 1
        elif isinstance(module, DecoderAttention):
            module.forward = types.MethodType(_decoder_forward, module)
            count += 1
    return count


def set_attention(model: nn.Module, mode: str) -> None:
    """``fused`` (SDPA) or ``reference`` (segment-anything's own forward, as built)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention: {mode!r} is not one of {list(ATTENTION_MODES)}")
    if mode == "fused":
        use_fused_attention(model)
