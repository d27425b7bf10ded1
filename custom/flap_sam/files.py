"""Writing result files atomically: a reader (or a crash) never sees half a file.

Each write goes to a temporary file beside the target, named uniquely per process and call (two
writers of the same file never share it), and replaces the target in one ``os.replace``.
Every module of the package writes its files through these helpers.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable

import numpy as np


def write_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(temporary_path)``, then move the temporary file onto ``path``; on failure nothing is left behind.

    Args:
        suffix: ending of the temporary name, for writers that choose a format by it (``.nii.gz``).
    """
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str, newline: str | None = None) -> None:
    """``text`` into ``path`` (UTF-8), atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)

    write_atomically(path, write)


def _plain(value):
    """JSON for the values results hold besides plain ones: numpy numbers and arrays; anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str, content, sort_keys: bool = False) -> None:
    """``content`` as indented JSON into ``path``, atomically (numpy numbers become plain numbers)."""
    write_text(path, json.dumps(content, indent=2, sort_keys=sort_keys, default=_plain))


def save_torch(obj, path: str) -> None:
    """``torch.save(obj)`` into ``path``, atomically."""
    import torch

    write_atomically(path, lambda tmp: torch.save(obj, tmp))
