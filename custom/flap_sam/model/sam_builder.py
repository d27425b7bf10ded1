"""Build SAM from segment-anything's modules at any input size and load official checkpoints.

The official builders (``segment_anything.sam_model_registry``) fix the input size at
1024 px and three multimask outputs. Here the same modules are assembled with a
configurable input size (the paper uses 224 px) and ``num_multimask_outputs =
num_classes`` so the decoder emits ``num_classes + 1`` masks (background included).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

logger = logging.getLogger(__name__)

PATCH_SIZE = 16


@dataclass(frozen=True)
class SamArchitecture:
    """Sizes of one SAM variant (encoder and prompt/decoder widths)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    official_checkpoint: str | None = None


ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11), official_checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23), official_checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31), official_checkpoint="sam_vit_h_4b8939.pth"),
    # Test-only: same module structure, tiny widths, so tests and CI run in seconds.
    "vit_test": SamArchitecture(64, 2, 2, (1,), window_size=2, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2),
}

# Decoder tensors whose shape depends on the number of mask tokens (num_classes + 1).
CLASS_COUNT_DEPENDENT = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")


class CheckpointError(ValueError):
    """A SAM checkpoint that cannot be used; the message names the file and the problem."""


LITE_MEDSAM = "lite_medsam"  # LiteMedSAM: TinyViT encoder + bundled pretrained weights (flap_sam.model.lite_medsam)
MODEL_TYPES = (*ARCHITECTURES, LITE_MEDSAM)
# LiteMedSAM's prompt encoder and mask decoder have the ViT models' sizes.
LITE_MEDSAM_DECODER = SamArchitecture(0, 0, 0, (), prompt_dim=256, decoder_mlp_dim=2048, decoder_heads=8)


def get_architecture(model_type: str) -> SamArchitecture:
    """The sizes of a ViT model type (``lite_medsam``: those of its prompt encoder and decoder)."""
    if model_type == LITE_MEDSAM:
        return LITE_MEDSAM_DECODER
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type '{model_type}' is unknown; choose one of {list(MODEL_TYPES)}")
    return ARCHITECTURES[model_type]


def check_image_size(model_type: str, image_size: int) -> None:
    """Refuse an input size the model type cannot take, in one line naming both."""
    get_architecture(model_type)
    # ViT: whole 16 px patches. LiteMedSAM: its stride-1 stem and two halvings need a multiple of 4; 16 keeps
    # one rule for every model (its windows of 7 and 14 tile 112 and 224 px exactly, others are padded).
    if image_size % PATCH_SIZE or image_size <= 0:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {PATCH_SIZE} for {model_type}")


def _vit_encoder(arch: SamArchitecture, image_size: int) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=arch.depth,
        embed_dim=arch.embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=arch.num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=arch.global_attn_indexes,
        window_size=arch.window_size,
        out_chans=arch.prompt_dim,
    )


def build_sam(model_type: str = "vit_b", image_size: int = 224, num_classes: int = 2, sam_class: type[Sam] = Sam) -> Sam:
    """Assemble an official ``segment_anything.modeling.Sam`` (or a subclass) with random weights.

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h``, ``lite_medsam`` or the test-only ``vit_test``.
        image_size: square input size in pixels, a multiple of 16.
        num_classes: foreground classes; the decoder predicts ``num_classes + 1`` masks.
        sam_class: ``Sam`` or a subclass such as ``SemanticSam``.

    The ViT models take SAM's pixel statistics (ImageNet RGB); LiteMedSAM's weights take [0, 1]
    intensities, so its ``pixel_mean`` is 0 and ``pixel_std`` 255 (``Sam.preprocess`` of x * 255 is x).
    """
    check_image_size(model_type, image_size)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    arch = get_architecture(model_type)
    if model_type == LITE_MEDSAM:
        from flap_sam.model import lite_medsam

        encoder, grid = lite_medsam.build_encoder(image_size), image_size // lite_medsam.EMBEDDING_STRIDE
        pixel_mean, pixel_std = [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]
    else:
        encoder, grid = _vit_encoder(arch, image_size), image_size // PATCH_SIZE
        pixel_mean, pixel_std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    return sam_class(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_classes,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads
            ),
            transformer_dim=arch.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


def default_checkpoint(model_type: str) -> str | None:
    """The weights a model type starts from when the job names no file: LiteMedSAM's bundled ones (checked), else None."""
    if model_type != LITE_MEDSAM:
        return None
    from flap_sam.model import lite_medsam

    return lite_medsam.bundled_checkpoint()


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a SAM state dict (an official ``sam_vit_*.pth`` or one exported by this project)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"SAM checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"SAM checkpoint {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {path}: not a state dict of tensors")
    return state


def _resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, G, G, C) absolute position embedding -> (1, grid, grid, C), bilinear."""
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(2G-1, head_dim) relative position table -> (length, head_dim), linear along positions."""
    resized = F.interpolate(rel_pos.T[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].T.to(rel_pos.dtype)


def adapt_checkpoint(state: dict[str, torch.Tensor], sam: Sam, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fit a SAM checkpoint to ``sam``: resize position tables, fit the class-count-dependent decoder tensors.

    The checkpoints have 4 mask tokens (one single-mask and three multimask outputs); ``sam`` has
    ``num_classes + 1``. Its first tokens (and their IoU-head rows and hypernetwork MLPs) start from
    the pretrained ones, as many as both have; the rest keep their random initialisation.

    Returns the state dict to load (``strict=False``) and the keys left wholly or partly at random initialisation.
    Raises ``CheckpointError`` when the checkpoint belongs to another SAM model.
    """
    target = {k: v for k, v in sam.state_dict().items()}
    missing = [k for k in target if k not in state and not k.startswith(CLASS_COUNT_DEPENDENT)]
    if missing:
        raise CheckpointError(
            f"SAM checkpoint {path}: {len(missing)} tensors of this model are missing (e.g. {missing[0]}); "
            "is it a checkpoint of another model_type?"
        )
    fitted: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, want in target.items():
        value = state.get(key)
        if value is None:  # a hypernetwork MLP of a class beyond the checkpoint's tokens
            skipped.append(key)
        elif value.shape == want.shape:
            fitted[key] = value
        elif key == "image_encoder.pos_embed" and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            fitted[key] = _resize_pos_embed(value, want.shape[1])
        elif ".attn.rel_pos_" in key and value.ndim == 2 and value.shape[1] == want.shape[1]:
            fitted[key] = _resize_rel_pos(value, want.shape[0])
        elif key.startswith(CLASS_COUNT_DEPENDENT) and value.shape[1:] == want.shape[1:]:
            rows = min(value.shape[0], want.shape[0])  # dim 0 counts mask tokens
            fitted[key] = torch.cat([value[:rows].to(want.dtype), want[rows:]])
            if rows < want.shape[0]:
                skipped.append(key)
        else:
            raise CheckpointError(
                f"SAM checkpoint {path}: tensor {key} has shape {tuple(value.shape)}, this model needs "
                f"{tuple(want.shape)}; is it a checkpoint of another model_type?"
            )
    return fitted, skipped


def load_sam_checkpoint(sam: Sam, path: str) -> None:
    """Load an official SAM checkpoint into ``sam`` (built at any input size and class count)."""
    fitted, skipped = adapt_checkpoint(read_checkpoint(path), sam, path)
    sam.load_state_dict(fitted, strict=False)
    logger.info("Loaded SAM checkpoint %s (%d tensors)", path, len(fitted))
    if skipped:
        logger.info("%d class-count-dependent decoder tensors start wholly or partly from random initialisation", len(skipped))
