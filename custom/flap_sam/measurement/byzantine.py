"""The job's aggregator and learner with Byzantine sites (``flap_sam.measurement.attacks``): measurement jobs only.

A job written with ``attack`` other than ``none`` includes the package's ``attack_simulation.conf``,
which swaps the server's aggregator for ``ByzantineAggregator`` and the sites' learner for
``ByzantineLearner``; every other job names only the production components, which know nothing of
attacks. Both refuse to run outside FLARE's simulator and a POC deployment (``attack_refusal``), and
a provisioned kit's allow-list does not list this package at all.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flap_sam.federated.learner import FlapSamLearner
from flap_sam.federated.lora_aggregation import FlapSamAggregator, global_weights
from flap_sam.measurement.attacks import ATTACK_META_KEY, attack_contributions, attack_refusal, flipped_labels
from flap_sam.training.settings import AttackSettings


class ByzantineAggregator(FlapSamAggregator):
    """``FlapSamAggregator`` with the ``attack_simulation`` block's server-side attacks.

    Every checked update is held until the round's last; then the attacking sites' are replaced by
    crafted ones (from the honest changes, as the omniscient attacks of the literature assume) and all
    go to the aggregation rule as if they had arrived so. Each round says so in the server's log and
    the aggregate's meta records the attack (``flap_sam_attack``, kept in the persisted adapter).
    """

    def __init__(self, *args: object, attack: dict[str, Any] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.attack = AttackSettings.from_settings(attack)
        self._held: dict[str, Shareable] = {}  # the round's checked updates, until its last
        self._held_lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN and self.attack.active:
            refusal = attack_refusal(fl_ctx)
            if refusal:
                self.system_panic(refusal, fl_ctx)
                return
            self.log_warning(fl_ctx, f"{self.attack.describe()}: every round of this job is attacked (measuring only)")
        super().handle_event(event_type, fl_ctx)

    def _lower_ranks_refusal(self) -> str | None:
        if self.attack.active:
            return "the attack simulation crafts updates of the job's rank"
        return super()._lower_ranks_refusal()

    def _accept_checked(self, contributor: str, shareable: Shareable, fl_ctx: FLContext) -> bool:
        if not self.attack.on_server:
            return super()._accept_checked(contributor, shareable, fl_ctx)
        with self._held_lock:
            if contributor in self._held:
                return False
            self._held[contributor] = shareable
            return True

    def _release_held(self, fl_ctx: FLContext) -> None:
        """The attacking sites' updates replaced by crafted ones, then all handed to the aggregation rule."""
        with self._held_lock:
            held, self._held = self._held, {}
        models = {site: from_shareable(s).data for site, s in held.items()}
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reference = global_weights(fl_ctx)
        attacked = attack_contributions(self.attack, models, reference, seed=int(current_round or 0)) if reference is not None else models
        for site, shareable in held.items():
            if site in self.attack.sites:
                dxo = from_shareable(shareable)
                dxo.data = attacked[site]
                shareable = dxo.update_shareable(shareable)
            super()._accept_checked(site, shareable, fl_ctx)
        self.log_warning(fl_ctx, f"round {current_round}: {self.attack.describe()} (sites in this round: {', '.join(sorted(held))})")

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        if self.attack.on_server:
            self._release_held(fl_ctx)
        result = super().aggregate(fl_ctx)
        if not self.attack.active:
            return result
        dxo = from_shareable(result)
        dxo.set_meta_prop(ATTACK_META_KEY, self.attack.record())
        return dxo.update_shareable(result)

    def reset(self, fl_ctx: FLContext) -> None:
        with self._held_lock:
            self._held = {}
        super().reset(fl_ctx)


class ByzantineLearner(FlapSamLearner):
    """``FlapSamLearner`` whose site, when the ``attack_simulation`` block names it for ``label_flip``,
    trains on permuted classes (``flipped_labels``) and says so in its log every round."""

    def __init__(self, *args: object, attack: dict[str, Any] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.attack = AttackSettings.from_settings(attack)

    def _setup(self, fl_ctx: FLContext) -> None:
        super()._setup(fl_ctx)
        if self.attack.attack == "label_flip" and self.site_name in self.attack.sites:
            refusal = attack_refusal(fl_ctx)
            if refusal:
                raise ValueError(refusal)
            self.trainer.label_permutation = torch.as_tensor(flipped_labels(self.spec.num_classes))
            self.log_warning(
                fl_ctx, f"{self.attack.describe()}: this site trains on permuted classes {self.trainer.label_permutation.tolist()}"
            )

    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        result = super().train(shareable, fl_ctx, abort_signal)
        if self.model is not None and self.trainer.label_permutation is not None:
            self.log_warning(fl_ctx, f"round {fl_ctx.get_prop(AppConstants.CURRENT_ROUND)}: {self.attack.describe()}")
        return result
