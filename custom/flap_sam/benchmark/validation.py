"""Validation inference modes compared: Dice and seconds per volume, ``overlap`` against ``centre``.

    python -m flap_sam.benchmark.validation [--train-steps 40]

Dice: pretrained LiteMedSAM (64 px, the demo's model and learning rate) is trained briefly on the
kits demo data of site-1, then the held-out validation and test volumes of site-1 and site-2 are
segmented in both modes.
Speed: one demo validation volume is segmented in both modes by the model being benchmarked
(default ViT-B at 224 px, random weights: speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset
from flap_sam.jobs.settings import training_settings
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.device import pick_device
from flap_sam.training.local_trainer import LocalTrainer, evaluate_volumes

MODES = ("overlap", "centre")


def compare_modes(model, volumes, num_classes: int, device: torch.device) -> dict[str, dict]:
    """Per mode: mean Dice over volumes and classes, per-volume Dice, and seconds per volume."""
    out = {}
    for mode in MODES:
        started = time.perf_counter()
        scores = evaluate_volumes(model, volumes, num_classes, device, mode=mode)
        out[mode] = {
            "dice": float(scores.mean()),
            "s_per_volume": (time.perf_counter() - started) / len(volumes),
            "per_volume": scores.mean(axis=1).tolist(),
        }
    return out


DICE_MODEL = ModelSpec("lite_medsam", 64, 2, "flap", 32)  # the shipped demo's pretrained base


def dice_agreement(train_steps: int, max_volumes: int | None = None) -> dict:
    """Dice of both modes for pretrained LiteMedSAM trained briefly on site-1, on the held-out kits demo volumes of two
    sites (the first ``max_volumes`` of them when given: a quicker, noisier comparison)."""
    profile = get_profile("kits")
    sites = [SiteData.load(profile, "demo", site, DICE_MODEL.image_size, profile.num_classes) for site in ("site-1", "site-2")]
    volumes = [v for data in sites for v in data.validation + data.test][:max_volumes]
    torch.manual_seed(0)
    model = build_model(DICE_MODEL)
    trainer = LocalTrainer(
        model,
        SliceStackDataset(sites[0].train, None, seed=0),
        training_settings(lr=2e-3, batch_size=2, warmup_steps=2, poly_power=1.0),
        torch.device("cpu"),
    )
    trainer.train(train_steps, first_step=0, total_steps=train_steps, round_seed=0)
    result = compare_modes(model, volumes, profile.num_classes, torch.device("cpu"))
    diffs = np.abs(np.array(result["overlap"]["per_volume"]) - np.array(result["centre"]["per_volume"]))
    return {
        "model": f"{DICE_MODEL.model_type}/{DICE_MODEL.image_size}",
        "train_steps": train_steps,
        "volumes": len(volumes),
        "dice_overlap": result["overlap"]["dice"],
        "dice_single": result["centre"]["dice"],
        "max_volume_abs_diff": float(diffs.max()),
    }


def mode_timing(spec: ModelSpec) -> dict:
    """Seconds per demo validation volume of both modes for ``spec`` (random weights) on this machine's device."""
    profile = get_profile("kits")
    volumes = SiteData.load(profile, "demo", "site-1", spec.image_size, profile.num_classes).validation
    device = pick_device("auto")
    result = compare_modes(build_model(spec, None, device), volumes, profile.num_classes, device)
    return {
        "model": f"{spec.model_type}/{spec.image_size}",
        "slices_per_volume": int(volumes[0].image.shape[0]),
        "overlap_s_per_volume": result["overlap"]["s_per_volume"],
        "single_s_per_volume": result["centre"]["s_per_volume"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-steps", type=int, default=40)
    args = parser.parse_args()
    dice = dice_agreement(args.train_steps)
    timing = mode_timing(ModelSpec("vit_b", 224, 2, "flap", 32))
    print(
        f"{dice['model']} trained {args.train_steps} steps, {dice['volumes']} demo volumes: Dice overlap {dice['dice_overlap']:.4f}, "
        f"centre {dice['dice_single']:.4f}, largest per-volume difference {dice['max_volume_abs_diff']:.4f}"
    )
    print(
        f"{timing['model']}: {timing['overlap_s_per_volume']:.2f} s (overlap) vs {timing['single_s_per_volume']:.2f} s (centre) "
        f"per {timing['slices_per_volume']}-slice volume: {timing['overlap_s_per_volume'] / timing['single_s_per_volume']:.1f}x"
    )


if __name__ == "__main__":
    main()
