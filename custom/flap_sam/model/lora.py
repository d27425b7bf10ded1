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
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch import nn

from flap_sam.model.encoders import Columns, family_of
from flap_sam.model.presets import A_TAG, B_TAG


def _ranges(columns: Columns) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` or ``((lo, hi), ...)`` -> ``((lo, hi), ...)``."""
    if isinstance(columns[0], int):
        lo, hi = columns
        return ((int(lo), int(hi)),)
    return tuple((int(c[0]), int(c[1])) for c in columns)


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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
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
        self.lora_A = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype)) for n in ranges})
        self.lora_B = nn.ParameterDict(
            {
                n: nn.Parameter(torch.zeros(sum(hi - lo for lo, hi in parts), rank, device=device, dtype=dtype))
                for n, parts in ranges.items()
            }
        )
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # One range per segment: the update is concatenated in; several: added at its columns (index_add).
        self._contiguous = all(len(parts) == 1 for parts in ranges.values())
        for name, parts in ranges.items():
            columns = torch.cat([torch.arange(lo, hi, device=device) for lo, hi in parts])
            self.register_buffer(f"_columns_{name}", columns, persistent=False)

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, scale: float, segments: dict[str, Columns]) -> LoRALinear:
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
        merged = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            weight = self.weight.detach().clone()
            for name in self.segments:
                weight[self.columns(name)] += self.delta_weight(name).to(weight.dtype)
            merged.weight.copy_(weight)
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        return merged

    def lower_rank(self, rank: int) -> None:
        """Keep the first ``rank`` rows of every A and columns of every B (new parameters; before an optimiser exists).

        B starts at zero, so a freshly injected adapter lowered this way still computes exactly the base model.
        """
        if not 1 <= rank <= self.rank:
            raise ValueError(f"LoRA rank {rank}: must be between 1 and the module's rank {self.rank}")
        for name in self.segments:
            a, b = self.lora_A[name], self.lora_B[name]
            self.lora_A[name] = nn.Parameter(a.detach()[:rank].clone(), requires_grad=a.requires_grad)
            self.lora_B[name] = nn.Parameter(b.detach()[:, :rank].clone(), requires_grad=b.requires_grad)
        self.rank = rank


def lower_lora_rank(model: nn.Module, rank: int) -> int:
    """``LoRALinear.lower_rank`` on every adapted projection of ``model``; returns how many were lowered.

    A site that trains at a rank below the job's builds the job's model (so its base fingerprint is the
    server's) and then lowers it, before its optimiser is made.
    """
    modules = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for module in modules:
        module.lower_rank(rank)
    return len(modules)


def inject_lora(sam: Any, rank: int, scale: float = 1.0, encoder: bool = True, decoder: bool = True) -> int:
    """Replace SAM's attention projections by ``LoRALinear`` in place; returns the number adapted.

    Encoder: q and v slices of every attention's fused ``qkv`` (ViT: every block; LiteMedSAM's TinyViT:
    the 10 blocks of its attention stages, q and v taken head by head).
    Decoder: ``q_proj`` and ``v_proj`` of all attention layers of the two-way transformer.
    """
    count = 0
    if encoder:
        attention: Any  # an encoder family's attention module (SAM's or the vendored TinyViT's, untyped)
        for attention, columns in family_of(sam.image_encoder).qv_columns(sam.image_encoder):
            attention.qkv = LoRALinear.wrap(attention.qkv, rank, scale, columns)
            count += 1
    if decoder:
        for module in sam.mask_decoder.transformer.modules():
            if isinstance(module, DecoderAttention):
                module.q_proj = LoRALinear.wrap(module.q_proj, rank, scale, {"q": (0, module.q_proj.out_features)})
                module.v_proj = LoRALinear.wrap(module.v_proj, rank, scale, {"v": (0, module.v_proj.out_features)})
                count += 2
    return count


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every ``LoRALinear`` into a plain ``nn.Linear`` in place (for export); returns ``model``.

    The merged model's state dict has exactly the official SAM keys.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.to_linear())
    return model


def lora_pairs(names: Iterable[str]) -> dict[str, tuple[str, str]]:
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


# ---- LoRA factors as arrays: the maths the server and the sites share --------------------------------------------


def factorize(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) with B·A the best rank-``rank`` approximation of ``matrix`` (out x in): B = U_r, A = S_r V_r^T (float32).

    Past the matrix's own rank, B's columns and A's rows are zero.
    """
    u, s, vh = torch.linalg.svd(torch.as_tensor(matrix, dtype=torch.float64), full_matrices=False)
    k = min(rank, s.numel())
    b = torch.zeros(matrix.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, matrix.shape[1], dtype=torch.float64)
    b[:, :k], a[:k] = u[:, :k], s[:k, None] * vh[:k]
    return b.float().numpy(), a.float().numpy()


def _product_core(
    b_factors: list[np.ndarray], a_factors: list[np.ndarray], weights: list[float], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """M = sum_i w_i B_i A_i as Q_b C Q_a^T (Q_b (out, k), Q_a (in, k') orthonormal; the core C (k, k') is small).

    When the factors' total rank reaches the product's smaller side, C is M itself and Q_b, Q_a are None (identities).
    """
    for b, a in zip(b_factors, a_factors):
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"LoRA factors do not chain: B {b.shape} x A {a.shape}")
    b_cat = torch.cat([w * torch.as_tensor(b, dtype=dtype) for b, w in zip(b_factors, weights)], dim=1)
    a_cat = torch.cat([torch.as_tensor(a, dtype=dtype) for a in a_factors], dim=0)
    out_features, in_features = b_cat.shape[0], a_cat.shape[1]
    if 4 * b_cat.shape[1] >= 3 * min(out_features, in_features):
        # Many sites: once the factors are 3/4 as wide as the product, forming M beats two QRs of them (measured).
        return None, b_cat @ a_cat, None
    # M = Q_b (R_b R_a^T) Q_a^T: only the small core (k, k') is factorised, never the (out, in) product.
    q_b, r_b = torch.linalg.qr(b_cat)  # (out, k), (k, sum r_i)
    q_a, r_a = torch.linalg.qr(a_cat.T)  # (in, k'), (k', sum r_i)
    return q_b, r_b @ r_a.T, q_a


def product_singular_values(b_factors: list[np.ndarray], a_factors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Singular values, largest first, of M = sum_i w_i B_i A_i (float64), from the factors (M is never formed)."""
    _, core, _ = _product_core(b_factors, a_factors, weights, torch.float64)
    return torch.linalg.svdvals(core).numpy()


def refactorize(b_factors: list[np.ndarray], a_factors: list[np.ndarray], weights: list[float], rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` factors (B, A) of M = sum_i w_i B_i A_i (the ranks r_i may differ).

    M is never formed: with B_cat = [w_1 B_1 .. w_n B_n] (out x sum r_i) and A_cat = [A_1; ..; A_n], M = B_cat A_cat,
    so two thin QR decompositions and the leading singular vectors of a small core give M's best rank-``rank``
    factors; with many sites, whose factors together are wider than M, M itself is that core.

    Args:
        b_factors: B_i, each (out, r_i); a_factors: A_i, each (r_i, in); weights: w_i (any real numbers).
    Returns:
        B (out, rank) with orthonormal columns and A (rank, in), float32: B·A is the best rank-``rank``
        approximation of M (exactly M when rank(M) <= rank, to float precision).
    """
    q_b, core, q_a = _product_core(b_factors, a_factors, weights)
    core_b, core_a = _leading_factors(core, rank)  # (k, rank), (rank, k'), zero-padded past k
    new_b = core_b if q_b is None else q_b @ core_b  # (out, rank)
    new_a = core_a if q_a is None else core_a @ q_a.T  # (rank, in)
    return new_b.numpy(), new_a.numpy()


def _leading_factors(core: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, U_r^T C) for the core C (k, k'), float32: U_r (k, rank) the leading left singular vectors of C, so
    U_r U_r^T C is C's best rank-``rank`` approximation (zero columns and rows past k).

    U_r comes from the symmetric eigendecomposition of C C^T in float64, not from C's SVD: only the ``rank``
    leading vectors are needed, and ``eigh`` of the Gram matrix costs about half an SVD of C for the cores of
    many sites (768 x 768 from 24 sites at rank 32), where the server's aggregation time goes.
    """
    c64 = core.to(torch.float64)
    _values, vectors = torch.linalg.eigh(c64 @ c64.T)  # ascending eigenvalues = squared singular values
    k = min(rank, core.shape[0])
    u = torch.zeros(core.shape[0], rank, dtype=torch.float64)
    u[:, :k] = vectors.flip(1)[:, :k]
    return u.float(), (u.T @ c64).float()


def factor_shape_at_rank(name: str, shape: tuple[int, ...], rank: int | None) -> tuple[int, ...] | None:
    """The shape the LoRA factor ``name`` of ``shape`` has at ``rank``: A (r, in) -> (rank, in), B (out, r) -> (out, rank);
    None for a tensor that is no LoRA factor (or no rank)."""
    if rank is None or len(shape) != 2:
        return None
    if A_TAG in name:
        return (rank, shape[1])
    if B_TAG in name:
        return (shape[0], rank)
    return None


def factor_rank(name: str, shape: tuple[int, ...]) -> int | None:
    """The rank a LoRA factor's shape says (A: rows, B: columns); None for other tensors."""
    if len(shape) != 2:
        return None
    return shape[0] if A_TAG in name else shape[1] if B_TAG in name else None


def payload_rank(weights: dict[str, Any]) -> int | None:
    """The LoRA rank of a payload ``{name: array}`` (A is (r, in)); None without LoRA factors.

    Raises:
        ValueError: its LoRA pairs do not all have one rank, or a pair's B does not match its A.
    """
    ranks = set()
    for a_name, b_name in lora_pairs(weights).values():
        a_shape, b_shape = np.shape(weights[a_name]), np.shape(weights[b_name])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise ValueError(f"LoRA factors do not chain: {b_name} {b_shape} x {a_name} {a_shape}")
        ranks.add(a_shape[0])
    if len(ranks) > 1:
        raise ValueError(f"LoRA pairs of several ranks {sorted(ranks)} in one payload")
    return ranks.pop() if ranks else None


def at_rank(weights: dict[str, Any], rank: int) -> dict[str, Any]:
    """``weights`` with every LoRA pair of a rank above ``rank`` replaced by the best rank-``rank`` approximation of its B·A.

    Pairs at ``rank`` or below and every other tensor are passed on as they are (the same arrays), so a payload
    already at ``rank`` comes back unchanged. Shapes: A (r, in) -> (rank, in), B (out, r) -> (out, rank).
    """
    result = dict(weights)
    for a_name, b_name in lora_pairs(weights).values():
        if np.shape(weights[a_name])[0] > rank:
            result[b_name], result[a_name] = refactorize([np.asarray(weights[b_name])], [np.asarray(weights[a_name])], [1.0], rank)
    return result
