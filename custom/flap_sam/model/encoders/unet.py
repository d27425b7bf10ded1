"""The baseline a hospital would train instead of adapting SAM: MONAI's 2D U-Net, trained from scratch.

Not a SAM encoder: this family builds its whole model (``build_model``), a MONAI ``UNet`` of the shape
NVFlare's own MONAI examples federate (prostate_2D: channels 16-256, strides 2, two residual units per
level; 1.63 M parameters, 6.5 MB in fp32), behind SAM's semantic interface so the Learner, the
trainer, inference, the filters, the aggregator and the persistor treat it as any other model:
images (B, 3, S, S) in [0, 1] -> logits (B, num_classes + 1, S, S).

Only the ``fft`` preset applies (the whole model trains and is exchanged: FedAvg, as in FLARE's
examples); its instance norms keep no running statistics, so its parameters are its whole state.
It has no pretrained weights by design: starting from random weights is the baseline, not a mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flap_sam.model.encoders import EncoderFamily

MODEL_TYPE = "unet"
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)
RESIDUAL_UNITS = 2


class SemanticUNet(nn.Module):
    """MONAI ``UNet`` (2D) with ``SemanticSam``'s forward.

    Args:
        image_size: input size S in pixels (a multiple of 16: four stride-2 levels).
        num_classes: foreground classes; the network outputs ``num_classes + 1`` logit maps (background first).
    """

    def __init__(self, image_size: int, num_classes: int) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.image_size = image_size
        self.num_classes = num_classes
        # Three input channels: the grey value repeated, as SAM gets it (and room for a 2.5D input).
        self.net = UNet(
            spatial_dims=2, in_channels=3, out_channels=num_classes + 1, channels=CHANNELS, strides=STRIDES, num_res_units=RESIDUAL_UNITS
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> logits (B, num_classes + 1, S, S)."""
        size = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return self.net(images)


@dataclass(frozen=True)
class UNetFamily(EncoderFamily):
    def build_model(self, model_type: str, image_size: int, num_classes: int) -> nn.Module:
        return self.tag(SemanticUNet(image_size, num_classes))

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        return []  # small enough that activation checkpointing saves nothing worth its recompute

    def qv_columns(self, encoder: nn.Module) -> list[Any]:
        return []

    def use_fused_attention(self, encoder: nn.Module) -> int:
        return 0


# Its recipe from scratch (AdamW): a larger peak than a pretrained base's, short warm-up, linear decay;
# measured beside LiteMedSAM's in docs/baselines.md.
FAMILY = UNetFamily(
    name="unet",
    model_types=(MODEL_TYPE,),
    stride=1,
    pixel_mean=(0.0, 0.0, 0.0),
    pixel_std=(1.0, 1.0, 1.0),
    presets=("fft",),
    trains_from_scratch=True,
    recipe={"lr": 3e-3, "poly_power": 1.0, "warmup_steps": 8},
)
