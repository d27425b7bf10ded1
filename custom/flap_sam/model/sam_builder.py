"""Build SAM from segment-anything's modules at any input size and load official checkpoints.

The official builders (``segment_anything.sam_model_registry``) fix the input size at
1024 px and three multimask outputs. Here the same modules are assembled with a
configurable input size (the paper uses 224 px) and ``num_multimask_outputs =
num_classes`` so the decoder emits ``num_classes + 1`` masks (background included).
"""

from __future__ import annotations

import logging
import os

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from flap_sam.errors import CheckpointError
from flap_sam.model.encoders import family_for, family_of

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # every base's input size: ViT patches; TinyViT's windows of 7 and 14 tile 112 and 224 px

# Decoder tensors whose shape depends on the number of mask tokens (num_classes + 1).
CLASS_COUNT_DEPENDENT = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")


def check_image_size(model_type: str, image_size: int) -> None:
    """Refuse an unknown model type or an input size it cannot take, in one line naming both."""
    family_for(model_type)
    if image_size % SIZE_MULTIPLE or image_size <= 0:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {SIZE_MULTIPLE} for {model_type}")


def build_sam(model_type: str = "vit_b", image_size: int = 224, num_classes: int = 2, sam_class: type[Sam] = Sam) -> Sam:
    """Assemble an official ``segment_anything.modeling.Sam`` (or a subclass) with random weights.

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h``, ``lite_medsam`` or the test-only ``vit_test``
            (any type of a family in ``flap_sam.model.encoders``).
        image_size: square input size in pixels, a multiple of 16.
        num_classes: foreground classes; the decoder predicts ``num_classes + 1`` masks.
        sam_class: ``Sam`` or a subclass such as ``SemanticSam``.

    The encoder, its pixel statistics and the prompt and decoder widths are the family's.
    """
    check_image_size(model_type, image_size)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    family = family_for(model_type)
    sizes, grid = family.decoder_sizes(model_type), image_size // family.stride
    return sam_class(
        image_encoder=family.build(model_type, image_size),
        prompt_encoder=PromptEncoder(
            embed_dim=sizes.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_classes,
            transformer=TwoWayTransformer(depth=2, embedding_dim=sizes.prompt_dim, mlp_dim=sizes.mlp_dim, num_heads=sizes.heads),
            transformer_dim=sizes.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(family.pixel_mean),
        pixel_std=list(family.pixel_std),
    )


def default_checkpoint(model_type: str) -> str | None:
    """The weights a model type starts from when the job names no file: LiteMedSAM's bundled ones (checked), else None."""
    return family_for(model_type).default_checkpoint(model_type)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a SAM state dict (an official ``sam_vit_*.pth`` or one exported by this project)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"SAM checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        raise CheckpointError(f"SAM checkpoint {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {path}: not a state dict of tensors")
    return state


def adapt_checkpoint(state: dict[str, torch.Tensor], sam: Sam, path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fit a SAM checkpoint to ``sam``: the encoder family fits its tensors (position tables), and the
    class-count-dependent decoder tensors are fitted to ``sam``'s classes.

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
    family = family_of(sam.image_encoder)
    fitted: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, want in target.items():
        value = state.get(key)
        resized = None if value is None or value.shape == want.shape else family.fit_tensor(key, value, want)
        if value is None:  # a hypernetwork MLP of a class beyond the checkpoint's tokens
            skipped.append(key)
        elif value.shape == want.shape:
            fitted[key] = value
        elif resized is not None:  # e.g. a position table of another input size
            fitted[key] = resized
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
