"""What a site that fails may tell the server: one word of a fixed vocabulary.

The full one-line error names the file or setting at fault; it stays in the site's own log
(``log.txt``, at warning level, so FLARE's error-log streaming and ``show_errors`` never carry
it), because file names of patient data can identify patients.
"""

from __future__ import annotations

from flap_sam.errors import CheckpointError, DataError

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
