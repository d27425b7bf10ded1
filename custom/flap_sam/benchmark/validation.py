"""Validation inference modes compared: seconds per volume and Dice, ``overlap`` against ``centre``.

    python -m flap_sam.benchmark.validation [--train-steps 120]

Trains the test-size model briefly on the kits demo data of one site (so Dice is not that of
random weights), then segments every labelled demo volume of that site with both modes and
prints the table; then times one demo volume at ViT-B/224 (random weights) in both modes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.local_trainer import LocalTrainer, TrainSettings, evaluate_volumes


def compare_modes(model, volumes, num_classes: int) -> dict[str, dict[str, float]]:
    """Per mode: mean Dice over volumes and classes, and seconds per volume."""
    out = {}
    for mode in ("overlap", "centre"):
        started = time.perf_counter()
        scores = evaluate_volumes(model, volumes, num_classes, torch.device("cpu"), mode=mode)
        out[mode] = {"dice": float(scores.mean()), "s_per_volume": (time.perf_counter() - started) / len(volumes),
                     "per_volume": scores.mean(axis=1).tolist()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-steps", type=int, default=120)
    args = parser.parse_args()
    profile = get_profile("kits")
    data = SiteData.load(profile, "demo", "site-1", 64, profile.num_classes)
    volumes = data.train + data.validation + data.test
    spec = ModelSpec("vit_test", 64, profile.num_classes, "flap", 4)
    torch.manual_seed(0)
    model = build_model(spec)
    trainer = LocalTrainer(model, SliceStackDataset(data.train, None, seed=0),
                           TrainSettings(lr=0.01, batch_size=4, warmup_steps=2, poly_power=1.0), torch.device("cpu"))
    trainer.train(args.train_steps, first_step=0, total_steps=args.train_steps, round_seed=0)
    small = compare_modes(model, volumes, profile.num_classes)
    big = compare_modes(build_model(ModelSpec("vit_b", 224, profile.num_classes, "flap", 32)),
                        SiteData.load(profile, "demo", "site-1", 224, profile.num_classes).validation, profile.num_classes)
    print(f"| model | volumes | mode | mean Dice | s / volume |\n|---|---|---|---|---|")
    for name, result, n in (("vit_test/64, trained", small, len(volumes)), ("vit_b/224, random", big, 1)):
        for mode, r in result.items():
            print(f"| {name} | {n} | {mode} | {r['dice']:.4f} | {r['s_per_volume']:.2f} |")
    diffs = np.abs(np.array(small["overlap"]["per_volume"]) - np.array(small["centre"]["per_volume"]))
    print(f"\nvit_test: |Dice overlap - Dice centre| per volume: max {diffs.max():.4f}, mean {diffs.mean():.4f}; "
          f"speed-up vit_test {small['overlap']['s_per_volume'] / small['centre']['s_per_volume']:.1f}x, "
          f"vit_b {big['overlap']['s_per_volume'] / big['centre']['s_per_volume']:.1f}x")


if __name__ == "__main__":
    main()
