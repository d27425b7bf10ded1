"""The training batches of a round: a MONAI DataLoader over the site's 2.5D stacks.

Stacks are cut, scaled and augmented in ``workers`` background processes (setting
``data_workers``) while the model trains, with pinned memory when the model is on a GPU, so
the accelerator does not wait for the CPU. Every round is reproducible from its seed alone:
the sampler draws from a generator seeded by the round, and MONAI's loader seeds the
augmentations from the same generator (in the main process, or per worker from the worker's
seed). The same seed and worker count give the same batches; another worker count gives
other (equally valid) augmentations.
"""

from __future__ import annotations

import os

import torch
from monai.data import DataLoader

from flap_sam.data.stacks import SliceStackDataset, foreground_sampler
from flap_sam.training.device import auto_or_count

MAX_AUTO_WORKERS = 4


def resolve_data_workers(setting: str | int, device: torch.device) -> int:
    """``auto`` -> 0 on CPU (its cores already run the model), else up to 4 workers, leaving a core for training."""
    workers = auto_or_count("data_workers", setting, "processes", minimum=0)
    if workers is None:
        return 0 if device.type == "cpu" else max(0, min(MAX_AUTO_WORKERS, (os.cpu_count() or 1) - 1))
    return workers


def round_batches(dataset: SliceStackDataset, batch_size: int, num_steps: int, foreground_fraction: float, seed: int,
                  workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """``num_steps`` batches of ``{"image": (B, 5, S, S) float32, "label": (B, 5, S, S) int64}``, reproducible from ``seed``."""
    sampler = foreground_sampler(dataset, foreground_fraction, num_steps * batch_size, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
