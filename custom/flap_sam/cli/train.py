"""``flap-sam train``: the local and pooled baselines, with the federation's own recipe, without FLARE.

    flap-sam train --job JOB --sites site-3 --out baselines/local-site-3           # one site's data: "local"
    flap-sam train --job JOB --sites site-1 site-2 site-3 --out baselines/pooled   # all in one place: "pooled"
    flap-sam train --job JOB --datalist /data/kits/site-3.json --out ...           # datalist files instead
    flap-sam train --job JOB --datalist a=/data/a/datalist.json b=/data/b/datalist.json --out ...  # named explicitly

Model, task, preset, training recipe (the job's ``training`` block, FedProx and seed included),
data root and checkpoint come from the job folder, so a baseline is trained exactly as the
federation that ran the job, for rounds x local epochs epochs.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", required=True, help="the job folder whose recipe and settings to train with")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sites", nargs="+", metavar="SITE", help="sites' datalists under the job's data_root (demo data too)")
    source.add_argument(
        "--datalist",
        nargs="+",
        metavar="[NAME=]FILE",
        help="datalist files (their folder is the data root); each is a site named NAME, else the file's "
        "name (site-3.json: site-3), or its folder's for a file called datalist.json",
    )
    parser.add_argument("--out", required=True, help="folder for the adapters, train_log.json and baseline.json")
    parser.add_argument("--epochs", type=int, default=None, help="default: the job's num_rounds x local_epochs")
    parser.add_argument("--checkpoint", default=None, help="SAM checkpoint (default: the job's checkpoint setting)")
    parser.add_argument("--device", default=None, help="default: the job's device setting")


def datalist_sites(items: list[str]) -> dict[str, str]:
    """``[NAME=]FILE`` arguments -> site name -> datalist file, in the order given.

    Without a NAME the site is the file's name without ``.json``, or its folder's name for a file
    called ``datalist.json`` (the layout ``flap-sam prepare`` and ``demo-data`` write).

    Raises:
        ValueError: two files would train as one site (one line naming both).
    """
    sites: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or os.sep in name:  # a folder may contain '='; a NAME may not contain a separator
            path = item
            stem = os.path.basename(path).removesuffix(".json")
            name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "datalist" else stem
        if not name:
            raise ValueError(f"--datalist {item}: the site name before '=' is empty")
        if name in sites:
            raise ValueError(f"--datalist: {sites[name]} and {path} would both be site {name!r}; name them: NAME=FILE")
        sites[name] = path
    return sites


def run(args: argparse.Namespace) -> int:
    import torch

    from flap_sam.data.site import DEMO, SiteData
    from flap_sam.errors import CheckpointError
    from flap_sam.jobs.writer import read_job
    from flap_sam.model.factory import build_model, random_base_refusal, refuses_random_base, resolve_checkpoint
    from flap_sam.training.baseline import train_baseline
    from flap_sam.training.device import pick_device
    from flap_sam.training.local_trainer import resolve_data_workers
    from flap_sam.training.memory_plan import checkpointing_to_build, plan_site_memory

    job = read_job(args.job)
    spec, profile, site = job.spec.model, job.spec.task, job.site
    device = pick_device(args.device or site.device)
    torch.manual_seed(job.training.seed)
    if args.sites:
        sources = {name: (site.data_root, name, site.datalist or None) for name in args.sites}
    else:
        sources = {
            name: (os.path.dirname(os.path.abspath(path)), "site", os.path.abspath(path))
            for name, path in datalist_sites(args.datalist).items()
        }
    sites = {
        name: SiteData.load(
            profile, root, site_name, spec.image_size, spec.num_classes, datalist, site.train_volumes, site.structures(profile.class_names)
        )
        for name, (root, site_name, datalist) in sources.items()
    }
    epochs = args.epochs or max(1, round(job["num_rounds"] * job.training.local_epochs))
    checkpoint = resolve_checkpoint(args.checkpoint if args.checkpoint is not None else site.checkpoint, spec.model_type)
    on_demo = bool(args.sites) and site.data_root == DEMO
    if refuses_random_base(spec.model_type, checkpoint, on_demo, site.random_weights):
        raise CheckpointError(random_base_refusal(spec.model_type))
    model = build_model(spec, checkpoint, device, site.attention, checkpointing_to_build(site.checkpointing))
    memory = plan_site_memory(model, site, job.training, spec.image_size, device)
    print(memory.describe(), flush=True)
    kind = "local" if len(sites) == 1 else "pooled"
    print(
        f"{kind} baseline: {spec.model_type}/{spec.image_size} preset {spec.preset} on {', '.join(sites)}, {epochs} epochs "
        f"(job {args.job}), {device}",
        flush=True,
    )
    train_baseline(
        model,
        spec,
        sites,
        job.training,
        epochs,
        args.out,
        device,
        kind,
        data_workers=resolve_data_workers(site.data_workers, device),
        say=lambda s: print(s, flush=True),
        cpu_bf16=site.cpu_bf16,
        cpu_return_memory=memory.return_memory,
        loss_weights=job.training.loss_weights(profile.class_names),
    )
    return 0
