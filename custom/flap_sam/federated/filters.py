"""What leaves a site: only the preset's tensors (and plain numbers), fail-closed, and, from a site that fails,
one word of a fixed vocabulary.

The full one-line error of a failed site names the file or setting at fault; it stays in the site's own log
(``log.txt``, at warning level, so FLARE's error-log streaming and ``show_errors`` never carry it), because
file names of patient data can identify patients: the result carries only its kind (``SITE_ERROR_KINDS``).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from flap_sam.errors import CheckpointError, DataError
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.factory import exchange_schema
from flap_sam.model.lora import factor_rank, factor_shape_at_rank

_WEIGHT_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)


def lower_rank_shape(name: str, shape: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    """Whether ``shape`` is the schema's LoRA factor ``expected`` at a lower rank (a site of ``site_ranks``)."""
    rank, job_rank = factor_rank(name, shape), factor_rank(name, expected)
    return rank is not None and job_rank is not None and 1 <= rank < job_rank and shape == factor_shape_at_rank(name, expected, rank)


def is_number(value: object) -> bool:
    """A plain real number (Python or numpy), the only metric value that may leave a site."""
    return isinstance(value, (numbers.Real, np.integer, np.floating))


def _plain(value: object) -> bool:
    """Plain metadata: numbers, strings, None, or lists/dicts of them (no arrays, no bytes)."""
    if value is None or isinstance(value, str) or is_number(value):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


SITE_ERROR_HEADER = "flap_sam_site_error"
SITE_ERROR_KINDS = {
    "data": "it could not start: its data failed the start-up checks",
    "checkpoint": "it could not start: its SAM checkpoint cannot be used",
    "settings": "it could not start: its settings are invalid",
    "base": "it could not start: it built another SAM base than the server (checkpoint settings differ)",
    "internal": "it could not start: an unexpected error at start-up",
    "diverged": "its local training diverged (non-finite weights): it sent no update this round",
    # A site's own policy (flap_sam.federated.site_policy) refused to let a result out.
    "policy_tensors": "its site policy refused the result: it holds tensors the site's allowed presets do not exchange",
    "policy_bytes": "its site policy refused the result: it is larger than the site's byte ceiling",
    "policy_kind": "its site policy refused the result: a kind of result this scope does not send",
}


class BaseMismatchError(ValueError):
    """The site built another SAM base than the server's (see ``flap_sam.model.adapter_file``)."""


def site_error_kind(error: Exception) -> str:
    """The category of a start-up error that may leave the site."""
    if isinstance(error, DataError):
        return "data"
    if isinstance(error, CheckpointError):
        return "checkpoint"
    if isinstance(error, BaseMismatchError):
        return "base"
    if isinstance(error, ValueError):
        return "settings"
    return "internal"


class PresetResultFilter(Filter):
    """Lets through a task result only what the preset allows.

    * WEIGHTS / WEIGHT_DIFF: tensors whose name AND shape are in the preset's exchange schema
      (computed from the same model settings as the Learner's, see ``exchange_schema``; a LoRA
      factor may have a lower rank than the job's, as at a site of ``site_ranks``: it is smaller);
      anything else is removed and logged as an error.
    * METRICS: numeric values only.
    * any other payload (not a DXO, another data kind): the result is replaced by an empty
      error reply; nothing of it leaves the site.
    * metadata: plain numbers/strings only.
    * the reply is a new Shareable holding only that DXO (and, for an error, its return code and
      error kind): headers the learner or another component set never leave with it.

    Args:
        spec: the job's model and task settings (the ``job_spec`` block; see ``JobSpec``).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = JobSpec.from_settings(spec).model
        self.schema = exchange_schema(self.spec)

    def _blocked(self, fl_ctx: FLContext, reason: str) -> Shareable:
        self.log_error(fl_ctx, f"result blocked by preset '{self.spec.preset}': {reason}")
        return make_reply(ReturnCode.EXECUTION_RESULT_ERROR)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        rc = shareable.get_return_code(ReturnCode.OK)
        if rc != ReturnCode.OK:
            # An error result carries its code and, for a site that could not start, one word of
            # a fixed vocabulary saying what failed; nothing else (messages name files).
            reply = make_reply(rc)
            kind = shareable.get_header(SITE_ERROR_HEADER)
            if kind in SITE_ERROR_KINDS:
                reply.set_header(SITE_ERROR_HEADER, kind)
            return reply
        try:
            dxo = from_shareable(shareable)
        except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            return self._blocked(fl_ctx, "the result is not a DXO")
        if dxo.data_kind in _WEIGHT_KINDS:
            data = self._filter_weights(dxo.data or {}, fl_ctx)
        elif dxo.data_kind == DataKind.METRICS:
            data = {}
            for key, value in (dxo.data or {}).items():
                if isinstance(key, str) and is_number(value):
                    data[key] = value
                else:
                    self.log_error(fl_ctx, f"blocked metric {key!r}: not a plain number")
        else:
            return self._blocked(fl_ctx, f"data kind {dxo.data_kind} is not allowed to leave the site")
        meta = {}
        for key, value in (dxo.meta or {}).items():
            if _plain(value):
                meta[key] = value
            else:
                self.log_error(fl_ctx, f"blocked result metadata {key!r}: not a plain value")
        # A fresh reply: none of the incoming object's other headers or properties leaves the site.
        return DXO(dxo.data_kind, data=data, meta=meta).to_shareable()

    def _filter_weights(self, weights: dict[str, Any], fl_ctx: FLContext) -> dict[str, Any]:
        kept = {}
        for name, value in weights.items():
            shape = tuple(np.shape(value))
            if name not in self.schema:
                self.log_error(fl_ctx, f"blocked tensor {name}: not exchanged under preset '{self.spec.preset}'")
            elif shape != self.schema[name] and not lower_rank_shape(name, shape, self.schema[name]):
                self.log_error(fl_ctx, f"blocked tensor {name}: shape {shape}, preset schema says {self.schema[name]}")
            else:
                kept[name] = value
        return kept
