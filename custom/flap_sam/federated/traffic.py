"""Measured traffic: the bytes of every task payload as FLARE serialises it.

``TrafficMeter`` is a filter placed where a payload is final: last before sending, first
after receiving. It measures ``len(fobs.dumps(shareable))``, the FOBS serialisation that
FLARE's transport carries (message framing and TLS overhead not included), so compression,
metadata and headers are all counted.

* On a site it logs ``round r: train sent N bytes`` and streams ``bytes_sent`` /
  ``bytes_received`` per round to TensorBoard (through the job's ``analytic_sender``).
* On the server it records bytes per site, task and round and rewrites
  ``traffic_summary.json`` in the server's app folder (next to ``FL_global_model.pt``) after
  every payload: per-site/per-round numbers, totals, the raw float32 tensor bytes and the
  ratio raw / wire (the compression ratio).
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from typing import Any

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs

from flap_sam.files import TRAFFIC_FILE, write_json

SUMMARY_FILE = TRAFFIC_FILE


def serialized_size(shareable: Shareable) -> int:
    """Bytes of the FOBS serialisation of a Shareable (what FLARE sends)."""
    return len(fobs.dumps(shareable))


def raw_float32_bytes(shareable: Shareable) -> int:
    """Bytes the payload's tensors would take as plain float32 (0 for metrics and errors)."""
    try:
        dxo = from_shareable(shareable)
    except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        return 0
    if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) or not dxo.data:
        return 0
    return int(sum(np.size(v) for v in dxo.data.values()) * 4)


def payload_round(shareable: Shareable, fl_ctx: FLContext) -> int:
    """The FL round of a payload: task header, else the result's DXO meta, else the context's round."""
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if value is None:
        try:
            value = from_shareable(shareable).get_meta_prop(AppConstants.CURRENT_ROUND)
        except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            value = None
    if value is None:
        value = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
    return int(value or 0)


class TrafficMeter(Filter):
    """Measure what this side sends or receives (see the module docstring).

    Args:
        side: ``server`` or ``site``.
        direction: ``sent`` or ``received``, as seen from that side.
        analytic_sender_id: a site's TensorBoard writer component.
    """

    def __init__(self, side: str = "site", direction: str = "sent", analytic_sender_id: str = "analytic_sender") -> None:
        super().__init__()
        if side not in ("server", "site"):
            raise ValueError(f"side must be 'server' or 'site', got '{side}'")
        if direction not in ("sent", "received"):
            raise ValueError(f"direction must be 'sent' or 'received', got '{direction}'")
        self.side, self.direction, self.analytic_sender_id = side, direction, analytic_sender_id

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        size, raw = serialized_size(shareable), raw_float32_bytes(shareable)
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "?")
        round_ = payload_round(shareable, fl_ctx)
        if self.side == "server":
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer else "?"
            path = os.path.join(fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id()), SUMMARY_FILE)
            add_to_summary(path, site, task, round_, self.direction, size, raw)
        else:
            self.log_info(fl_ctx, f"round {round_}: {task} {self.direction} {size:,} bytes (as float32: {raw:,} bytes)")
            writer = fl_ctx.get_engine().get_component(self.analytic_sender_id) if task == "train" else None
            if writer is not None:
                writer.add_scalar(f"bytes_{self.direction}", float(size), global_step=round_)
        return shareable


_FILE_LOCK = threading.Lock()


def add_to_summary(path: str, site: str, task: str, round_: int, direction: str, size: int, raw: int) -> None:
    """Add one payload to the server's summary file and recompute the totals (atomic rewrite).

    Layout: ``{"sites": {site: {task: {round: {"sent", "received", "raw_float32_sent", ...}}}},
    "totals": {"sent", "received", "raw_float32_sent", "raw_float32_received",
    "compression_sent", "compression_received"}}`` (bytes; compression = raw float32 / wire).
    """
    with _FILE_LOCK:
        summary: dict[str, Any] = {"sites": {}, "totals": {}}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        entry = summary["sites"].setdefault(site, {}).setdefault(task, {}).setdefault(str(round_), {})
        entry[direction] = entry.get(direction, 0) + size
        entry[f"raw_float32_{direction}"] = entry.get(f"raw_float32_{direction}", 0) + raw
        totals: dict[str, Any] = defaultdict(int)
        for tasks in summary["sites"].values():
            for rounds in tasks.values():
                for values in rounds.values():
                    for key, value in values.items():
                        totals[key] += value
        for name in ("sent", "received"):
            if totals.get(name):
                totals[f"compression_{name}"] = round(totals[f"raw_float32_{name}"] / totals[name], 4)
        summary["totals"] = dict(totals)
        write_json(path, summary, sort_keys=True)
