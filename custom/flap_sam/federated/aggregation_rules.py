"""The aggregation rules, on numpy arrays (no FLARE here): the paper's exact LoRA aggregation, and the
Byzantine-robust rules on what the sites changed (coordinate-wise median, trimmed mean, FedSECA).

**Exact LoRA aggregation** (``aggregate_exact``, ``lora_exact``). Averaging A and B separately is not
the average of the updates B·A. For every LoRA pair this rule forms M = sum_i w_i B_i A_i (w_i = site i's share of local steps) and
re-factorises it with a rank-r truncated SVD, M ~ U S V^T, as B = U_r and A = S_r V_r^T.
When rank(M) <= r the new B·A equals M exactly (to float precision).

M is never formed: with B_cat = [w_1 B_1 .. w_n B_n] (out x nr) and A_cat = [A_1; ..; A_n]
(nr x in), M = B_cat A_cat, so two thin QR decompositions and the SVD of an nr x nr core give
the same U, S, V in a few milliseconds per pair. Every other exchanged tensor is averaged
with the same weights, like NVFlare's ``InTimeAccumulateWeightedAggregator``.

**Robust rules** (``aggregate_robust``). Every site's change is taken where it is defined: for a LoRA
pair the change of its product, ΔM_i = B_i A_i - B_g A_g (B_g A_g: the global model the site started from); for any other
exchanged tensor the difference w_i - w_g. The changes of all sites become one matrix
``U`` (sites x coordinates); a robust rule turns it into one change ``u``; the new global
model is w_g + u, and for a LoRA pair B_g A_g + u re-factorised to rank r by a truncated SVD
(as ``lora_exact`` does). Each site has one vote: step counts (which a site reports itself)
do not weigh in.

FedSECA (Benjamin, Asokan, Yaqub, Nandakumar, "Sign Election and Coordinate-wise Aggregation of
Gradients for Byzantine Tolerant Federated Learning", CVPRW 2025), from the paper and its
reference implementation (FedRISE v2, ``tm_gamma`` 0.9):

1. *Clip* (variance reduction): each coordinate of every site is clamped to ± the median over
   sites of that coordinate's magnitude.
2. *Sparsify*: each site keeps only its largest magnitudes; the ``sparsity`` share (0.9) of its
   smallest is set to 0.
3. *CRISE* (concordance-ratio induced sign election): for sites i, j the concordance ratio
   c_ij = (concordant - discordant) / (concordant + discordant) over the coordinates where both
   are non-zero; site i's weight is max(0, mean_j sign(c_ij)) (the share of sites it agrees
   with, less the share it disagrees with). The elected sign of a coordinate is
   sign(sum_i weight_i sign(x_i)).
4. *RoCA*: per coordinate, the mean of the clipped, sparsified values that have the elected
   sign (0 where none has).

A site at a lower LoRA rank (``site_ranks``) started from the global model's best approximation
at its rank, so its change is taken against that.

The reference implementation adds server momentum (beta 0.5) on top; this one does not (the
server keeps no state between rounds, so resume and restarts stay exact).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flap_sam.model.lora import at_rank, factorize, lora_pairs, payload_rank, product_singular_values, refactorize
from flap_sam.training.schema import checked_value, choices_of, package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()
ROBUST_AGGREGATIONS = ("median", "trimmed_mean", "fedseca")


RANK_WEIGHTINGS = choices_of("rank_weighting")


def component_weights(site_ranks: list[int], weights: list[float], rank: int) -> np.ndarray:
    """(sites, rank) weight of site i's rank component k under ``rank_weighting = supplied``: w_i / W_k with
    W_k = sum of w_j over the sites j whose rank exceeds k (0 past a site's rank, and where no site supplies k)."""
    supplies = np.arange(rank)[None, :] < np.asarray(site_ranks)[:, None]  # (sites, rank)
    weighted = supplies * np.asarray(weights, dtype=np.float64)[:, None]
    totals = weighted.sum(axis=0)
    return np.divide(weighted, totals, out=np.zeros_like(weighted), where=totals > 0)


def aggregate_exact(
    contributions: list[tuple[float, dict[str, np.ndarray]]],
    reference: dict[str, np.ndarray] | None = None,
    rank_weighting: str = DEFAULT["rank_weighting"],
) -> dict[str, np.ndarray]:
    """Weighted aggregation of whole payloads: exact for LoRA pairs, averaging for the rest.

    Sites at a lower LoRA rank r_i than the global model ``reference`` (rank r, ``site_ranks``) started from
    its best rank-r_i approximation T_i(M_g), the global model's first r_i components (B's columns, A's rows).

    * ``rank_weighting = all``: their update is their change to it: per pair
      M = sum_i w_i B_i A_i + sum_i w_i (M_g - T_i(M_g)), re-factorised to rank r. The part of the global
      adapter a site could not hold is kept, not averaged towards zero; a site at rank r adds no term,
      so with every site at the global model's rank this is today's M = sum_i w_i B_i A_i, to the bit.
      Each site weighs in every component, so the components above the smallest rank move only by the
      share of the sites that train them (the upper bands may lag: ``update_band_energy`` measures it).
    * ``supplied``: component k is averaged over the sites that supply it:
      M = sum_k sum_{i: r_i > k} (w_i / W_k) b_ik a_ik^T (``component_weights``), plus the global model's
      components no site holds (M_g - T_max(M_g)). With every site at one rank, the same M as ``all``.

    Args:
        contributions: (weight, {name: array}) per site; weights need not sum to 1.
        reference: the global model the sites started from (its LoRA rank is the result's); None:
            every site is at the rank of the first.
        rank_weighting: ``all`` | ``supplied`` (``RANK_WEIGHTINGS``).
    """
    if rank_weighting not in RANK_WEIGHTINGS:
        raise ValueError(f"rank_weighting: {rank_weighting!r} is not one of {list(RANK_WEIGHTINGS)}")
    total = float(sum(w for w, _ in contributions))
    if total <= 0:
        raise ValueError("no contribution has a positive weight")
    weights = [w / total for w, _ in contributions]
    names = contributions[0][1].keys()
    pairs = lora_pairs(names)
    in_pairs = {n for pair in pairs.values() for n in pair}
    result = {}
    for name in names:
        if name not in in_pairs:
            summed = sum(w * np.asarray(c[name], dtype=np.float32) for w, (_, c) in zip(weights, contributions))
            result[name] = np.asarray(summed, dtype=np.float32)
    for a_name, b_name in pairs.values():
        source = reference if reference is not None else contributions[0][1]
        rank = np.shape(source[a_name])[0]
        site_ranks = [np.shape(c[a_name])[0] for _, c in contributions]
        if rank_weighting == "supplied" and len(set(site_ranks)) > 1:
            result[b_name], result[a_name] = _per_component(contributions, weights, site_ranks, reference, a_name, b_name, rank)
            continue
        b_factors, a_factors, factor_weights = [], [], []
        for w, (_, c) in zip(weights, contributions):
            b_factors.append(c[b_name])
            a_factors.append(c[a_name])
            factor_weights.append(w)
            site_rank = np.shape(c[a_name])[0]
            if reference is not None and site_rank < rank:  # + w (M_g - T_i(M_g))
                start = at_rank({a_name: reference[a_name], b_name: reference[b_name]}, site_rank)
                b_factors += [reference[b_name], start[b_name]]
                a_factors += [reference[a_name], start[a_name]]
                factor_weights += [w, -w]
        result[b_name], result[a_name] = refactorize(b_factors, a_factors, factor_weights, rank)
    return result


def _per_component(
    contributions: list[tuple[float, dict[str, Any]]],
    weights: list[float],
    site_ranks: list[int],
    reference: dict[str, Any] | None,
    a_name: str,
    b_name: str,
    rank: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``rank_weighting = supplied`` for one LoRA pair: (B, A) of rank ``rank`` (see ``aggregate_exact``)."""
    scale = component_weights(site_ranks, weights, rank)  # (sites, rank)
    b_factors = [np.asarray(c[b_name], np.float32) * scale[i, : site_ranks[i]] for i, (_, c) in enumerate(contributions)]
    a_factors = [np.asarray(c[a_name], np.float32) for _, c in contributions]
    factor_weights = [1.0] * len(contributions)
    top = max(site_ranks)
    if top < rank:  # components no site holds: the global model's, kept
        if reference is None:
            raise ValueError(f"{a_name}: no site holds rank components above {top}, and there is no global model to keep them from")
        start = at_rank({a_name: reference[a_name], b_name: reference[b_name]}, top)
        b_factors += [reference[b_name], start[b_name]]
        a_factors += [reference[a_name], start[a_name]]
        factor_weights += [1.0, -1.0]
    return refactorize(b_factors, a_factors, factor_weights, rank)


def rank_bands(site_ranks: list[int] | set[int], rank: int) -> list[tuple[int, int]]:
    """Rank bands [lo, hi) of components: from 0 to each distinct site rank, then to ``rank``; e.g. ranks 4, 8, 16
    of a rank-32 job: (0, 4), (4, 8), (8, 16), (16, 32). With every site at one rank, the powers of two from 4
    below it bound the bands (rank 32: the same four bands), so a federation at one rank is the reference
    a mixed-rank one is compared with."""
    if len(set(site_ranks)) <= 1:
        site_ranks = [2**k for k in range(2, max(2, rank.bit_length()))]
    edges = sorted({0, rank, *(r for r in site_ranks if 0 < r < rank)})
    return list(itertools.pairwise(edges))


def update_band_energy(before: dict[str, np.ndarray], after: dict[str, np.ndarray], bands: list[tuple[int, int]]) -> np.ndarray:
    """The share of the global update's energy in each rank band: (len(bands),), summing to 1 (0s when nothing changed).

    The update of each LoRA pair is dM = B' A' - B A (``before`` -> ``after``); its squared singular values,
    largest first, are its energy by component. Band [lo, hi) holds the energy of components lo..hi-1, summed
    over the pairs (the last band also takes anything past its end). Sites at mixed ranks whose upper bands
    learn as fast as the rest give shares like those of a federation whose sites all train at the job's rank;
    shares that pile into the first band are the "rank collapse" of heterogeneous-rank LoRA.
    """
    energy, scale = np.zeros(len(bands)), 0.0
    for a_name, b_name in lora_pairs(after).values():
        sigma = product_singular_values([after[b_name], before[b_name]], [after[a_name], before[a_name]], [1.0, -1.0])
        squared = sigma**2
        for j, (lo, hi) in enumerate(bands):
            energy[j] += squared[lo : (hi if j < len(bands) - 1 else None)].sum()
        scale += float(np.sum(np.asarray(after[b_name], np.float64) ** 2)) * float(np.sum(np.asarray(after[a_name], np.float64) ** 2))
    total = energy.sum()
    # Below float64 rounding of the model's own size (an upper bound of ||B'A'||^2): no update, not a spectrum of noise.
    return energy / total if total > 1e-24 * scale else np.zeros(len(bands))


@dataclass(frozen=True)
class ChangeLayout:
    """Where each exchanged tensor's change sits in a site's change vector.

    Attributes:
        entries: (key, shape) in order; key is a tensor name, or a LoRA pair's (A name, B name).
    """

    entries: tuple[Any, ...]

    @classmethod
    def of(cls, names: Iterable[str]) -> ChangeLayout:
        pairs = sorted(lora_pairs(names).values())
        in_pairs = {n for pair in pairs for n in pair}
        return cls(tuple([(n, None) for n in sorted(names) if n not in in_pairs] + [(pair, None) for pair in pairs]))

    @staticmethod
    def _value(weights: dict[str, Any], key: str | tuple[str, str]) -> np.ndarray:
        if isinstance(key, tuple):
            a, b = key
            return np.asarray(weights[b], np.float64) @ np.asarray(weights[a], np.float64)  # (out, in): B·A
        return np.asarray(weights[key], np.float64)

    def flatten(self, weights: dict[str, Any], reference: dict[str, Any]) -> np.ndarray:
        """One site's change against ``reference`` as a vector (float64)."""
        return np.concatenate([(self._value(weights, k) - self._value(reference, k)).ravel() for k, _ in self.entries])

    def apply(self, reference: dict[str, Any], change: np.ndarray) -> dict[str, np.ndarray]:
        """``reference`` moved by ``change``: tensors added, LoRA products re-factorised to their rank (float32)."""
        result, offset = {}, 0
        for key, _ in self.entries:
            base = self._value(reference, key)
            moved = base + change[offset : offset + base.size].reshape(base.shape)
            offset += base.size
            if isinstance(key, tuple):
                a, b = key
                rank = np.shape(reference[a])[0]
                result[b], result[a] = factorize(moved, rank)
            else:
                result[key] = moved.astype(np.float32)
        if offset != change.size:
            raise ValueError(f"a change of {change.size} values does not fit the model's {offset}")
        return result


def starting_point(model: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The global model as the site of ``model`` received it: at its LoRA rank (``site_ranks``), else as it is."""
    rank = payload_rank(model)
    return reference if rank is None else at_rank(reference, rank)


def coordinate_median(changes: np.ndarray) -> np.ndarray:
    """(sites, d) -> (d,): the median of every coordinate over sites."""
    return np.median(changes, axis=0)


def trimmed_mean(changes: np.ndarray, fraction: float) -> np.ndarray:
    """(sites, d) -> (d,): per coordinate, the mean after removing the floor(fraction x sites) largest and smallest values."""
    cut = int(np.floor(fraction * changes.shape[0]))
    if 2 * cut >= changes.shape[0]:
        raise ValueError(f"trim_fraction {fraction} leaves no value of {changes.shape[0]} sites")
    ordered = np.sort(changes, axis=0)
    return ordered[cut : changes.shape[0] - cut].mean(axis=0)


@dataclass(frozen=True)
class FedSecaVote:
    """What FedSECA decided in one round (for logs and tests).

    Attributes:
        weights: (sites,) each site's vote weight (concordance-ratio reputation, >= 0).
        concordance: (sites, sites) the concordance ratios c_ij.
        elected_sign: (d,) -1, 0 or +1 per coordinate.
        kept: (sites,) how many coordinates of each site entered the mean.
    """

    weights: np.ndarray
    concordance: np.ndarray
    elected_sign: np.ndarray
    kept: np.ndarray


def concordance_ratios(signs: np.ndarray) -> np.ndarray:
    """(sites, d) signs in {-1, 0, 1} -> (sites, sites): (concordant - discordant) / (concordant + discordant), 0 where no overlap."""
    positive, negative = (signs > 0).astype(np.float32), (signs < 0).astype(np.float32)  # sites x sites products, not sites^2 x d
    concordant = (positive @ positive.T + negative @ negative.T).astype(np.float64)
    discordant = (positive @ negative.T + negative @ positive.T).astype(np.float64)
    total = concordant + discordant
    return np.divide(concordant - discordant, total, out=np.zeros(total.shape), where=total > 0)


def fedseca(changes: np.ndarray, sparsity: float = DEFAULT["fedseca_sparsity"]) -> tuple[np.ndarray, FedSecaVote]:
    """(sites, d) -> the aggregated change (d,) and the vote; see the module docstring for the four steps."""
    checked_value("fedseca_sparsity", sparsity)
    bound = np.median(np.abs(changes), axis=0)
    clipped = np.clip(changes, -bound, bound)  # 1. clip
    if sparsity > 0:
        threshold = np.quantile(np.abs(clipped), sparsity, axis=1, keepdims=True)  # 2. sparsify per site
        clipped = np.where(np.abs(clipped) < threshold, 0.0, clipped)
    signs = np.sign(clipped)
    concordance = concordance_ratios(signs)  # 3. CRISE
    weights = np.clip(np.sign(concordance).mean(axis=1), 0.0, None)
    elected = np.sign((weights[:, None] * signs).sum(axis=0))
    agrees = clipped * elected > 0  # 4. RoCA
    count = agrees.sum(axis=0)
    change = np.divide((clipped * agrees).sum(axis=0), count, out=np.zeros(changes.shape[1]), where=count > 0)
    return change, FedSecaVote(weights, concordance, elected, agrees.sum(axis=1))


def robust_change(aggregation: str, changes: np.ndarray, trim_fraction: float, sparsity: float) -> tuple[np.ndarray, str]:
    """The aggregated change of ``changes`` (sites, d) under ``aggregation``, and a one-line account for the log."""
    if aggregation == "median":
        return coordinate_median(changes), "coordinate-wise median"
    if aggregation == "trimmed_mean":
        cut = int(np.floor(trim_fraction * changes.shape[0]))
        return trimmed_mean(changes, trim_fraction), f"coordinate-wise trimmed mean ({cut} cut at each end)"
    if aggregation == "fedseca":
        change, vote = fedseca(changes, sparsity)
        return change, (
            f"FedSECA: vote weights {np.round(vote.weights, 3).tolist()}, coordinates kept per site {vote.kept.tolist()} "
            f"of {changes.shape[1]}"
        )
    raise ValueError(f"aggregation {aggregation!r} is not one of {list(ROBUST_AGGREGATIONS)}")


def aggregate_robust(
    aggregation: str,
    contributions: list[dict[str, np.ndarray]],
    reference: dict[str, np.ndarray],
    trim_fraction: float = DEFAULT["trim_fraction"],
    sparsity: float = DEFAULT["fedseca_sparsity"],
) -> tuple[dict[str, np.ndarray], str]:
    """The new global model from the sites' models ``contributions`` and the global model ``reference`` they started from."""
    layout = ChangeLayout.of(reference)
    changes = np.stack([layout.flatten(c, starting_point(c, reference)) for c in contributions])
    change, account = robust_change(aggregation, changes, trim_fraction, sparsity)
    return layout.apply(reference, change), account
