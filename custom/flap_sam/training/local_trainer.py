"""Local training of the adapted SAM on one site's 2.5D stacks (no FLARE here): a round's batches, the steps,
and the recipe's learning-rate schedule over the whole federation (linear warm-up, then poly decay, fitted to its steps).

A round's batches come from a MONAI DataLoader over the site's 2.5D stacks (``round_batches``).
Stacks are cut, scaled and augmented in ``workers`` background processes (setting
``data_workers``) while the model trains, with pinned memory when the model is on a GPU, so
the accelerator does not wait for the CPU. Every round is reproducible from its seed alone:
the sampler draws from a generator seeded by the round, and MONAI's loader seeds the
augmentations from the same generator (in the main process, or per worker from the worker's
seed). The same seed and worker count give the same batches; another worker count gives
other (equally valid) augmentations.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss
from torch import nn

from flap_sam.data.stacks import PreparedVolume, SliceStackDataset, foreground_sampler, stacks_to_images
from flap_sam.training.device import auto_or_count, release_freed_tensors_on_cpu
from flap_sam.training.inference import dice_per_class, segment_volume
from flap_sam.training.schedule import warmup_poly_factor
from flap_sam.training.schema import package_defaults
from flap_sam.training.settings import TrainingSettings

# Each default is the one the schema declares (the Learner passes the site's value anyway).
DEFAULT = package_defaults()


MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class RoundProgress:
    """How far a round's local training is (a site's log and the server's progress view).

    Attributes:
        round: the federation's round.
        steps_done / steps: optimiser steps done and planned this round.
        mean_loss: mean training loss of the steps done.
        seconds_per_step: wall seconds a step so far this round (batches included).
    """

    round: int
    steps_done: int
    steps: int
    mean_loss: float
    seconds_per_step: float

    @property
    def seconds_left(self) -> float:
        return (self.steps - self.steps_done) * self.seconds_per_step

    def describe(self) -> str:
        return (
            f"round {self.round}: {self.steps_done}/{self.steps} steps, loss {self.mean_loss:.4f}, "
            f"{self.seconds_per_step:.1f} s a step, about {self.seconds_left:.0f} s left"
        )


def resolve_data_workers(setting: str | int, device: torch.device) -> int:
    """``auto`` -> 0 on CPU (its cores already run the model), else up to 4 workers, leaving a core for training."""
    workers = auto_or_count("data_workers", setting, "processes", minimum=0)
    if workers is None:
        return 0 if device.type == "cpu" else max(0, min(MAX_AUTO_WORKERS, (os.cpu_count() or 1) - 1))
    return workers


def round_batches(
    dataset: SliceStackDataset,
    batch_size: int,
    num_steps: int,
    foreground_fraction: float,
    seed: int,
    workers: int = 0,
    pin_memory: bool = False,
    sampling: str = "slice",
) -> DataLoader:
    """``num_steps`` batches of ``{"image": (B, 5 x C, S, S) float32, "label": (B, 5, S, S) int64}``, reproducible from
    ``seed``; ``sampling``: ``foreground_sampler``'s."""
    sampler = foreground_sampler(dataset, foreground_fraction, num_steps * batch_size, seed=seed, sampling=sampling)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


class LocalTrainer:
    """Owns the optimiser and the loss for one site's model; trains a number of steps per round.

    Args:
        settings: the recipe (lr, weight decay, batch size, schedule, sampling, amp, FedProx mu).
        data_workers: processes that build the batches beside training (0: in the training process).
        cpu_bf16: the site's ``cpu_bf16`` setting (bf16 autocast on a CPU with native bf16, with ``amp``).
        cpu_return_memory: the site's ``cpu_return_memory`` setting: on a CPU, freed activations go
            back to the OS at once (``release_freed_tensors_on_cpu``).
        loss_weights: each class's weight in the loss, background first ((K + 1,); ``TrainingSettings.loss_weights``).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: SliceStackDataset,
        settings: TrainingSettings,
        device: torch.device,
        data_workers: int = 0,
        cpu_bf16: bool = False,
        cpu_return_memory: bool = False,
        loss_weights: list[float] | None = None,
    ) -> None:
        if device.type == "cpu" and cpu_return_memory:
            release_freed_tensors_on_cpu()
        self.model = model
        self.amp = settings.uses_amp(device, cpu_bf16)
        self.data_workers = data_workers
        self.label_permutation: torch.Tensor | None = None  # class c trains as label_permutation[c] (attack simulation only)
        self.dataset = dataset
        self.settings = settings
        self.device = device
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._anchor: list[torch.Tensor] | None = None  # FedProx: the trainable tensors at the round's start
        self.optimizer = torch.optim.AdamW(self._trainable, lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
        weight = None if loss_weights is None else torch.tensor(loss_weights, dtype=torch.float32, device=device)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.2, lambda_dice=0.8, weight=weight)
        self.global_step = 0  # the federation's step: set by ``train`` from the round, advanced by ``step``

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.dataset) / self.settings.batch_size))

    def _batches(self, num_steps: int, round_seed: int) -> Iterator[dict[str, torch.Tensor]]:
        s = self.settings
        return iter(
            round_batches(
                self.dataset,
                s.batch_size,
                num_steps,
                s.foreground_fraction,
                round_seed,
                workers=self.data_workers,
                pin_memory=self.device.type == "cuda",
                sampling=s.foreground_sampling,
            )
        )

    def start_round(self) -> None:
        """Start local training from the just received global tensors.

        AdamW's moments are cleared: they describe the site's own previous weights, which the
        global model has replaced (after ``lora_exact`` even the factorisation of B and A is new,
        so old moments would point in meaningless directions). A fresh start each round also makes
        a site's training the same whether its process ran all along or restarted. The current
        trainable tensors become FedProx's anchor, if FedProx is on.
        """
        self.optimizer.state.clear()
        self._anchor = [p.detach().clone() for p in self._trainable] if self.settings.fedprox_mu > 0 else None

    def step(self, stacks: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on a batch; returns the loss.

        Args:
            stacks: (B, 5 x C, S, S) float images in [0, 1] (C planes per slice); labels: (B, 5, S, S) class indices.
        """
        amp = self.amp
        images = stacks_to_images(stacks.to(self.device, non_blocking=True), stacks.shape[1] // labels.shape[1])  # (B*5, 3, S, S)
        if self.label_permutation is not None:
            labels = self.label_permutation[labels.long()]
        labels = labels.to(self.device, non_blocking=True).reshape(-1, 1, *labels.shape[-2:])  # (B*5, 1, S, S)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = self.model(images)
        loss = self.loss_fn(logits.float(), labels)
        if self._anchor is not None:
            # Only the trainable tensors are anchored (NVFlare's PTFedProxLoss would need a copy of all of SAM).
            loss = loss + 0.5 * self.settings.fedprox_mu * sum(((p - a) ** 2).sum() for p, a in zip(self._trainable, self._anchor))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        return float(loss.detach())

    def train(
        self,
        num_steps: int,
        first_step: int,
        total_steps: int,
        round_seed: int,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[RoundProgress], None] | None = None,
        progress_every_s: float = DEFAULT["progress_every_s"],
        current_round: int = 0,
    ) -> tuple[int, float]:
        """Run ``num_steps`` optimiser steps from global step ``first_step``; the lr follows the
        schedule over the federation's ``total_steps`` (see ``federation_steps``).

        ``on_progress`` gets the round's ``RoundProgress`` after a step once ``progress_every_s`` seconds
        have passed since the round started or since its last call (never after the round's last step).

        Returns (steps done, mean loss).
        """
        self.model.train()
        self.start_round()
        self.global_step = first_step
        losses = []
        started = last_report = time.monotonic()
        for batch in self._batches(num_steps, round_seed):
            if should_stop():
                break
            factor = warmup_poly_factor(self.global_step, self.settings.warmup_steps, total_steps, self.settings.poly_power)
            for group in self.optimizer.param_groups:
                group["lr"] = self.settings.lr * factor
            losses.append(self.step(batch["image"], batch["label"]))
            now = time.monotonic()
            if on_progress is not None and len(losses) < num_steps and now - last_report >= progress_every_s:
                last_report = now
                on_progress(RoundProgress(current_round, len(losses), num_steps, float(np.mean(losses)), (now - started) / len(losses)))
        return len(losses), float(np.mean(losses)) if losses else float("nan")


def evaluate_volumes(
    model: nn.Module,
    volumes: Iterable[PreparedVolume],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    mode: str = "overlap",
    flip_tta: bool = False,
    min_component_mm3: float = 0.0,
) -> np.ndarray:
    """Dice of every labelled volume at full resolution: (num_volumes, num_classes); ``mode``, ``flip_tta``,
    ``min_component_mm3``: see ``flap_sam.training.inference``.

    Each volume's full-resolution label is read from its file only while the volume is scored.
    """
    scores = [
        dice_per_class(
            segment_volume(model, v, device, amp=amp, mode=mode, flip_tta=flip_tta, min_component_mm3=min_component_mm3),
            v.source.load_label(),
            num_classes,
            device,
        )
        for v in volumes
    ]
    return np.stack(scores) if scores else np.zeros((0, num_classes))
