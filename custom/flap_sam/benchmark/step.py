"""Training step time and peak memory of one preset, measured in a fresh process.

Run as ``python -m flap_sam.benchmark.step PRESET ...``; prints one JSON line. Peak memory is
what training needs (model, gradients, optimiser state, activations): on CPU the process's
peak resident size (``ru_maxrss``, a fresh process per preset) minus its size before the
model was built (the Python and torch runtime); on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

import torch

from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.device import pick_device
from flap_sam.training.local_trainer import LocalTrainer, TrainSettings


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def measure(spec: ModelSpec, batch_size: int, steps: int, device: torch.device, amp: bool) -> dict:
    """Seconds per step (after one warm-up step), slices per second and peak memory in MiB."""
    baseline_mib = _rss_peak_mib()
    model = build_model(spec, None, device)
    trainer = LocalTrainer(model, [], TrainSettings(batch_size=batch_size, amp=amp), device)
    generator = torch.Generator().manual_seed(0)
    stacks = torch.rand(batch_size, 5, spec.image_size, spec.image_size, generator=generator)
    labels = torch.randint(0, spec.num_classes + 1, (batch_size, 5, spec.image_size, spec.image_size), generator=generator)
    trainer.step(stacks, labels)  # warm-up: allocations, AdamW state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(stacks, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = _rss_peak_mib() - baseline_mib
    return {"seconds_per_step": seconds, "slices_per_second": batch_size * 5 / seconds, "peak_mib": peak_mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("preset")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # random weights are fine for speed and memory
    spec = ModelSpec(args.model, args.image_size, args.num_classes, args.preset, args.rank)
    print(json.dumps(measure(spec, args.batch_size, args.steps, pick_device(args.device), args.amp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
