"""The site's own say on what leaves it: a result filter a hospital puts in its ``local/privacy.json``.

FLARE runs the filters of the job's privacy scope, as the site defines them in its
``privacy.json``, on every result before the job's own filters (``task_result_filters`` of a
scope, direction ``out``). The job cannot remove or change them, and with the site's
allow-list and no bring-your-own-code (``flap_sam.provisioning``) it cannot bring code that
runs before them either. ``SitePolicyFilter`` is the one this project puts in every scope:

* the tensors of a WEIGHTS / WEIGHT_DIFF result must each be exchanged by one of the presets
  the site allows, judged by the site's installed copy of the preset rule
  (``Preset.selects``), not by the job's settings;
* their size as handed over (before transport encoding, which only shrinks them) must not pass
  the site's byte ceiling per result (one round's update);
* a scope may require model differences (``update_kinds = ["WEIGHT_DIFF"]``), e.g. where the
  scope's next filter is FLARE's PercentilePrivacy, which acts only on differences;
* metrics must be plain numbers; any other result is refused.

A refused result does not leave: the site sends an error reply with one word of the fixed
vocabulary of ``flap_sam.federated.filters`` (the server logs ``site S failed task train: its site policy
refused the result: ...``); the full reason, naming the tensor, stays in the site's log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from flap_sam.federated.filters import SITE_ERROR_HEADER, is_number
from flap_sam.model.presets import get_preset
from flap_sam.provisioning.policy_files import UPDATE_KINDS, check_site_filter


class PolicyRefusal(Exception):
    """A result the site's policy does not let out: ``kind`` (a ``SITE_ERROR_KINDS`` key) and the full reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class SitePolicyFilter(Filter):
    """Site-owned result filter: at most the allowed presets' tensors, at most ``max_bytes_per_result``.

    Args:
        presets: names of the presets whose tensors may leave the site (``flap``, ``pdec_ft``, ...);
            a tensor may leave when one of them exchanges it.
        max_bytes_per_result: ceiling on the bytes of one result's tensors as the site's learner
            hands them over (float32); 0: no ceiling.
        update_kinds: data kinds a model result may have (``WEIGHTS``, ``WEIGHT_DIFF``).

    Raises:
        ValueError: an unknown preset or data kind, or a negative ceiling (when the site starts the job).
    """

    def __init__(
        self, presets: Sequence[str] = ("flap",), max_bytes_per_result: int = 0, update_kinds: Sequence[str] = UPDATE_KINDS
    ) -> None:
        super().__init__()
        check_site_filter(presets, max_bytes_per_result, update_kinds)
        self.presets = [get_preset(name) for name in presets]
        self.max_bytes = max_bytes_per_result
        self.update_kinds = tuple(update_kinds)

    @property
    def preset_names(self) -> str:
        return ", ".join(p.name for p in self.presets)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        rc = shareable.get_return_code(ReturnCode.OK)
        if rc != ReturnCode.OK:
            return shareable  # an error reply carries no data; the job's preset filter strips it further
        try:
            self.check(shareable)
        except PolicyRefusal as refusal:
            task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "?")
            self.log_error(fl_ctx, f"site policy refused the result of task {task}: {refusal}")
            reply = make_reply(ReturnCode.EXECUTION_RESULT_ERROR)
            reply.set_header(SITE_ERROR_HEADER, refusal.kind)
            return reply
        return shareable

    def check(self, shareable: Shareable) -> None:
        """Raises ``PolicyRefusal`` when ``shareable`` (an OK result) may not leave under this policy."""
        try:
            dxo = from_shareable(shareable)
        except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            raise PolicyRefusal("policy_kind", "the result is not a DXO") from None
        if dxo.data_kind == DataKind.METRICS:
            for key, value in (dxo.data or {}).items():
                if not is_number(value):
                    raise PolicyRefusal("policy_kind", f"metric {key!r} is not a plain number")
            return
        if dxo.data_kind not in self.update_kinds:
            kind = getattr(dxo.data_kind, "value", dxo.data_kind)  # FLARE's DataKind members print as DataKind.X
            raise PolicyRefusal("policy_kind", f"data kind {kind}; this scope sends only {list(self.update_kinds)}")
        total = 0
        for name, value in (dxo.data or {}).items():
            if not any(p.selects(name) for p in self.presets):
                raise PolicyRefusal("policy_tensors", f"tensor {name} is not exchanged by the allowed preset(s) {self.preset_names}")
            total += np.asarray(value).nbytes
        if self.max_bytes and total > self.max_bytes:
            raise PolicyRefusal("policy_bytes", f"{total:,} bytes of tensors, above the ceiling of {self.max_bytes:,} bytes per result")
