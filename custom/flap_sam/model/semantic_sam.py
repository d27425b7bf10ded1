"""Prompt-free semantic segmentation with SAM (the paper's use of SAM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam


class SemanticSam(Sam):
    """Official ``Sam`` with a prompt-free, semantic forward.

    The mask decoder receives the prompt encoder's empty sparse embedding and its
    no-mask dense embedding; its ``num_classes + 1`` mask tokens give one logit map per
    class (background first). State-dict keys are those of the official ``Sam``.

    ``whole_image_box``: prompt with one fixed box over the whole image instead of no prompt, for
    weights trained only with box prompts (LiteMedSAM; its package's own inference does the same
    when no box is given). The box is the same for every image: the forward stays prompt-free.
    """

    whole_image_box: bool = False

    def fixed_prompt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt every image gets: sparse (1, 0 or 2, C) and dense (1, C, h, w) embeddings."""
        box = None
        if self.whole_image_box:
            size = self.image_encoder.img_size
            box = torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]], device=self.pixel_mean.device)
        return self.prompt_encoder(points=None, boxes=box, masks=None)

    def low_res_logits(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1], S = ``image_encoder.img_size`` -> logits (B, K + 1, S/4, S/4)."""
        size = self.image_encoder.img_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        # SAM's pixel statistics are for 0..255 RGB; preprocess() normalises (no padding at S x S).
        embeddings = self.image_encoder(self.preprocess(images * 255.0))
        sparse, dense = self.fixed_prompt()
        # With one (fixed) prompt, predict_masks broadcasts the shared tokens over the image batch,
        # so all B images are decoded in one call (checked against per-image Sam.forward in the tests).
        logits, _ = self.mask_decoder.predict_masks(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> logits (B, num_classes + 1, S, S)."""
        return F.interpolate(self.low_res_logits(images), size=images.shape[-2:], mode="bilinear", align_corners=False)

    @property
    def num_classes(self) -> int:
        """Foreground classes (mask tokens minus background)."""
        return self.mask_decoder.num_mask_tokens - 1

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size
