"""The final cross-site evaluation, with its results printed in the admin console (``show_stats JOB server``).

FLARE's ``CrossSiteModelEval`` hands its formatter the paths of the metric DXOs it has
received so far, one per (site, model). Each holds only aggregate numbers (Dice per class,
number of volumes), so the text names sites and models, never a file of a site.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DataKind, from_file
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.formatter import Formatter
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval


def format_scores(scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """``{site: {model: metrics}}`` -> one line per site and model, e.g. ``site-1 | SRV_FL_global_model | dice 0.812 | ...``."""
    if not scores:
        return "no cross-site results yet"
    lines = []
    for site in sorted(scores):
        for model in sorted(scores[site]):
            metrics = scores[site][model]
            cells = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items())]
            lines.append(" | ".join([site, model, *cells]))
    return "\n".join(lines)


class CrossSiteDiceFormatter(Formatter):
    """``Formatter`` for ``CrossSiteModelEval``: each site's Dice of each global model, one line each."""

    def format(self, fl_ctx: FLContext) -> str:
        received = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT, {}) or {}
        scores: dict[str, dict[str, dict[str, Any]]] = {}
        for site, models in received.items():
            for model, path in (models or {}).items():
                try:
                    dxo = from_file(path)
                except Exception:  # a result still being written: shown on the next call  # noqa: BLE001, S112
                    continue
                if dxo.data_kind == DataKind.METRICS:
                    scores.setdefault(site, {})[model] = dict(dxo.data)
        return format_scores(scores)


class CrossSiteEvaluation(CrossSiteModelEval):
    """FLARE's ``CrossSiteModelEval`` with its formatter in place from the start of the run.

    ``CrossSiteModelEval`` looks its formatter up only when its own workflow starts, after the
    training rounds; every ``show_stats`` during those rounds then logs "No formatter
    provided", and ``show_errors`` fills with that warning. Looking it up at the start of the
    run keeps ``show_errors`` for real problems.
    """

    _formatter: Formatter | None  # CrossSiteModelEval's own attributes (see docs/architecture.md#what-the-project-relies-on-in-flare)
    _formatter_id: str

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN and self._formatter_id and self._formatter is None:
            formatter = fl_ctx.get_engine().get_component(self._formatter_id)
            if isinstance(formatter, Formatter):
                self._formatter = formatter
        super().handle_event(event_type, fl_ctx)
