"""Sites at their own LoRA rank (``site_ranks``): the server learns each site's rank and sends it that rank.

A site below the job's rank r trains and sends LoRA pairs of its rank r_i (its Learner lowers the
adapter after building the job's model). The server's aggregator takes them in B·A space
(``aggregate_exact``, ``aggregate_robust``) and keeps the global adapter at rank r; it records each
site's rank from the site's result (``record_site_rank``), and ``SiteRankFilter``, the first of the
server's task data filters, sends each site the best rank-r_i approximation of every global pair
(``at_rank``), so what a site receives follows its rank too. Until a site's first result the server
does not know its rank: that first model goes at the job's rank and the site lowers it on arrival,
by the same ``at_rank``.
"""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flap_sam.model.lora import at_rank, payload_rank

SITE_RANKS_PROP = "flap_sam.site_ranks"  # a sticky FLContext property on the server: {site: LoRA rank}


def record_site_rank(fl_ctx: FLContext, site: str, rank: int) -> None:
    """Remember the LoRA rank ``site`` sent (visible to every later FLContext of the run)."""
    ranks = dict(fl_ctx.get_prop(SITE_RANKS_PROP) or {})
    if ranks.get(site) != rank:
        ranks[site] = rank
        fl_ctx.set_prop(SITE_RANKS_PROP, ranks, private=True, sticky=True)


def recorded_site_ranks(fl_ctx: FLContext) -> dict[str, int]:
    """``{site: LoRA rank}`` of every site that has sent a model in this run."""
    return dict(fl_ctx.get_prop(SITE_RANKS_PROP) or {})


class SiteRankFilter(Filter):
    """Server task data filter: a global model goes to a site at the LoRA rank that site sends.

    FLARE runs the server's task data filters once per site, on that site's copy of the task, with
    the site as the peer of ``fl_ctx``. A model for a site whose rank is below the global model's is
    replaced by a new payload with every LoRA pair at its rank (``at_rank``: B (out, r_i) with
    orthonormal columns, A (r_i, in)); anything else passes unchanged.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer is not None else None
        rank = recorded_site_ranks(fl_ctx).get(site) if site is not None else None
        if rank is None:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            return shareable
        if dxo.data_kind != DataKind.WEIGHTS or not dxo.data or (payload_rank(dxo.data) or 0) <= rank:
            return shareable
        # A new DXO on this site's copy of the task: the other sites' copies share the original data.
        return DXO(DataKind.WEIGHTS, data=at_rank(dxo.data, rank), meta=dict(dxo.meta or {})).update_shareable(shareable)
