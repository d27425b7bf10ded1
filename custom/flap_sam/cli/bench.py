"""``flap-sam bench``: communication, transport error, training speed and memory, attention,
checkpointing, validation inference, a site's memory and aggregation time, as Markdown tables
(``--out``) and machine-readable figures (``--json PATH``).

Everything is measured in this run, on this machine, for the given model (default ViT-B at
224 px, 2 classes, rank 32, random weights: enough for sizes and speed; ``--model lite_medsam``
or a LiteMedSAM job builds on its bundled pretrained weights). Ratios compare settings within
the run. Speed is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

from flap_sam.cli.adapted_model import model_defaults
from flap_sam.files import markdown_table, write_text

PRESETS = ["fft", "attn_ft", "lora_dec", "dec_ft", "flap", "lora_ft", "pdec_ft"]
MB = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", default=None, help="a job folder: model, image size, class count and rank are read from it")
    model = model_defaults()
    parser.add_argument("--model", default=model["model_type"])
    parser.add_argument("--image-size", type=int, default=model["image_size"])
    parser.add_argument("--num-classes", type=int, default=model["num_classes"])
    parser.add_argument("--rank", type=int, default=model["rank"])
    parser.add_argument("--presets", nargs="+", default=PRESETS, help="presets to measure (fft first: ratios are to fft)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="2.5D stacks per training step, the same for every preset (default: the paper's 24 on a GPU, 2 on CPU)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per preset (after one warm-up step)")
    parser.add_argument("--compile", action="store_true", help="also time flap with torch.compile (GPU)")
    parser.add_argument(
        "--sites",
        type=int,
        nargs="+",
        default=[6],
        help="sites for the aggregation timing; several counts (2 4 8 16 32) give the growth table of every rule",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the training step measurements")
    parser.add_argument("--no-validation", action="store_true", help="skip the validation inference modes")
    parser.add_argument(
        "--validation-train-steps", type=int, default=40, help="training steps of pretrained LiteMedSAM before the modes' Dice is compared"
    )
    parser.add_argument(
        "--validation-volumes", type=int, default=None, help="score the modes' Dice on the first N held-out demo volumes (default: all)"
    )
    parser.add_argument("--no-site-memory", action="store_true", help="skip the site memory measurement")
    parser.add_argument("--site-volumes", type=int, default=24, help="CT volumes of the synthetic site (Fed-KiTS site-6: 24)")
    parser.add_argument("--site-shape", type=int, nargs=3, default=[512, 512, 200], metavar=("X", "Y", "Z"))
    parser.add_argument("--site-dir", default=None, help="where the synthetic site is written (default: a temporary folder, removed)")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every measured figure to this JSON file")


def communication(spec_for, presets: list[str]) -> tuple[str, dict]:
    from flap_sam.benchmark.payloads import random_payload, wire_bytes

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

        def ratio(mode: str, m: dict = m) -> str:
            return f"{fft['fp32'] / m[mode]:.1f}" if fft else "-"

        rows.append(
            [
                preset,
                f"{m['params']:,}",
                f"{m['raw'] / MB:.2f}",
                f"{m['fp32'] / MB:.2f}",
                f"{m['fp16'] / MB:.2f}",
                f"{m['int8'] / MB:.2f}",
                ratio("fp32"),
                ratio("fp16"),
                ratio("int8"),
                f"{m['fp32'] / m['raw']:.4f}",
            ]
        )
    header = [
        "preset",
        "exchanged parameters",
        "raw fp32 MB",
        "wire fp32 MB",
        "wire fp16 MB",
        "wire int8 MB",
        "fft fp32 / wire fp32",
        "fft fp32 / wire fp16",
        "fft fp32 / wire int8",
        "wire / raw (fp32)",
    ]
    return markdown_table(header, rows), measured


def _step(
    args, preset: str, device: str, amp: bool, attention: str = "fused", checkpointing: str = "off", compile_model: bool = False
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "flap_sam.benchmark.step",
        preset,
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--num-classes",
        str(args.num_classes),
        "--rank",
        str(args.rank),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--device",
        device,
        "--attention",
        attention,
        "--checkpointing",
        checkpointing,
    ]
    cmd += (["--amp"] if amp else []) + (["--compile"] if compile_model else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"step benchmark of {preset} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args, device: str, amp: bool) -> tuple[str, dict]:
    """Every preset as a site runs it by default (fused attention, no checkpointing), then flap's variants."""
    runs = {p: (p, "fused", "off", False) for p in args.presets}
    if "flap" in args.presets:
        runs["flap, checkpointing encoder"] = ("flap", "fused", "encoder", False)
        runs["flap, reference attention"] = ("flap", "reference", "off", False)
        if args.compile:
            runs["flap, torch.compile"] = ("flap", "fused", "off", True)
    measured = {name: _step(args, preset, device, amp, attention, ckpt, comp) for name, (preset, attention, ckpt, comp) in runs.items()}
    fft = measured.get("fft")
    rows = []
    for name, m in measured.items():
        rows.append(
            [
                name,
                f"{m['seconds_per_step']:.2f}",
                f"{m['slices_per_second']:.1f}",
                f"{m['peak_mib']:,.0f}",
                f"{m['seconds_per_step'] / fft['seconds_per_step']:.2f}" if fft else "-",
                f"{m['peak_mib'] / fft['peak_mib']:.2f}" if fft else "-",
            ]
        )
    header = ["preset", "s / step", "slices / s", "peak memory MiB", "step time / fft", "peak memory / fft"]
    return markdown_table(header, rows), measured


def attention_section(steps: dict) -> tuple[str, dict]:
    fused, reference = steps["flap"], steps["flap, reference attention"]
    figures = {
        "reference_step_s": reference["seconds_per_step"],
        "fused_step_s": fused["seconds_per_step"],
        "reference_peak_bytes": int(reference["peak_mib"] * 2**20),
        "fused_peak_bytes": int(fused["peak_mib"] * 2**20),
    }
    table = markdown_table(
        ["flap training step", "reference (segment-anything)", "fused (SDPA)", "fused / reference"],
        [
            [
                "s / step",
                f"{reference['seconds_per_step']:.2f}",
                f"{fused['seconds_per_step']:.2f}",
                f"{fused['seconds_per_step'] / reference['seconds_per_step']:.2f}",
            ],
            [
                "peak memory MiB",
                f"{reference['peak_mib']:,.0f}",
                f"{fused['peak_mib']:,.0f}",
                f"{fused['peak_mib'] / reference['peak_mib']:.2f}",
            ],
        ],
    )
    return table, figures


def validation_section(args) -> tuple[str, dict]:
    from flap_sam.benchmark.validation import dice_agreement, mode_timing
    from flap_sam.model.factory import ModelSpec

    timing = mode_timing(ModelSpec(args.model, args.image_size, args.num_classes, "flap", args.rank))
    dice = dice_agreement(args.validation_train_steps, args.validation_volumes)
    figures = {
        **timing,
        "dice_overlap": dice["dice_overlap"],
        "dice_single": dice["dice_single"],
        "dice_max_volume_abs_diff": dice["max_volume_abs_diff"],
        "dice_model": dice["model"],
        "dice_volumes": dice["volumes"],
    }
    table = markdown_table(
        [
            "mode",
            f"s / volume ({timing['model']}, {timing['slices_per_volume']} slices)",
            (f"mean Dice ({dice['model']} pretrained, {dice['train_steps']} steps, {dice['volumes']} held-out demo volumes)"),
        ],
        [
            ["overlap (5 windows per slice)", f"{timing['overlap_s_per_volume']:.2f}", f"{dice['dice_overlap']:.4f}"],
            ["centre (one forward per slice)", f"{timing['single_s_per_volume']:.2f}", f"{dice['dice_single']:.4f}"],
        ],
    )
    return table, figures


def site_memory_section(args) -> tuple[str, dict]:
    from flap_sam.benchmark.site_memory import make_site, run_in_fresh_process

    shape = tuple(args.site_shape)
    validation = max(1, round(args.site_volumes * 0.2))
    with tempfile.TemporaryDirectory(prefix="flap-sam-site-") as tmp:
        root = make_site(args.site_dir or tmp, args.site_volumes, shape, validation)
        figures = run_in_fresh_process(root, args.model, args.image_size, "centre")
    figures["shape"] = list(shape)
    table = markdown_table(
        ["volumes (training + validation)", "voxels each", "prepared stacks MB", "runtime RSS MB", "peak RSS MB", "load s", "validate s"],
        [
            [
                f"{figures['volumes']} ({figures['volumes'] - figures['validation_volumes']} + {figures['validation_volumes']})",
                "x".join(map(str, shape)),
                f"{figures['prepared_bytes'] / MB:,.0f}",
                f"{figures['runtime_rss_bytes'] / MB:,.0f}",
                f"{figures['peak_rss_bytes'] / MB:,.0f}",
                f"{figures['load_s']:.0f}",
                f"{figures['validate_s']:.0f}",
            ]
        ],
    )
    return table, figures


def aggregation_target(sites: int) -> float:
    """Seconds the exact LoRA aggregation of ``sites`` results may take: 1 s up to Fed-KiTS's 6 sites, 2 s up to 32."""
    return 1.0 if sites <= 6 else 2.0


def growth_table(growth: list[dict]) -> str:
    """Sites x rules (seconds), MB received per round, and each column's growth exponent (1 = linear)."""
    from flap_sam.benchmark.payloads import AGGREGATION_RULES, growth_exponent

    columns = ["received_bytes", *AGGREGATION_RULES]
    rows = [[r["sites"], f"{r['received_bytes'] / MB:.1f}", *(f"{r[rule]:.3f}" for rule in AGGREGATION_RULES)] for r in growth]
    if len(growth) > 1:
        exponents = [growth_exponent(growth, key) for key in columns]
        rows.append(["growth exponent (1 = linear)", *(f"{e:.2f}" for e in exponents)])
    return markdown_table(["sites", "MB received", *AGGREGATION_RULES], rows)


def targets(
    comm: dict, steps: dict | None, aggregation: dict, errors: dict, validation: dict | None, site: dict | None, model_type: str
) -> tuple[str, list]:
    rows = []
    rows.append(
        [
            "int8 transport: relative RMS error <= 1 % of the fp32 adapter",
            f"{100 * errors['int8']['rel_rms']:.2f} %",
            errors["int8"]["rel_rms"] <= 0.01,
        ]
    )
    worst = max(m["fp32"] / m["raw"] for m in comm.values())
    rows.append(["wire bytes within 2 % of raw tensor bytes (fp32)", f"worst {100 * (worst - 1):.2f} % over", worst <= 1.02])
    if "fft" in comm and "flap" in comm and model_type == "vit_b":  # the paper's ratio is ViT-B's
        for mode, goal in (("fp32", 48), ("fp16", 96)):
            value = comm["fft"]["fp32"] / comm["flap"][mode]
            rows.append([f"fft fp32 / flap {mode} wire >= {goal}", f"{value:.1f}", value >= goal])
    if steps and "fft" in steps and "flap" in steps:
        fft, flap = steps["fft"], steps["flap"]
        time_ratio = flap["seconds_per_step"] / fft["seconds_per_step"]
        rows.append(["flap step time <= 0.7 x fft", f"{time_ratio:.2f}", time_ratio <= 0.7])
        rows.append(
            ["flap peak memory <= 0.6 x fft", f"{flap['peak_mib'] / fft['peak_mib']:.2f}", flap["peak_mib"] / fft["peak_mib"] <= 0.6]
        )
        ckpt = steps["flap, checkpointing encoder"]
        ratio = ckpt["peak_mib"] / fft["peak_mib"]
        rows.append(
            [
                f"flap with checkpointing peak memory <= 0.5 x fft (its step time: {ckpt['seconds_per_step'] / flap['seconds_per_step']:.2f} x flap's)",
                f"{ratio:.2f}",
                ratio <= 0.5,
            ]
        )
    if validation:
        speedup = validation["overlap_s_per_volume"] / validation["single_s_per_volume"]
        rows.append(["per-round validation (centre) >= 4 x faster than overlap", f"{speedup:.1f} x", speedup >= 4])
        diff = abs(validation["dice_overlap"] - validation["dice_single"])
        rows.append(["centre Dice within 0.01 of overlap", f"{diff:.4f}", diff <= 0.01])
    if site:
        rows.append(
            [
                f"site of {site['volumes']} volumes of {'x'.join(map(str, site['shape']))}: peak RSS < 3 GB",
                f"{site['peak_rss_bytes'] / 2**30:.2f} GiB",
                site["peak_rss_bytes"] < 3 * 2**30,
            ]
        )
    rows.append(
        [
            f"exact LoRA aggregation, {aggregation['sites']} sites < {aggregation_target(aggregation['sites']):g} s",
            f"{aggregation['lora_exact']:.2f} s",
            aggregation["lora_exact"] < aggregation_target(aggregation["sites"]),
        ]
    )
    table = markdown_table(["target", "measured", "met"], [[t, v, "yes" if ok else "NO"] for t, v, ok in rows])
    return table, [{"target": t, "measured": v, "met": bool(ok)} for t, v, ok in rows]


def run(args: argparse.Namespace) -> int:
    import torch

    from flap_sam.benchmark.payloads import aggregation_growth, built_adapter, round_trip_errors
    from flap_sam.model.factory import ModelSpec

    if args.validation_volumes is not None and args.validation_volumes < 1:
        raise ValueError(f"--validation-volumes {args.validation_volumes}: must be 1 or more")
    if args.job:
        from flap_sam.jobs.writer import read_job_spec

        model = read_job_spec(args.job).model
        args.model, args.image_size, args.num_classes, args.rank = model.model_type, model.image_size, model.num_classes, model.rank

    def spec_for(preset: str) -> ModelSpec:
        return ModelSpec(args.model, args.image_size, args.num_classes, preset, args.rank)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size is None:
        args.batch_size = model_defaults()["batch_size"] if device == "cuda" else 2
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"
    )
    sections = [
        f"# flap-sam bench: {args.model} at {args.image_size} px, {args.num_classes} classes, rank {args.rank}\n\nMachine: {machine}"
    ]
    report: dict = {
        "machine": machine,
        "model": {"model_type": args.model, "image_size": args.image_size, "num_classes": args.num_classes, "rank": args.rank},
    }

    def emit(title: str, table: str) -> None:
        sections.append(f"## {title}\n\n{table}")
        print(sections[-1] + "\n", flush=True)

    comm_table, comm = communication(spec_for, args.presets)
    emit("Communication: one site's train result per round (FOBS-serialised, as FLARE sends it)", comm_table)
    report["presets"] = {
        p: {
            "params": m["params"],
            "wire_bytes": m["fp32"],
            "wire_bytes_by_transport": {k: m[k] for k in ("fp32", "fp16", "int8")},
            "step_s": None,
            "peak_bytes": None,
        }
        for p, m in comm.items()
    }

    errors = round_trip_errors(built_adapter(spec_for("flap")))
    emit(
        "Transport error against fp32: the flap adapter as every party builds it (LoRA B = 0 excluded from the worst tensor)",
        markdown_table(
            ["mode", "relative RMS error", "worst tensor, relative RMS", "max abs error"],
            [[mode, f"{e['rel_rms']:.2e}", f"{e['worst_tensor_rel_rms']:.2e}", f"{e['max_abs']:.2e}"] for mode, e in errors.items()],
        ),
    )
    report["transport_error"] = errors

    steps = None
    if not args.no_speed:
        amp = device == "cuda"  # a GPU site trains in bf16 autocast (setting amp); a CPU site in fp32 unless it sets cpu_bf16
        table, steps = speed(args, device, amp)
        emit(
            f"Training step on {device}, {'bf16 autocast' if amp else 'fp32'}, batch {args.batch_size} stacks "
            f"({args.batch_size * 5} slices), mean of {args.steps} steps",
            table,
        )
        report["training_step"] = {"device": device, "amp": amp, "batch_size": args.batch_size, "runs": steps}
        for preset in args.presets:
            report["presets"][preset].update(step_s=steps[preset]["seconds_per_step"], peak_bytes=int(steps[preset]["peak_mib"] * 2**20))
        if "flap" in steps:
            table, report["attention"] = attention_section(steps)
            emit("Attention: segment-anything's explicit softmax against fused SDPA (flap, same batch)", table)
            ckpt = steps["flap, checkpointing encoder"]
            report["checkpointing"] = {
                "off_step_s": steps["flap"]["seconds_per_step"],
                "encoder_step_s": ckpt["seconds_per_step"],
                "off_peak_bytes": int(steps["flap"]["peak_mib"] * 2**20),
                "encoder_peak_bytes": int(ckpt["peak_mib"] * 2**20),
            }

    validation = None
    if not args.no_validation:
        table, validation = validation_section(args)
        emit("Validation inference: one forward per slice (centre) against 5 overlapping windows (overlap)", table)
        report["validation"] = validation

    site = None
    if not args.no_site_memory:
        table, site = site_memory_section(args)
        emit(
            f"Site memory: a synthetic CT site loaded, prepared and validated ({site['model']}, {site['inference']} inference, "
            f"on {site['device']})",
            table,
        )
        report["site_memory"] = site

    growth = aggregation_growth(spec_for("flap"), sorted(set(args.sites)))
    largest = growth[-1]
    aggregation = {"sites": largest["sites"], "average": largest["average"], "lora_exact": largest["lora_exact"], "growth": growth}
    emit(
        f"Server aggregation of flap results by the number of sites (seconds per round; {args.model}, rank {args.rank})",
        growth_table(growth),
    )
    report["aggregation"] = aggregation

    table, report["targets"] = targets(comm, steps, aggregation, errors, validation, site, args.model)
    emit("Targets", table)
    if args.out:
        write_text(args.out, "\n\n".join(sections) + "\n")
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0
