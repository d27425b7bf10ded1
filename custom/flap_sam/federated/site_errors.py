"""What a site that could not start may tell the server: one word of a fixed vocabulary.

The full one-line error names the file or setting at fault; it stays in the site's log,
because file names of patient data can identify patients.
"""

from __future__ import annotations

from flap_sam.data.errors import DataError
from flap_sam.model.sam_builder import CheckpointError

SITE_ERROR_HEADER = "flap_sam_site_error"
SITE_ERROR_KINDS = {
    "data": "its data failed the start-up checks",
    "checkpoint": "its SAM checkpoint cannot be used",
    "settings": "its settings are invalid",
    "internal": "an unexpected error at start-up",
}


def site_error_kind(error: Exception) -> str:
    """The category of a start-up error that may leave the site."""
    if isinstance(error, DataError):
        return "data"
    if isinstance(error, CheckpointError):
        return "checkpoint"
    if isinstance(error, ValueError):
        return "settings"
    return "internal"
