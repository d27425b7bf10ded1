"""Peak resident memory of a site that loads, prepares and validates a large CT site.

The default is the largest Fed-KiTS site (site-6: 24 CT volumes), at 512 x 512 x 200 voxels
each: synthetic KiTS-like CT (``flap_sam.data.demo.kits_phantom`` at 0.7-0.85 mm in-plane),
written as int16 NIfTI. The measurement runs in a fresh process (``python -m
flap_sam.benchmark.site_memory DATA_ROOT ...`` prints one JSON line): the highest resident size
while the site loads every volume (``SiteData.load``, as the Learner does at start-up), builds
the model and scores its validation volumes at full resolution (``evaluate_volumes``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

SITE = "site-6"


def make_site(out_dir: str, volumes: int, shape: tuple[int, int, int], validation: int) -> str:
    """Write ``volumes`` synthetic CT cases (``validation`` of them for validation) and ``<out_dir>/site-6.json``; returns out_dir."""
    from flap_sam.data.datalist import write_datalist
    from flap_sam.data.demo import ScannerShift, kits_phantom

    size, _, slices = shape
    shift = ScannerShift.for_site(SITE, pixel_spacing_mm=(0.7, 0.85))
    affine = np.diag([shift.pixel_spacing_mm, shift.pixel_spacing_mm, shift.slice_thickness_mm, 1.0])
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for i in range(volumes):
        image_path, label_path = (os.path.join(out_dir, f"case_{i:03d}_{kind}.nii") for kind in ("image", "label"))
        if not (os.path.isfile(image_path) and os.path.isfile(label_path)):
            image, label = kits_phantom(np.random.default_rng(i), shift, size=size, slices=slices)
            image_file = nib.Nifti1Image(np.clip(np.round(image), -32768, 32767).astype(np.int16), affine)
            image_file.set_data_dtype(np.int16)
            nib.save(image_file, image_path)
            nib.save(nib.Nifti1Image(label, affine), label_path)
        entries.append({"image": image_path, "label": label_path})
    train = volumes - validation
    write_datalist(os.path.join(out_dir, f"{SITE}.json"), entries[:train], entries[train:], [])
    return out_dir


def measure(data_root: str, model_type: str, image_size: int, mode: str) -> dict:
    """Peak resident bytes (absolute and above the runtime's own) of loading, preparing and validating the site."""
    import psutil
    import torch

    from flap_sam.benchmark.step import RssPeak
    from flap_sam.data.profiles import get_profile
    from flap_sam.data.site import SiteData
    from flap_sam.model.factory import ModelSpec, build_model
    from flap_sam.training.device import pick_device
    from flap_sam.training.local_trainer import evaluate_volumes

    profile = get_profile("kits")
    device = pick_device("auto")
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with RssPeak() as sampler:
        data = SiteData.load(profile, data_root, SITE, image_size, profile.num_classes)
        loaded = time.perf_counter()
        model = build_model(
            ModelSpec(model_type, image_size, profile.num_classes, "flap", 32 if model_type != "vit_test" else 4), None, device
        )
        evaluate_volumes(model, data.validation, profile.num_classes, device, mode=mode)
    done = time.perf_counter()
    resident = sum(
        v.image.numel() * v.image.element_size() + (v.label.numel() if v.label is not None else 0) for v in data.train + data.validation
    )
    return {
        "peak_rss_bytes": int(sampler.peak),
        "runtime_rss_bytes": int(baseline),
        "peak_above_runtime_bytes": int(sampler.peak - baseline),
        "prepared_bytes": int(resident),
        "volumes": len(data.train) + len(data.validation),
        "validation_volumes": len(data.validation),
        "load_s": loaded - started,
        "validate_s": done - loaded,
        "model": f"{model_type}/{image_size}",
        "inference": mode,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }


def run_in_fresh_process(data_root: str, model_type: str, image_size: int, mode: str) -> dict:
    """``measure`` in a new Python process, so nothing the caller allocated counts."""
    cmd = [
        sys.executable,
        "-m",
        "flap_sam.benchmark.site_memory",
        data_root,
        "--model",
        model_type,
        "--image-size",
        str(image_size),
        "--inference",
        mode,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"site memory benchmark failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", help="a folder made by make_site (flap-sam bench --site-memory makes one)")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--inference", default="centre")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # random weights and synthetic data are what this measures with
    print(json.dumps(measure(args.data_root, args.model, args.image_size, args.inference)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
