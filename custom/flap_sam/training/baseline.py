"""Baselines without FLARE: the federation's local trainer, recipe and preset on one site's data
(the "local" baseline) or on several sites' data at once (the "pooled" baseline).

Each site's volumes are prepared as that site prepares them (its own CT statistics), then the
training volumes of all given sites form one dataset. Training runs ``epochs`` epochs (default:
the federation's rounds x local epochs) with the same schedule over all steps; after every
epoch the adapter is scored on the validation volumes, as the Learner scores each round. The
adapter is written in the server's format (``{"model": {name: tensor}, "meta_props": {...}}``),
so ``flap-sam evaluate`` / ``infer`` read it; ``train_log.json`` holds one entry per epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset, build_augmentation
from flap_sam.files import BEST_MODEL_FILE, GLOBAL_MODEL_FILE, save_torch, write_json
from flap_sam.model.factory import ModelSpec, exchanged_state
from flap_sam.training.local_trainer import LocalTrainer, evaluate_volumes
from flap_sam.training.settings import TrainingSettings

BASELINE_FILE = "baseline.json"
LOG_FILE = "train_log.json"
ADAPTER_FILE = GLOBAL_MODEL_FILE  # the server's names, so tools that read a run's adapter read a baseline's
BEST_ADAPTER_FILE = BEST_MODEL_FILE


@dataclass
class BaselineResult:
    """What ``train_baseline`` measured: per-epoch log, best validation Dice and the final test Dice."""

    log: list[dict[str, Any]]
    best_val_dice: float
    test_dice: float
    test_split: str


def _save_adapter(model: nn.Module, spec: ModelSpec, path: str, meta: dict[str, Any]) -> None:
    save_torch({"model": exchanged_state(model, spec.preset_obj), "meta_props": meta}, path)


def _progress(epoch: int, epochs: int, loss: float, lr: float, dice: float, seconds: float) -> str:
    done = int(20 * epoch / epochs)
    return f"epoch {epoch}/{epochs} [{'#' * done}{'.' * (20 - done)}] loss {loss:.4f} lr {lr:.2e} val Dice {dice:.4f} ({seconds:.0f} s)"


def train_baseline(
    model: nn.Module,
    spec: ModelSpec,
    sites: dict[str, SiteData],
    settings: TrainingSettings,
    epochs: int,
    out: str,
    device: torch.device,
    kind: str,
    data_workers: int = 0,
    say: Callable[[str], object] = print,
    cpu_bf16: bool = False,
    cpu_return_memory: bool = False,
    loss_weights: list[float] | None = None,
) -> BaselineResult:
    """Train on the union of ``sites``' training volumes for ``epochs`` epochs; write the adapters and logs into ``out``.

    An epoch is capped by ``max_steps_per_round``, as a round of the federation is.

    Args:
        sites: site name -> its prepared data.
        kind: ``local`` (one site) or ``pooled`` (several), recorded in ``baseline.json``.
        loss_weights: each class's weight in the loss, background first (``TrainingSettings.loss_weights``).
    """
    os.makedirs(out, exist_ok=True)
    train = [v for data in sites.values() for v in data.train]
    validation = [v for data in sites.values() for v in data.validation]
    has_test = all(data.test for data in sites.values())
    test = [v for data in sites.values() for v in (data.test if has_test else data.validation)]
    augment = build_augmentation(spec.image_size, settings.acquisition_augment) if settings.augment else None
    dataset = SliceStackDataset(train, augment, seed=settings.seed, slice_channels=spec.slice_channels)
    trainer = LocalTrainer(model, dataset, settings, device, data_workers, cpu_bf16, cpu_return_memory, loss_weights)
    steps = settings.capped(trainer.steps_per_epoch())
    total = epochs * steps
    log, best = [], -1.0
    amp = trainer.amp
    for epoch in range(epochs):
        started = time.perf_counter()
        done, loss = trainer.train(steps, first_step=epoch * steps, total_steps=total, round_seed=settings.round_seed(epoch))
        dice = float(
            evaluate_volumes(
                model, validation, spec.num_classes, device, amp=amp, mode=settings.round_inference, **settings.refinements()
            ).mean()
        )
        lr = trainer.optimizer.param_groups[0]["lr"]
        log.append({"epoch": epoch, "steps": done, "train_loss": loss, "lr": lr, "val_dice": dice})
        say(_progress(epoch + 1, epochs, loss, lr, dice, time.perf_counter() - started))
        if not math.isfinite(loss):
            raise ValueError(f"epoch {epoch}: training diverged (loss {loss}); lower lr")
        if dice > best:
            best = dice
            _save_adapter(model, spec, os.path.join(out, BEST_ADAPTER_FILE), {"baseline": kind, "epoch": epoch})
        write_json(os.path.join(out, LOG_FILE), log)
    _save_adapter(model, spec, os.path.join(out, ADAPTER_FILE), {"baseline": kind, "epoch": epochs - 1})
    test_dice = float(
        evaluate_volumes(model, test, spec.num_classes, device, amp=amp, mode=settings.final_inference, **settings.refinements()).mean()
    )
    split = "test" if has_test else "validation"
    write_json(
        os.path.join(out, BASELINE_FILE),
        {
            "kind": kind,
            "sites": sorted(sites),
            "preset": spec.preset,
            "model": f"{spec.model_type}/{spec.image_size}",
            "epochs": epochs,
            "steps_per_epoch": steps,
            "best_val_dice": best,
            "test_dice": test_dice,
            "test_split": split,
            "test_volumes": len(test),
            "bytes_transmitted": 0,
        },
    )
    say(
        f"{kind} baseline of {', '.join(sorted(sites))}: final {split} Dice {test_dice:.4f} ({len(test)} volumes), "
        f"best validation Dice {best:.4f}; wrote {out}"
    )
    return BaselineResult(log, best, test_dice, split)
