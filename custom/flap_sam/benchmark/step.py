"""Training step time and peak memory of one preset, measured in a fresh process.

Run as ``python -m flap_sam.benchmark.step PRESET ...``; prints one JSON line. Peak memory is
what training needs (model, gradients, optimiser state, activations): on CPU the highest
resident size sampled every 2 ms (psutil) from building the model to the last step, minus the
size before (the Python and torch runtime); on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import cast

import psutil
import torch
from torch import nn
from typing_extensions import Self

from flap_sam.data.stacks import STACK_DEPTH, SliceStackDataset
from flap_sam.jobs.settings import training_settings
from flap_sam.model.checkpointing import set_checkpointing
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.device import autocast_bf16, pick_device
from flap_sam.training.local_trainer import LocalTrainer
from flap_sam.training.memory_plan import measure_saved_activations, step_bytes


class RssPeak:
    """Samples this process's resident size in a background thread; ``peak_mib`` is the highest seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.process, self.interval_s = psutil.Process(), interval_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def measure(
    spec: ModelSpec,
    batch_size: int,
    steps: int,
    device: torch.device,
    amp: bool,
    attention: str = "fused",
    checkpointing: str = "off",
    compile_model: bool = False,
    cpu_return_memory: bool = False,
) -> dict:
    """Seconds per step (after one warm-up step), slices per second, peak memory in MiB (``cpu_return_memory``: the site
    setting) and the memory plan's estimate of that peak (``estimated_mib``, ``flap_sam.training.memory_plan``)."""
    baseline_mib = psutil.Process().memory_info().rss / 2**20
    with RssPeak() as sampler:
        model = build_model(spec, None, device, attention=attention)
        saved = measure_saved_activations(model, spec.image_size, device, autocast_bf16(amp, device, amp))
        set_checkpointing(model, checkpointing)
        if compile_model:
            model = cast(nn.Module, torch.compile(model))  # the compiled module keeps the module's interface
        trainer = LocalTrainer(
            model,
            cast(SliceStackDataset, []),
            training_settings(batch_size=batch_size, amp=amp),
            device,
            cpu_bf16=amp,
            cpu_return_memory=cpu_return_memory,
        )
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
        peak_mib = sampler.peak_mib - baseline_mib
    return {
        "seconds_per_step": seconds,
        "slices_per_second": batch_size * STACK_DEPTH / seconds,
        "peak_mib": peak_mib,
        "estimated_mib": step_bytes(saved, batch_size * STACK_DEPTH, checkpointing) / 2**20,
    }


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
    parser.add_argument("--attention", default="fused")
    parser.add_argument("--checkpointing", default="off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU benches)")
    parser.add_argument("--return-memory", action="store_true", help="the site setting cpu_return_memory (CPU)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # random weights are fine for speed and memory
    spec = ModelSpec(args.model, args.image_size, args.num_classes, args.preset, args.rank)
    print(
        json.dumps(
            measure(
                spec,
                args.batch_size,
                args.steps,
                pick_device(args.device),
                args.amp,
                args.attention,
                args.checkpointing,
                args.compile,
                args.return_memory,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
