"""The persisted adapter file: what the server keeps and ``flap-sam train`` writes.

``{"model": {name: tensor}, "meta_props": {...}}`` (FLARE's ``PTFileModelPersistor`` layout):
the preset's exchanged tensors and the run's meta (finished rounds, base fingerprint).
"""

from __future__ import annotations

import torch


def read_adapter_file(path: str, allow_state_dict: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
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
    except Exception as error:  # truncated, corrupt, not a torch file: torch raises many kinds
        raise ValueError(f"{path}: cannot be read as a persisted adapter ({type(error).__name__})") from None
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        return saved["model"], dict(saved.get("meta_props") or {})
    if allow_state_dict and isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return saved, {}
    raise ValueError(f"{path}: not a persisted adapter (no 'model' tensors)")
