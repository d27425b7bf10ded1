"""Privacy on the update (setting ``privacy``), with FLARE's own filters, before transport encoding.

FLARE's ``PercentilePrivacy`` and ``SVTPrivacy`` work on a model difference. With ``privacy``
set, the Learner sends its update as a WEIGHT_DIFF (its trained tensors minus the global ones
it received), this filter passes it through FLARE's filter, and the server adds it back to the
global model before aggregation (``FlapSamAggregator``). The filter runs after the preset
filter (only the preset's tensors reach it) and before the transport codec.

* ``percentile`` (Shokri & Shmatikov, CCS '15): sends only the differences whose magnitude per
  local step is above the ``privacy_percentile``-th percentile, each clipped to
  ``percentile_gamma`` per step. It hides small changes; it gives no formal guarantee.
* ``svt`` (sparse vector technique, Lyu et al.): sends a ``svt_fraction`` of the differences,
  chosen and released with Laplace noise; ``svt_epsilon`` is the budget of the selection,
  spent again every round (the release noise is set by ``svt_noise_var``). The guarantee is
  per round and per site; over R rounds the budgets add up.

Neither protects the data against a site's own operators, nor the global model against what
it memorised: they limit what one update tells the server and whoever sees the traffic.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flap_sam.training.schema import checked_value, package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()


class UpdatePrivacyFilter(DXOFilter):
    """Site result filter: FLARE's privacy filter of the chosen ``privacy`` mode on WEIGHT_DIFF updates.

    Every other result (validation metrics) passes unchanged (``DXOFilter`` skips other data kinds).
    The filtered differences are float32 again.
    """

    def __init__(
        self,
        privacy: str = DEFAULT["privacy"],
        privacy_percentile: float = DEFAULT["privacy_percentile"],
        percentile_gamma: float = DEFAULT["percentile_gamma"],
        svt_fraction: float = DEFAULT["svt_fraction"],
        svt_epsilon: float = DEFAULT["svt_epsilon"],
        svt_noise_var: float = DEFAULT["svt_noise_var"],
        svt_gamma: float = DEFAULT["svt_gamma"],
        svt_tau: float = DEFAULT["svt_tau"],
    ) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=None)
        for name, value in (
            ("privacy", privacy),
            ("privacy_percentile", privacy_percentile),
            ("percentile_gamma", percentile_gamma),
            ("svt_fraction", svt_fraction),
            ("svt_epsilon", svt_epsilon),
            ("svt_noise_var", svt_noise_var),
            ("svt_gamma", svt_gamma),
            ("svt_tau", svt_tau),
        ):
            checked_value(name, value)
        self.privacy = privacy
        self.impl = None
        if privacy == "percentile":
            from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

            self.impl = PercentilePrivacy(
                percentile=float(privacy_percentile), gamma=float(percentile_gamma), data_kinds=[DataKind.WEIGHT_DIFF]
            )
        elif privacy == "svt":
            from nvflare.app_common.filters.svt_privacy import SVTPrivacy

            self.impl = SVTPrivacy(
                fraction=float(svt_fraction),
                epsilon=float(svt_epsilon),
                noise_var=float(svt_noise_var),
                gamma=float(svt_gamma),
                tau=float(svt_tau),
                data_kinds=[DataKind.WEIGHT_DIFF],
            )

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if self.impl is not None:
            self.impl.handle_event(event_type, fl_ctx)  # SVT resets its privacy accountant at the start of a run

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if self.impl is None:
            return None  # privacy = none: not filtered
        filtered = self.impl.process_dxo(dxo, shareable, fl_ctx) or dxo
        filtered.data = {name: np.asarray(value, dtype=np.float32) for name, value in filtered.data.items()}
        return filtered
