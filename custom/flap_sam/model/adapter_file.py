"""The persisted adapter file and the fingerprint of the base model it belongs to.

The adapter file is what the server keeps and ``flap-sam train`` writes:
``{"model": {name: tensor}, "meta_props": {...}}`` (FLARE's ``PTFileModelPersistor`` layout), the
preset's exchanged tensors and the run's meta (finished rounds, base fingerprint).

The base fingerprint lets a federation check it starts from one SAM. Every party builds SAM itself:
the server for its adapter model, each site for training. If one loaded the official checkpoint and
another did not (or another file), the first global model would silently overwrite pretrained tensors
with other ones. The fingerprint names no file: it holds where the weights came from (``checkpoint``
or ``random``) and two SHA-256 digests, of the frozen tensors (parameters and buffers) and of the
initial values of the exchanged ones. It travels in the global model's DXO meta and the adapter
file's ``meta_props`` (``FINGERPRINT_KEY``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

FINGERPRINT_KEY = "flap_sam_base"  # DXO meta of the global model, persisted adapter's meta_props
SOURCES = ("checkpoint", "random")


def _digest(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda item: item[0]):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def weights_digest(weights: dict[str, Any]) -> str:
    """A short SHA-256 of a set of named tensors or arrays (values and shapes, as float32): equal digests, equal weights.
    The server logs the global adapter's when a job starts from a file, a site the one it receives each round."""
    return _digest((name, torch.as_tensor(value)) for name, value in weights.items())


def base_fingerprint(model: nn.Module, exchanged: Iterable[str], from_checkpoint: bool) -> dict[str, str]:
    """``{"source": "checkpoint"|"random", "frozen": hex, "exchanged": hex}`` of a freshly built model.

    Args:
        model: the adapted SAM right after it was built (before any training or loading of a global model).
        exchanged: names of the tensors the preset exchanges.
        from_checkpoint: whether SAM was loaded from a checkpoint.
    """
    exchanged = set(exchanged)
    state = model.state_dict(keep_vars=False)
    return {
        "source": "checkpoint" if from_checkpoint else "random",
        "frozen": _digest((n, t) for n, t in state.items() if n not in exchanged),
        "exchanged": _digest((n, t) for n, t in state.items() if n in exchanged),
    }


def base_mismatch(server: dict[str, Any] | None, site: dict[str, Any]) -> str | None:
    """None when both built the same base, else one line saying which side has which (no file names)."""
    if not isinstance(server, dict) or server.get("source") not in SOURCES:
        return "the server sent no fingerprint of its SAM base: server and sites must run the same flap-sam version"
    if server == site:
        return None
    if server["source"] != site["source"]:
        if server["source"] == "random":
            return (
                "the server built SAM from random weights, this site from its checkpoint: set server_checkpoint "
                "to the same official SAM file at the server"
            )
        return (
            "the server built SAM from its checkpoint, this site from random weights: set checkpoint to the "
            "same official SAM file at this site"
        )
    if server["source"] == "checkpoint":
        return (
            "the server's SAM checkpoint differs from this site's: use the same official SAM file "
            "(checkpoint, server_checkpoint) everywhere"
        )
    return (
        "the server's random SAM initialisation differs from this site's: run the same flap-sam, torch and "
        "segment-anything versions everywhere"
    )


def read_adapter_file(path: str, allow_state_dict: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A persisted adapter file's tensors and its ``meta_props``.

    Args:
        allow_state_dict: also take a plain ``{name: tensor}`` file (an exported adapter); its meta is {}.

    Raises:
        ValueError: one line naming the file when it is missing, cannot be read or is not an adapter.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except Exception as error:  # truncated, corrupt, not a torch file: torch raises many kinds  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        raise ValueError(f"{path}: cannot be read as a persisted adapter ({type(error).__name__})") from None
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        return saved["model"], dict(saved.get("meta_props") or {})
    if allow_state_dict and isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return saved, {}
    raise ValueError(f"{path}: not a persisted adapter (no 'model' tensors)")
