"""``flap-sam bench``: one table of communication, speed, memory and aggregation time per preset.

Everything is measured in this run, on this machine, for the given model (default ViT-B at
224 px, 2 classes, rank 32, random weights: enough for sizes and speed). Ratios compare
presets within the run. Speed is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import torch

from flap_sam.benchmark.aggregation import time_averaging, time_exact_lora
from flap_sam.benchmark.transport_error import built_adapter, round_trip_errors
from flap_sam.benchmark.wire import random_payload, wire_bytes
from flap_sam.model.factory import ModelSpec

PRESETS = ["fft", "attn_ft", "lora_dec", "dec_ft", "flap", "lora_ft", "pdec_ft"]
MB = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", default=None, help="a job folder: model, image size, class count and rank are read from it")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--presets", nargs="+", default=PRESETS, help="presets to measure (fft first: ratios are to fft)")
    parser.add_argument("--batch-size", type=int, default=2, help="2.5D stacks per training step (same batch for every preset)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per preset (after one warm-up step)")
    parser.add_argument("--sites", type=int, default=6, help="sites for the aggregation timing")
    parser.add_argument("--no-speed", action="store_true", help="skip the training step measurements")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def communication(spec_for, presets: list[str]) -> tuple[str, dict]:
    rows, measured = [], {}
    for preset in presets:
        payload = random_payload(spec_for(preset))
        params = sum(v.size for v in payload.values())
        raw = params * 4
        wire = {mode: wire_bytes(payload, mode) for mode in ("fp32", "fp16", "int8")}
        measured[preset] = {"params": params, "raw": raw, **wire}
        del payload
    fft = measured.get("fft")
    for preset, m in measured.items():
        ratio = (lambda mode: f"{fft['fp32'] / m[mode]:.1f}") if fft else (lambda mode: "-")
        rows.append([preset, f"{m['params']:,}", f"{m['raw'] / MB:.2f}", f"{m['fp32'] / MB:.2f}", f"{m['fp16'] / MB:.2f}",
                     f"{m['int8'] / MB:.2f}", ratio("fp32"), ratio("fp16"), ratio("int8"), f"{m['fp32'] / m['raw']:.4f}"])
    header = ["preset", "exchanged parameters", "raw fp32 MB", "wire fp32 MB", "wire fp16 MB", "wire int8 MB",
              "fft fp32 / wire fp32", "fft fp32 / wire fp16", "fft fp32 / wire int8", "wire / raw (fp32)"]
    return _table(header, rows), measured


def _step(args, preset: str, device: str, amp: bool) -> dict:
    cmd = [sys.executable, "-m", "flap_sam.benchmark.step", preset, "--model", args.model, "--image-size", str(args.image_size),
           "--num-classes", str(args.num_classes), "--rank", str(args.rank), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--device", device] + (["--amp"] if amp else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"step benchmark of {preset} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args, presets: list[str], device: str, amp: bool) -> tuple[str, dict]:
    measured = {p: _step(args, p, device, amp) for p in presets}
    fft = measured.get("fft")
    rows = []
    for preset, m in measured.items():
        rows.append([preset, f"{m['seconds_per_step']:.2f}", f"{m['slices_per_second']:.1f}", f"{m['peak_mib']:,.0f}",
                     f"{m['seconds_per_step'] / fft['seconds_per_step']:.2f}" if fft else "-",
                     f"{m['peak_mib'] / fft['peak_mib']:.2f}" if fft else "-"])
    header = ["preset", "s / step", "slices / s", "peak memory MiB", "step time / fft", "peak memory / fft"]
    return _table(header, rows), measured


def targets(comm: dict, steps: dict | None, aggregation: dict, errors: dict) -> str:
    rows = []
    rows.append(["int8 transport: relative RMS error <= 1 % of the fp32 adapter", f"{100 * errors['int8']['rel_rms']:.2f} %", errors["int8"]["rel_rms"] <= 0.01])
    worst = max(m["fp32"] / m["raw"] for m in comm.values())
    rows.append(["wire bytes within 2 % of raw tensor bytes (fp32)", f"worst {100 * (worst - 1):.2f} % over", worst <= 1.02])
    if "fft" in comm and "flap" in comm:
        for mode, goal in (("fp32", 48), ("fp16", 96)):
            value = comm["fft"]["fp32"] / comm["flap"][mode]
            rows.append([f"fft fp32 / flap {mode} wire >= {goal}", f"{value:.1f}", value >= goal])
    if steps and "fft" in steps and "flap" in steps:
        time_ratio = steps["flap"]["seconds_per_step"] / steps["fft"]["seconds_per_step"]
        mem_ratio = steps["flap"]["peak_mib"] / steps["fft"]["peak_mib"]
        rows.append(["flap step time <= 0.7 x fft", f"{time_ratio:.2f}", time_ratio <= 0.7])
        rows.append(["flap peak memory <= 0.6 x fft", f"{mem_ratio:.2f}", mem_ratio <= 0.6])
    rows.append([f"exact LoRA aggregation, {aggregation['sites']} sites < 1 s", f"{aggregation['lora_exact']:.2f} s", aggregation["lora_exact"] < 1.0])
    return _table(["target", "measured", "met"], [[t, v, "yes" if ok else "NO"] for t, v, ok in rows])


def run(args: argparse.Namespace) -> int:
    if args.job:
        from flap_sam.jobs.writer import read_job_spec

        model = read_job_spec(args.job).model
        args.model, args.image_size, args.num_classes, args.rank = model.model_type, model.image_size, model.num_classes, model.rank
    def spec_for(preset: str) -> ModelSpec:
        return ModelSpec(args.model, args.image_size, args.num_classes, preset, args.rank)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               + (torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"))
    sections = [f"# flap-sam bench: {args.model} at {args.image_size} px, {args.num_classes} classes, rank {args.rank}\n\nMachine: {machine}"]

    comm_table, comm = communication(spec_for, args.presets)
    sections.append("## Communication: one site's train result per round (FOBS-serialised, as FLARE sends it)\n\n" + comm_table)
    print(sections[-1] + "\n", flush=True)

    errors = round_trip_errors(built_adapter(spec_for("flap")))
    sections.append(f"## Transport error against fp32: the flap adapter as every party builds it (LoRA B = 0 excluded from the worst tensor)\n\n" + _table(
        ["mode", "relative RMS error", "worst tensor, relative RMS", "max abs error"],
        [[mode, f"{e['rel_rms']:.2e}", f"{e['worst_tensor_rel_rms']:.2e}", f"{e['max_abs']:.2e}"] for mode, e in errors.items()]))
    print(sections[-1] + "\n", flush=True)

    steps = None
    if not args.no_speed:
        table, steps = speed(args, args.presets, device, amp=False)
        sections.append(f"## Training step on {device}, fp32, batch {args.batch_size} stacks ({args.batch_size * 5} slices), "
                        f"mean of {args.steps} steps\n\n" + table)
        print(sections[-1] + "\n", flush=True)
        if device == "cuda":
            table, _ = speed(args, args.presets, device, amp=True)
            sections.append("## Training step on cuda with bf16 mixed precision\n\n" + table)
            print(sections[-1] + "\n", flush=True)

    payloads = [random_payload(spec_for("flap"), seed=i) for i in range(args.sites)]
    aggregation = {"sites": args.sites, "average": time_averaging(payloads), "lora_exact": time_exact_lora(payloads)}
    sections.append(f"## Server aggregation of {args.sites} flap results\n\n" + _table(
        ["method", "seconds"], [["average (NVFlare WeightedAggregationHelper)", f"{aggregation['average']:.3f}"],
                                ["lora_exact (rank-r SVD of sum of B·A)", f"{aggregation['lora_exact']:.3f}"]]))
    print(sections[-1] + "\n", flush=True)

    sections.append("## Targets\n\n" + targets(comm, steps, aggregation, errors))
    print(sections[-1], flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n\n".join(sections) + "\n")
    return 0
