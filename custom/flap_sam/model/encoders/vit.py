"""SAM's ViT image encoders (ViT-B, -L, -H of the segment-anything release, and a tiny one for tests).

Built from segment-anything's own ``ImageEncoderViT`` at any input size (the release fixes 1024 px):
16 px patches, windowed attention with decomposed relative positions, global attention in a few
blocks. Pretrained position tables are resized to the input size when a checkpoint is loaded. The
weights take SAM's pixel statistics (ImageNet RGB). Fused attention routes each ``Attention``
through SDPA with the relative-position terms as its additive mask (MViTv2's decomposition, as in
``segment_anything.modeling.image_encoder.add_decomposed_rel_pos``).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from torch import nn

from flap_sam.model.encoders import Columns, DecoderSizes, EncoderFamily

PATCH_SIZE = 16


@dataclass(frozen=True)
class VitSizes:
    """Sizes of one ViT model type, and the published checkpoint it is meant to start from."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    decoder: DecoderSizes = DecoderSizes()  # noqa: RUF009 (frozen: one shared default is safe)
    official_checkpoint: str | None = None


SIZES: dict[str, VitSizes] = {
    "vit_b": VitSizes(768, 12, 12, (2, 5, 8, 11), official_checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": VitSizes(1024, 24, 16, (5, 11, 17, 23), official_checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": VitSizes(1280, 32, 16, (7, 15, 23, 31), official_checkpoint="sam_vit_h_4b8939.pth"),
    # Test-only: same module structure, tiny widths, so tests and CI run in seconds.
    "vit_test": VitSizes(64, 2, 2, (1,), window_size=2, decoder=DecoderSizes(prompt_dim=32, mlp_dim=64, heads=2)),
}


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


def fused_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` through SDPA: x (B, H, W, dim) -> (B, H, W, dim)."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)  # each (B·heads, H·W, C)
    bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def _resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, G, G, C) absolute position embedding -> (1, grid, grid, C), bilinear."""
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(2G-1, head_dim) relative position table -> (length, head_dim), linear along positions."""
    resized = F.interpolate(rel_pos.T[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].T.to(rel_pos.dtype)


@dataclass(frozen=True)
class VitFamily(EncoderFamily):
    def decoder_sizes(self, model_type: str) -> DecoderSizes:
        return SIZES[model_type].decoder

    def build(self, model_type: str, image_size: int) -> ImageEncoderViT:
        sizes = SIZES[model_type]
        return self.tag(
            ImageEncoderViT(
                depth=sizes.depth,
                embed_dim=sizes.embed_dim,
                img_size=image_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=sizes.num_heads,
                patch_size=PATCH_SIZE,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=sizes.global_attn_indexes,
                window_size=sizes.window_size,
                out_chans=sizes.decoder.prompt_dim,
            )
        )

    def blocks(self, encoder: ImageEncoderViT) -> list[nn.Module]:
        return list(encoder.blocks)

    def qv_columns(self, encoder: ImageEncoderViT) -> list[tuple[nn.Module, dict[str, Columns]]]:
        # qkv's output is [q | k | v], each as wide as its input.
        return [
            (block.attn, {"q": (0, block.attn.qkv.in_features), "v": (2 * block.attn.qkv.in_features, 3 * block.attn.qkv.in_features)})
            for block in encoder.blocks
        ]

    def use_fused_attention(self, encoder: ImageEncoderViT) -> int:
        for block in encoder.blocks:
            block.attn.forward = types.MethodType(fused_forward, block.attn)
        return len(encoder.blocks)

    def fit_tensor(self, key: str, value: torch.Tensor, want: torch.Tensor) -> torch.Tensor | None:
        if key == "image_encoder.pos_embed" and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            return _resize_pos_embed(value, want.shape[1])
        if ".attn.rel_pos_" in key and value.ndim == 2 and value.shape[1] == want.shape[1]:
            return _resize_rel_pos(value, want.shape[0])
        return None

    def official_checkpoint(self, model_type: str) -> str | None:
        return SIZES[model_type].official_checkpoint


FAMILY = VitFamily(
    name="vit", model_types=tuple(SIZES), stride=PATCH_SIZE, pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375)
)
