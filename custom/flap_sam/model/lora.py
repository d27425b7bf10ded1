"""Low-rank adapters (LoRA) for SAM's attention projections.

``LoRALinear`` is an ``nn.Linear`` (same ``weight``/``bias`` parameters, same state-dict
keys as the official model) plus rank-r updates on chosen slices of its output:

    y = x W^T + b,   y[..., lo:hi] += scale * (x A^T) B^T      A: (r, in), B: (hi - lo, r)

SAM's image encoder fuses q, k and v into one ``qkv`` linear, so the encoder adapts the
q and v slices of that output (ΔWq = Bq·Aq, ΔWv = Bv·Av); the mask decoder has separate
``q_proj``/``v_proj`` linears, adapted whole. A slice may be several column ranges: LiteMedSAM's
TinyViT lays ``qkv`` out per head (``[q_h | k_h | v_h]``), so its q is one range per head, adapted
by one rank-r pair as in the ViT. B starts at zero, so an adapted model computes exactly what
the base model computes until it is trained.

Why not ``peft``: its LoRA adapts whole linear layers; a fused ``qkv`` would get one
update for q, k and v together, which is not the paper's parameterisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import ImageEncoderViT
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch import nn

from flap_sam.model.presets import A_TAG, B_TAG

Columns = tuple[int, int] | tuple[tuple[int, int], ...]


def _ranges(columns: Columns) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` or ``((lo, hi), ...)`` -> ``((lo, hi), ...)``."""
    return (tuple(columns),) if isinstance(columns[0], int) else tuple(tuple(c) for c in columns)


class LoRALinear(nn.Linear):
    """``nn.Linear`` with LoRA updates on named output slices.

    Args:
        in_features / out_features / bias: as ``nn.Linear``.
        rank: LoRA rank r (>= 1).
        scale: multiplier of the low-rank update.
        segments: name -> the output columns adapted: ``(start, stop)``, e.g. ``{"q": (0, 768), "v": (1536, 2304)}``,
            or several ranges ``((start, stop), ...)`` whose columns B's rows fill in order.

    State-dict keys: ``weight``, ``bias``, ``lora_A.<name>`` (r, in), ``lora_B.<name>`` (columns, r).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        rank: int,
        scale: float,
        segments: dict[str, Columns],
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        ranges = {name: _ranges(columns) for name, columns in segments.items()}
        for name, parts in ranges.items():
            for lo, hi in parts:
                if not 0 <= lo < hi <= out_features:
                    raise ValueError(f"LoRA segment {name}={lo}:{hi} is outside 0:{out_features}")
        self.rank = rank
        self.scale = scale
        self.segments = ranges
        factory = {"device": device, "dtype": dtype}
        self.lora_A = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, in_features, **factory)) for n in ranges})
        self.lora_B = nn.ParameterDict({n: nn.Parameter(torch.zeros(sum(hi - lo for lo, hi in parts), rank, **factory))
                                        for n, parts in ranges.items()})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # One range per segment: the update is concatenated in; several: added at its columns (index_add).
        self._contiguous = all(len(parts) == 1 for parts in ranges.values())
        for name, parts in ranges.items():
            columns = torch.cat([torch.arange(lo, hi, device=device) for lo, hi in parts])
            self.register_buffer(f"_columns_{name}", columns, persistent=False)

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, scale: float, segments: dict[str, Columns]) -> "LoRALinear":
        """Adapt an existing linear layer; its weight and bias parameters are shared, not copied."""
        lora = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            rank,
            scale,
            segments,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        lora.weight = linear.weight
        lora.bias = linear.bias
        return lora

    def delta_weight(self, name: str) -> torch.Tensor:
        """scale * B·A for one segment, shape (columns, in_features)."""
        return self.scale * self.lora_B[name] @ self.lora_A[name]

    def columns(self, name: str) -> torch.Tensor:
        """The output columns of a segment, in the order of B's rows: (columns,) int64."""
        return getattr(self, f"_columns_{name}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.segments:
            return y
        if not self._contiguous:
            for name in self.segments:
                update = F.linear(F.linear(x, self.lora_A[name]), self.lora_B[name])
                y = y.index_add(-1, self.columns(name), update, alpha=self.scale)
            return y
        pieces, cursor = [], 0
        for name, ((lo, hi),) in sorted(self.segments.items(), key=lambda item: item[1][0][0]):
            if lo > cursor:
                pieces.append(y[..., cursor:lo])
            update = F.linear(F.linear(x, self.lora_A[name]), self.lora_B[name])
            pieces.append(y[..., lo:hi] + self.scale * update)
            cursor = hi
        if cursor < self.out_features:
            pieces.append(y[..., cursor:])
        return torch.cat(pieces, dim=-1)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight has the LoRA updates merged in."""
        merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            weight = self.weight.detach().clone()
            for name in self.segments:
                weight[self.columns(name)] += self.delta_weight(name).to(weight.dtype)
            merged.weight.copy_(weight)
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        return merged


def inject_lora(sam: nn.Module, rank: int, scale: float = 1.0, encoder: bool = True, decoder: bool = True) -> int:
    """Replace SAM's attention projections by ``LoRALinear`` in place; returns the number adapted.

    Encoder: q and v slices of every attention's fused ``qkv`` (ViT: every block; LiteMedSAM's TinyViT:
    the 10 blocks of its attention stages, q and v taken head by head).
    Decoder: ``q_proj`` and ``v_proj`` of all attention layers of the two-way transformer.
    """
    count = 0
    if encoder:
        for attn, columns in _encoder_qv_columns(sam.image_encoder):
            attn.qkv = LoRALinear.wrap(attn.qkv, rank, scale, columns)
            count += 1
    if decoder:
        for module in sam.mask_decoder.transformer.modules():
            if isinstance(module, DecoderAttention):
                module.q_proj = LoRALinear.wrap(module.q_proj, rank, scale, {"q": (0, module.q_proj.out_features)})
                module.v_proj = LoRALinear.wrap(module.v_proj, rank, scale, {"v": (0, module.v_proj.out_features)})
                count += 2
    return count


def _encoder_qv_columns(encoder: nn.Module) -> list[tuple[nn.Module, dict[str, Columns]]]:
    """(attention module, its q and v columns of ``qkv``) for every attention of SAM's image encoder."""
    if isinstance(encoder, ImageEncoderViT):
        return [(block.attn, {"q": (0, block.attn.qkv.in_features), "v": (2 * block.attn.qkv.in_features, 3 * block.attn.qkv.in_features)})
                for block in encoder.blocks]
    from flap_sam.model import lite_medsam  # imported only for a LiteMedSAM encoder

    return [(attn, lite_medsam.qv_columns(attn)) for attn in lite_medsam.attention_modules(encoder)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every ``LoRALinear`` into a plain ``nn.Linear`` in place (for export); returns ``model``.

    The merged model's state dict has exactly the official SAM keys.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.to_linear())
    return model


def lora_pairs(names) -> dict[str, tuple[str, str]]:
    """``{pair id: (A name, B name)}`` for every ``<module>.lora_A.<segment>`` with its ``lora_B`` partner."""
    names = set(names)
    pairs = {}
    for name in names:
        if A_TAG in name:
            partner = name.replace(A_TAG, B_TAG)
            if partner not in names:
                raise ValueError(f"LoRA tensor {name} arrived without its partner {partner}")
            pairs[name.replace(A_TAG, ".lora_AB.")] = (name, partner)
    return pairs
