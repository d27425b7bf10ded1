"""The job's aggregator as NVFlare components: ``FlapSamAggregator`` checks every update, weighs the sites
and keeps the base fingerprint; the rules it runs (``flap_sam.federated.aggregation_rules``)
are FLARE ``Assembler``s in FLARE's ``CollectAndAssembleAggregator`` (or NVFlare's in-time weighted average).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.aggregators.assembler import Assembler
from nvflare.app_common.aggregators.collect_and_assemble_aggregator import CollectAndAssembleAggregator
from nvflare.app_common.app_constant import AppConstants

from flap_sam.federated.aggregation_rules import aggregate_exact, aggregate_robust, rank_bands, update_band_energy
from flap_sam.federated.contributions import contribution_problem
from flap_sam.federated.site_ranks import record_site_rank
from flap_sam.files import RANK_BANDS_FILE, write_json
from flap_sam.jobs.settings import check_aggregation_weights
from flap_sam.model.adapter_file import FINGERPRINT_KEY
from flap_sam.model.lora import at_rank, payload_rank
from flap_sam.training.schema import checked_value, package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()


def global_weights(fl_ctx: FLContext) -> dict[str, Any] | None:
    """The server's current global model ``{name: array}`` (what the sites of this round started from)."""
    model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    return model.get(ModelLearnableKey.WEIGHTS) if isinstance(model, dict) else None


class CollectAndAssemble(CollectAndAssembleAggregator):
    """FLARE's collect-and-assemble aggregator around an assembler of this module (not a job component of its own).

    FLARE's aggregator collects one WEIGHTS result per site and round (refusing error replies, other data
    kinds, results of another round and a site's second result) and hands the collection to the
    assembler at ``aggregate``; it looks the assembler up by id only when it has none, so it gets it here.
    """

    def __init__(self, assembler: WeightedAssembler) -> None:
        super().__init__(assembler_id="")
        self.assembler = assembler

    def reset(self, fl_ctx: FLContext) -> None:
        self.assembler.reset()


class WeightedAssembler(Assembler):
    """FLARE ``Assembler``: a site's WEIGHTS with its weight, local steps times its ``aggregation_weights``
    entry (1.0 if absent); ``assemble`` combines the round's collection, in site order."""

    def __init__(self, aggregation_weights: dict[str, float] | None = None) -> None:
        super().__init__(data_kind=DataKind.WEIGHTS)
        self.aggregation_weights = aggregation_weights if aggregation_weights is not None else {}

    def get_model_params(self, dxo: DXO) -> dict[str, Any]:
        return {"steps": float(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1) or 1), "weights": dict(dxo.data)}

    def assemble(self, data: dict[str, dict[str, Any]], fl_ctx: FLContext) -> DXO:
        contributions = {
            site: (params["steps"] * float(self.aggregation_weights.get(site, 1.0)), params["weights"])
            for site, params in sorted(data.items())
        }
        result, account = self.combine(contributions, fl_ctx)
        self.log_info(fl_ctx, f"round {fl_ctx.get_prop(AppConstants.CURRENT_ROUND)}: {account}; sites {', '.join(contributions)}")
        return DXO(DataKind.WEIGHTS, data=result)

    def combine(self, contributions: dict[str, tuple[float, dict[str, Any]]], fl_ctx: FLContext) -> tuple[dict[str, Any], str]:
        """The new global model from ``{site: (weight, model)}``, and what was done, for the log."""
        raise NotImplementedError


class ExactLoRAAssembler(WeightedAssembler):
    """``aggregate_exact`` of the round's results (the paper's aggregation).

    Each round's global update is measured by rank band (``update_band_energy``; ``rank_bands``: at the
    sites' ranks, or at powers of two when they share one) and kept in the server's app folder
    (``RANK_BANDS_FILE``: ``{"bands": [[lo, hi], ...], "rounds": {round: [share, ...]}}``); logged
    with sites at mixed LoRA ranks.
    """

    def __init__(self, aggregation_weights: dict[str, float] | None = None, rank_weighting: str = DEFAULT["rank_weighting"]) -> None:
        super().__init__(aggregation_weights)
        self.rank_weighting = rank_weighting

    def combine(self, contributions: dict[str, tuple[float, dict[str, Any]]], fl_ctx: FLContext) -> tuple[dict[str, Any], str]:
        ranks = {site: payload_rank(model) for site, (_, model) in contributions.items()}
        reference = global_weights(fl_ctx)
        result = aggregate_exact(list(contributions.values()), reference, self.rank_weighting)
        account = "exact LoRA aggregation"
        job_rank = payload_rank(reference) if reference is not None else None  # presets without LoRA have no bands
        site_ranks = {rank for rank in ranks.values() if rank is not None}
        bands = self._record_bands(reference, result, site_ranks, job_rank, fl_ctx) if reference is not None and job_rank else ""
        if len(set(ranks.values())) > 1:
            account += f" of sites at LoRA ranks {ranks} (rank_weighting {self.rank_weighting})" + (f"; {bands}" if bands else "")
        return result, account

    @staticmethod
    def _record_bands(reference: dict[str, Any], result: dict[str, Any], site_ranks: set[int], job_rank: int, fl_ctx: FLContext) -> str:
        bands = rank_bands(site_ranks, job_rank)
        shares = update_band_energy(reference, result, bands)
        engine = fl_ctx.get_engine()
        if engine is not None:  # a job's server (an aggregator driven by hand has no app folder)
            path = os.path.join(engine.get_workspace().get_app_dir(fl_ctx.get_job_id()), RANK_BANDS_FILE)
            record: dict[str, Any] = {"bands": [list(b) for b in bands], "rounds": {}}
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
            record["rounds"][str(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))] = [round(float(x), 6) for x in shares]
            write_json(path, record)
        return "the update's energy per rank band " + ", ".join(f"{lo + 1}-{hi} {x:.1%}" for (lo, hi), x in zip(bands, shares))


class RobustAssembler(WeightedAssembler):
    """``aggregate_robust`` (``median`` | ``trimmed_mean`` | ``fedseca``) of the round's results against the
    global model they started from; one vote per site (``flap_sam.federated.aggregation_rules``)."""

    def __init__(
        self, aggregation: str, trim_fraction: float = DEFAULT["trim_fraction"], fedseca_sparsity: float = DEFAULT["fedseca_sparsity"]
    ) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.trim_fraction = checked_value("trim_fraction", trim_fraction)
        self.sparsity = checked_value("fedseca_sparsity", fedseca_sparsity)

    def combine(self, contributions: dict[str, tuple[float, dict[str, Any]]], fl_ctx: FLContext) -> tuple[dict[str, Any], str]:
        reference = global_weights(fl_ctx)
        if reference is None:
            raise RuntimeError("robust aggregation needs the global model the sites started from")
        return aggregate_robust(
            self.aggregation, [model for _, model in contributions.values()], reference, self.trim_fraction, self.sparsity
        )


class FlapSamAggregator(Aggregator):
    """The job's aggregator, chosen by the ``aggregation`` setting, behind a check of every update.

    * ``lora_exact`` (the paper): ``ExactLoRAAssembler`` in FLARE's collect-and-assemble aggregator (LoRA
      pairs re-factorised exactly, the rest averaged; weighted by local steps, i.e. by the site's data share
      at one epoch per round);
    * ``average``: NVFlare's ``InTimeAccumulateWeightedAggregator`` (WEIGHTS, same weights);
    * ``fedseca``, ``median``, ``trimmed_mean``: ``RobustAssembler`` there too (Byzantine-robust, on each site's change).

    The attack simulation is not here: measurement jobs name its subclass
    (``flap_sam.measurement.byzantine.ByzantineAggregator``), which no provisioned kit allows.

    Each update is first checked against the current global model (``contribution_problem``):
    a bad one is left out with an error that names the site and the reason. When no update of
    a round is usable, the global model stays as it was (and the log says so).
    """

    def __init__(
        self,
        aggregation: str = DEFAULT["aggregation"],
        aggregation_weights: dict[str, Any] | None = None,
        trim_fraction: float = DEFAULT["trim_fraction"],
        fedseca_sparsity: float = DEFAULT["fedseca_sparsity"],
        rank_weighting: str = DEFAULT["rank_weighting"],
    ) -> None:
        super().__init__()
        checked_value("aggregation", aggregation)
        self.aggregation = aggregation
        # One dict, shared with the assembler that uses it and completed with 1.0 for every site of the
        # run at its start: each site's weight is explicit (FLARE warns about every site it has to guess).
        self.weights = check_aggregation_weights(aggregation_weights)
        self.impl: Aggregator | None
        if aggregation == "average":
            self.impl = None  # NVFlare's aggregator takes the weights when it is made: at the run's start, when the sites are known
        elif aggregation == "lora_exact":
            self.impl = CollectAndAssemble(ExactLoRAAssembler(self.weights, checked_value("rank_weighting", rank_weighting)))
        else:
            self.impl = CollectAndAssemble(RobustAssembler(aggregation, trim_fraction, fedseca_sparsity))
        self._lock = threading.Lock()
        self._accepted = 0  # updates accepted this round

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            for client in engine.get_clients() if engine is not None else []:
                self.weights.setdefault(client.name, 1.0)
            self.log_info(fl_ctx, f"aggregation {self.aggregation}, site weights (x training steps): {self.weights}")
            if self.aggregation == "average":
                from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator

                self.impl = InTimeAccumulateWeightedAggregator(
                    expected_data_kind="WEIGHTS", aggregation_weights=dict(self.weights), weigh_by_local_iter=True
                )
        if self.impl is not None:
            self.impl.handle_event(event_type, fl_ctx)  # NVFlare's aggregator sets itself up at START_RUN

    @staticmethod
    def _keep_base_fingerprint(result: Shareable, fl_ctx: FLContext) -> Shareable:
        """The new global model carries the server's base fingerprint on (FLARE's generator takes the
        aggregate's meta as the global model's meta)."""
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        base = ((model.get(ModelLearnableKey.META) or {}) if isinstance(model, dict) else {}).get(FINGERPRINT_KEY)
        if base is None:
            return result
        dxo = from_shareable(result)
        dxo.set_meta_prop(FINGERPRINT_KEY, base)
        return dxo.update_shareable(result)

    def _lower_ranks_refusal(self) -> str | None:
        """Why this job's aggregation cannot take a site at a LoRA rank below the job's; None when it can."""
        if self.aggregation == "average":
            return "aggregation = average averages A and B one by one and needs every site at the job's rank (lora_exact takes site_ranks)"
        return None

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        contributor = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
        checked = self._checked_update(contributor, shareable, fl_ctx)
        if checked is None:
            return False
        with self._lock:
            self.weights.setdefault(contributor, 1.0)  # a site that joined after the start
        return self._accept_checked(contributor, checked, fl_ctx)

    def _checked_update(self, contributor: str, shareable: Shareable, fl_ctx: FLContext) -> Shareable | None:
        """The update as WEIGHTS of the global model's layout, or None (logged) when it is left out."""
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        problem: str | None
        if shareable.get_return_code(ReturnCode.OK) == ReturnCode.OK:
            reference = global_weights(fl_ctx)
            try:
                dxo = from_shareable(shareable)
            except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
                problem = "it is not a DXO"
            else:
                if reference is None:
                    problem = "the server has no global model to check it against"
                elif dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
                    problem = f"it is {dxo.data_kind}, not WEIGHTS or WEIGHT_DIFF"
                else:
                    problem = contribution_problem(
                        dxo.data, dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND), reference, self._lower_ranks_refusal()
                    )
            if problem or reference is None:
                self.log_error(fl_ctx, f"round {current_round}: leaving out the update of {contributor}: {problem}")
                return None
            rank = payload_rank(dxo.data)
            if rank is not None:
                record_site_rank(fl_ctx, contributor, rank)
            if dxo.data_kind == DataKind.WEIGHT_DIFF:  # a privacy-filtered update: applied to the global model it came from
                start = at_rank(reference, rank) if rank is not None else reference  # what a site at a lower rank received
                dxo.data = {name: (np.asarray(start[name], dtype=np.float32) + diff).astype(np.float32) for name, diff in dxo.data.items()}
                dxo.data_kind = DataKind.WEIGHTS
                shareable = dxo.update_shareable(shareable)
        return shareable

    def _accept_checked(self, contributor: str, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Hand a checked update to the aggregation rule (FLARE's aggregator refuses a site's second one)."""
        accepted = self._rule().accept(shareable, fl_ctx)
        if accepted:
            with self._lock:
                self._accepted += 1
        return accepted

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        with self._lock:
            accepted, self._accepted = self._accepted, 0
        if accepted == 0:
            current = global_weights(fl_ctx)
            self.log_warning(
                fl_ctx,
                f"round {fl_ctx.get_prop(AppConstants.CURRENT_ROUND)}: no usable update from any site; the global model stays as it was",
            )
            self._rule().reset(fl_ctx)
            result = DXO(DataKind.WEIGHTS, data={k: np.array(v, copy=True) for k, v in (current or {}).items()}).to_shareable()
        else:
            result = self._rule().aggregate(fl_ctx)
        return self._keep_base_fingerprint(result, fl_ctx)

    def reset(self, fl_ctx: FLContext) -> None:
        with self._lock:
            self._accepted = 0
        if self.impl is not None:
            self.impl.reset(fl_ctx)

    def _rule(self) -> Aggregator:
        """The aggregation rule's FLARE aggregator (``average``'s is made at the run's start)."""
        if self.impl is None:
            raise RuntimeError(f"aggregation {self.aggregation}: an update arrived before the run started")
        return self.impl
