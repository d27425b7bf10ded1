"""The researcher's evidence: runs and baselines read from their folders, tabulated and drawn.

A federated run is any folder holding a server job folder (``app_server/traffic_summary.json``,
``tb_events/``, ``cross_site_val/``): a simulator workspace, a POC or production job result, or
a sweep's folder of several. A baseline is a folder with ``baseline.json`` (``flap-sam train``).
The report's tables and figures show the same numbers, which come only from those files:

* per run: each site's validation Dice and train loss per round (TensorBoard events), bytes
  per round in each direction, per site and the total (``traffic_summary.json``), the mean over
  sites of the cross-site test Dice of the final adapter (``cross_val_results.json``), each site's
  LoRA rank as the job set it (``rank``, ``site_ranks``; a rank a site set locally is not in the job);
* over runs: mean test Dice against total bytes transmitted, one point per run labelled by
  its name (the paper's Figure 1), with the baselines as horizontal lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from flap_sam.files import (
    CROSS_SITE_FILE,
    FINAL_MODEL,
    HELD_OUT_FOLDER,
    RUN_COST_FILE,
    SERVER_APP,
    SIMULATOR_JOB,
    TB_FOLDER,
    TRAFFIC_FILE,
    markdown_table,
    write_json,
    write_text,
)
from flap_sam.model.presets import PRESETS

SERVER_MARKER = os.path.join(SERVER_APP, TRAFFIC_FILE)  # a job folder of a finished run holds it


@dataclass
class FederatedRun:
    """One federated run, as its server's files record it."""

    name: str
    folder: str
    preset: str
    transport: str
    num_rounds: int
    val_dice: dict[str, dict[int, float]]  # site -> round -> Dice of the global model received
    train_loss: dict[str, dict[int, float]]  # site -> round -> mean local loss
    bytes_down: dict[int, int]  # round -> bytes the server sent to all sites (train task)
    bytes_up: dict[int, int]  # round -> bytes the sites sent to the server (train task)
    total_bytes: int  # everything, both directions, every task
    test_dice: float  # mean over sites of the final adapter's cross-site Dice
    test_dice_per_site: dict[str, float] = field(default_factory=dict)
    personal_dice_per_site: dict[str, float] = field(default_factory=dict)  # site -> the final adapter with its personal part
    lora_ranks: dict[str, int] = field(default_factory=dict)  # site -> the LoRA rank the job gave it (rank, site_ranks)
    bytes_per_site: dict[str, int] = field(default_factory=dict)  # site -> bytes both ways, every task
    model_type: str = "?"  # the job's model_type: a SAM base, or the U-Net baseline
    train_volumes: int = 0  # labelled training volumes per site (0: all)
    cost: dict[str, float] = field(default_factory=dict)  # run_cost.json of a sweep run: wall_s, cpu_s, peak_process_rss_bytes
    held_out: dict[str, float] = field(default_factory=dict)  # the final model on a site that never trained: dice_<class>, mean_dice

    @property
    def label(self) -> str:
        return f"{self.model_type} {self.preset} / {self.transport}"

    @property
    def mean_bytes_per_site_and_round(self) -> float:
        """Bytes one site sends in a round's training task (its result), averaged over sites and rounds."""
        sites = max(1, len(self.bytes_per_site))
        return sum(self.bytes_up.values()) / sites / max(1, len(self.bytes_up))

    @property
    def test_dice_summary(self) -> str:
        """ "mean test Dice D" and, with a personal part, the sites' personalised models' mean beside it."""
        text = f"mean test Dice {self.test_dice:.4f}"
        if self.personal_dice_per_site:
            personal = sum(self.personal_dice_per_site.values()) / len(self.personal_dice_per_site)
            text += f" (global model; personalised {personal:.4f})"
        return text


@dataclass
class BaselineRun:
    name: str
    folder: str
    kind: str
    sites: list[str]
    epochs: int
    test_dice: float
    test_split: str
    held_out: dict[str, float] = field(default_factory=dict)  # held_out/dice.csv in its folder (flap-sam evaluate), if any
    model: str = "?"  # model_type/image_size
    preset: str = "?"


def _scalars(folder: str, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(folder):
        return {}
    acc = EventAccumulator(folder)
    acc.Reload()
    return {int(e.step): float(e.value) for e in acc.Scalars(tag)} if tag in acc.Tags().get("scalars", []) else {}


def _settings(job_dir: str) -> dict:
    from nvflare.fuel.utils.config_factory import ConfigFactory

    for name in ("config_fed_server.conf", "config_fed_server.json"):
        path = os.path.join(job_dir, SERVER_APP, "config", name)
        if os.path.isfile(path):
            config = ConfigFactory.load_config(path)
            if config is not None:
                return config.to_dict()
    return {}


def _run_name(job_dir: str, root: str) -> str:
    """A readable name: the simulator workspace's or the job result's folder name, relative to what was given."""
    parts = os.path.relpath(job_dir, root).split(os.sep)
    if parts[-2:] == SIMULATOR_JOB.split(os.sep):
        parts = parts[:-2]
    elif parts[-1:] == ["workspace"]:
        parts = parts[:-1]
    name = "/".join(p for p in parts if p not in (".", ""))
    return name or os.path.basename(os.path.normpath(root))


def read_run(job_dir: str, name: str) -> FederatedRun:
    """The numbers of one server job folder (the folder holding ``app_server/``)."""
    with open(os.path.join(job_dir, SERVER_MARKER), encoding="utf-8") as f:
        traffic = json.load(f)
    down: dict[int, int] = {}
    up: dict[int, int] = {}
    for site in traffic["sites"].values():
        for r, entry in site.get("train", {}).items():
            down[int(r)] = down.get(int(r), 0) + int(entry.get("sent", 0))
            up[int(r)] = up.get(int(r), 0) + int(entry.get("received", 0))  # 0: the site's result did not count (dropped or late)
    cross_path = os.path.join(job_dir, CROSS_SITE_FILE)
    per_site, personal = {}, {}
    if os.path.isfile(cross_path):
        with open(cross_path, encoding="utf-8") as f:
            finals = {site: models[FINAL_MODEL] for site, models in json.load(f).items() if FINAL_MODEL in models}
        per_site = {site: float(scores["dice"]) for site, scores in finals.items()}
        personal = {site: float(scores["personal_dice"]) for site, scores in finals.items() if "personal_dice" in scores}
    tb = os.path.join(job_dir, TB_FOLDER)
    sites = sorted(os.listdir(tb)) if os.path.isdir(tb) else []
    cost = {}
    if os.path.isfile(os.path.join(job_dir, RUN_COST_FILE)):
        with open(os.path.join(job_dir, RUN_COST_FILE), encoding="utf-8") as f:
            cost = {k: float(v) for k, v in json.load(f).items()}
    settings = _settings(job_dir)
    site_ranks = settings.get("site_ranks") or {}
    lora = settings.get("preset") in PRESETS and PRESETS[settings["preset"]].uses_lora
    per_site_bytes = {
        site: sum(int(e.get("sent", 0)) + int(e.get("received", 0)) for rounds in tasks.values() for e in rounds.values())
        for site, tasks in traffic["sites"].items()
    }
    return FederatedRun(
        name=name,
        folder=job_dir,
        model_type=str(settings.get("model_type", "?")),
        preset=str(settings.get("preset", "?")),
        transport=str(settings.get("transport", "?")),
        num_rounds=int(settings.get("num_rounds", len(up))),
        val_dice={s: _scalars(os.path.join(tb, s), "val_dice") for s in sites},
        train_loss={s: _scalars(os.path.join(tb, s), "train_loss") for s in sites},
        bytes_down=dict(sorted(down.items())),
        bytes_up=dict(sorted(up.items())),
        total_bytes=int(traffic["totals"]["sent"]) + int(traffic["totals"]["received"]),
        test_dice=sum(per_site.values()) / len(per_site) if per_site else float("nan"),
        test_dice_per_site=per_site,
        personal_dice_per_site=personal,
        lora_ranks={site: int(site_ranks.get(site, settings.get("rank", 0))) for site in per_site_bytes} if lora else {},
        bytes_per_site=dict(sorted(per_site_bytes.items())),
        train_volumes=int(settings.get("train_volumes", 0) or 0),
        cost=cost,
        held_out=_held_out(job_dir),
    )


def _held_out(folder: str) -> dict[str, float]:
    """The mean row of ``held_out/dice.csv`` in a run's job folder or a baseline's folder (``flap-sam evaluate`` of its
    final model on a site that never trained): its Dice columns, or {}."""
    import csv

    path = os.path.join(folder, HELD_OUT_FOLDER, "dice.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        mean = [row for row in csv.DictReader(f) if row.get("case") == "mean"]
    return {k: float(v) for k, v in mean[0].items() if "dice" in k} if mean else {}


def read_baseline(folder: str) -> BaselineRun:
    with open(os.path.join(folder, "baseline.json"), encoding="utf-8") as f:
        b = json.load(f)
    return BaselineRun(
        os.path.basename(os.path.normpath(folder)),
        folder,
        b["kind"],
        list(b["sites"]),
        int(b["epochs"]),
        float(b["test_dice"]),
        b["test_split"],
        _held_out(folder),
        str(b.get("model", "?")),
        str(b.get("preset", "?")),
    )


def collect(paths: list[str]) -> tuple[list[FederatedRun], list[BaselineRun]]:
    """Every run and baseline under ``paths`` (each a run, a baseline, or a folder of several, e.g. a sweep)."""
    runs, baselines = [], []
    for path in paths:
        if not os.path.isdir(path):
            raise ValueError(f"report: {path} is not a folder")
        found = False
        for folder, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            if "baseline.json" in files:
                baselines.append(read_baseline(folder))
                found = True
            if os.path.isfile(os.path.join(folder, SERVER_MARKER)):
                runs.append(read_run(folder, _run_name(folder, path)))
                found = True
        if not found:
            raise ValueError(f"report: {path} holds no federated run (app_server/traffic_summary.json) and no baseline (baseline.json)")
    return runs, baselines


def _plot_run(run: FederatedRun, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for site, values in sorted(run.val_dice.items()):
        axes[0].plot(list(values), list(values.values()), marker="o", label=site)
    axes[0].set(title="validation Dice of the received global model", xlabel="round", ylabel="Dice")
    for site, values in sorted(run.train_loss.items()):
        axes[1].plot(list(values), list(values.values()), marker="o", label=site)
    axes[1].set(title="local train loss", xlabel="round", ylabel="loss")
    rounds = sorted(set(run.bytes_up) | set(run.bytes_down))
    width = 0.4
    axes[2].bar([r - width / 2 for r in rounds], [run.bytes_down.get(r, 0) / 1e6 for r in rounds], width, label="server -> sites")
    axes[2].bar([r + width / 2 for r in rounds], [run.bytes_up.get(r, 0) / 1e6 for r in rounds], width, label="sites -> server")
    axes[2].set(title="bytes per round (train task)", xlabel="round", ylabel="MB")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}: {run.label}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_dice_vs_bytes(runs: list[FederatedRun], baselines: list[BaselineRun], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for run in runs:
        ax.scatter(run.total_bytes / 1e6, run.test_dice, s=60)
        ax.annotate(run.name, (run.total_bytes / 1e6, run.test_dice), textcoords="offset points", xytext=(6, 4), fontsize=9)
    styles = {"local": ":", "pooled": "--"}
    for b in baselines:
        ax.axhline(
            b.test_dice,
            linestyle=styles.get(b.kind, "-."),
            color="grey",
            label=f"{b.kind} baseline, {b.model.split('/')[0]} ({', '.join(b.sites)}): {b.test_dice:.3f}",
        )
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set(
        xlabel="total bytes transmitted (MB, both directions, log scale)",
        ylabel="mean test Dice over sites",
        title="Dice against communication",
    )
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3, which="both")
    if baselines:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _side_by_side(runs: list[FederatedRun], baselines: list[BaselineRun]) -> list[str]:
    """The runs (and baselines) against each other: held-out Dice per class (a site that never trained), bytes, CPU, memory."""
    scored = [*(r.held_out for r in runs), *(b.held_out for b in baselines)]
    classes = list(dict.fromkeys(k for held_out in scored for k in held_out if k.startswith("dice_")))  # the task's class order
    cell = lambda value, fmt: format(value, fmt) if value is not None else "-"
    rows = [
        [
            run.name,
            run.model_type,
            run.preset,
            run.train_volumes or "all",
            *(cell(run.held_out.get(c), ".4f") for c in classes),
            cell(run.held_out.get("mean_dice"), ".4f"),
            f"{run.test_dice:.4f}",
            f"{run.mean_bytes_per_site_and_round / 1e6:.2f}",
            cell(run.cost["cpu_s"] / 60 if "cpu_s" in run.cost else None, ".1f"),
            cell(run.cost["peak_process_rss_bytes"] / 2**30 if "peak_process_rss_bytes" in run.cost else None, ".2f"),
        ]
        for run in runs
    ]
    rows += [
        [
            f"{b.name} ({b.kind} baseline)",
            b.model.split("/")[0],
            b.preset,
            "all",
            *(cell(b.held_out.get(c), ".4f") for c in classes),
            cell(b.held_out.get("mean_dice"), ".4f"),
            f"{b.test_dice:.4f}",
            "0",
            "-",
            "-",
        ]
        for b in baselines
    ]
    return [
        "## Side by side",
        "",
        (
            "Held-out: the final model on a site that never trained (`flap-sam sweep --held-out`); test: the "
            "mean of the training sites' own test splits; MB: what one site sends per round (the server sends as much back); "
            "CPU minutes: the whole run, server and sites; memory: the largest process's peak (a site's)."
        ),
        "",
        markdown_table(
            [
                "run",
                "model",
                "preset",
                "labelled volumes per site",
                *(f"held-out {c.removeprefix('dice_')}" for c in classes),
                "held-out mean",
                "test mean (training sites)",
                "MB per site and round",
                "CPU minutes",
                "peak process memory GB",
            ],
            rows,
        ),
        "",
    ]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "run"


def write_report(runs: list[FederatedRun], baselines: list[BaselineRun], out: str) -> str:
    """``report.md``, ``report.json`` and the PNG figures in ``out``; returns the path of ``report.md``."""
    os.makedirs(out, exist_ok=True)
    lines = [
        "# FLAP-SAM report",
        "",
        (
            "Every number below comes from the runs' own files (TensorBoard events, traffic_summary.json, "
            "cross_val_results.json) and the baselines' baseline.json; the figures show the same numbers."
        ),
        "",
    ]
    if runs:
        _plot_dice_vs_bytes(runs, baselines, os.path.join(out, "dice_vs_bytes.png"))
        lines += [
            "## Dice against bytes transmitted",
            "",
            "![Dice against bytes](dice_vs_bytes.png)",
            "",
            markdown_table(
                ["run", "model", "preset", "transport", "rounds", "total bytes (both directions)", "mean test Dice", "test Dice per site"],
                [
                    [
                        run.name,
                        run.model_type,
                        run.preset,
                        run.transport,
                        run.num_rounds,
                        f"{run.total_bytes:,}",
                        f"{run.test_dice:.4f}",
                        ", ".join(f"{s} {d:.4f}" for s, d in sorted(run.test_dice_per_site.items())),
                    ]
                    for run in runs
                ],
            ),
            "",
        ]
    if any(run.cost or run.held_out for run in runs) or any(b.held_out for b in baselines):
        lines += _side_by_side(runs, baselines)
    if runs:
        dice = lambda scores, site: f"{scores[site]:.4f}" if site in scores else "-"
        lines += [
            "## Per site",
            "",
            (
                "Each site's LoRA rank as the job set it (`rank`, `site_ranks`), its bytes (both directions, "
                "every task) and the final adapter's test Dice on its own split: the global model, and with a personal "
                "part (`flap_personal`) the site's personalised model."
            ),
            "",
            markdown_table(
                ["run", "site", "LoRA rank", "bytes (both directions)", "test Dice (global)", "test Dice (personalised)"],
                [
                    [
                        run.name,
                        site,
                        run.lora_ranks.get(site, "-"),
                        f"{n:,}",
                        dice(run.test_dice_per_site, site),
                        dice(run.personal_dice_per_site, site),
                    ]
                    for run in runs
                    for site, n in run.bytes_per_site.items()
                ],
            ),
            "",
        ]
    if baselines:
        lines += [
            "## Baselines (flap-sam train: the same recipe without FLARE)",
            "",
            markdown_table(
                ["baseline", "kind", "sites", "epochs", "test Dice", "split"],
                [[b.name, b.kind, ", ".join(b.sites), b.epochs, f"{b.test_dice:.4f}", b.test_split] for b in baselines],
            ),
            "",
        ]
    for run in runs:
        figure = f"run_{_slug(run.name)}.png"
        _plot_run(run, os.path.join(out, figure))
        sites = sorted(run.val_dice)
        rounds = sorted(set(run.bytes_up) | {r for v in run.val_dice.values() for r in v})
        value = lambda v: f"{v:.4f}" if v is not None else "-"
        lines += [
            f"## Run {run.name} ({run.label})",
            "",
            f"![{run.name}]({figure})",
            "",
            markdown_table(
                [
                    "round",
                    *(f"{s} {what}" for s in sites for what in ("val Dice", "train loss")),
                    "bytes server -> sites",
                    "bytes sites -> server",
                ],
                [
                    [
                        r,
                        *(value(series[s].get(r)) for s in sites for series in (run.val_dice, run.train_loss)),
                        f"{run.bytes_down.get(r, 0):,}",
                        f"{run.bytes_up.get(r, 0):,}",
                    ]
                    for r in rounds
                ],
            ),
            "",
        ]
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(lines))
    write_json(os.path.join(out, "report.json"), {"runs": [asdict(r) for r in runs], "baselines": [asdict(b) for b in baselines]})
    return path
