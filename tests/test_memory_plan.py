"""What ``checkpointing = auto`` and ``cpu_return_memory = auto`` choose (``flap_sam.training.memory_plan``).

The estimate runs real segment-anything / LiteMedSAM modules; the choice is tested on constructed
needs and shares whose answer is known; only the machine's free memory is replaced where a test
needs a machine that is short of it.
"""

from __future__ import annotations

import pytest
import torch

from flap_sam.jobs.settings import check_settings
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training import memory_plan
from flap_sam.training.memory_plan import (
    BACKWARD_WORKING_BLOCKS,
    HEAP_RETENTION,
    SavedActivations,
    choose_plan,
    measure_saved_activations,
    plan_site_memory,
    step_bytes,
)

MIB = 2**20
LITE = ModelSpec("lite_medsam", 112, 2, "flap", 4)
SETTINGS = {"model_type": "lite_medsam", "image_size": 112, "rank": 4, "batch_size": 4, "amp": False}  # 20 slices a step
JOB = check_settings(SETTINGS)  # checkpointing and cpu_return_memory: auto, the defaults


def test_the_estimate_of_a_litemedsam_step_is_within_a_tenth_of_what_the_step_benchmark_measured():
    """docs/performance.md: 4,844 MiB (off) and 2,577 MiB (encoder) above the base, 112 px, 20 slices, fp32."""
    saved = measure_saved_activations(build_model(LITE), 112, torch.device("cpu"))
    off, encoder = step_bytes(saved, 20, "off") / MIB, step_bytes(saved, 20, "encoder") / MIB
    assert off == pytest.approx(4844, rel=0.1)
    assert encoder == pytest.approx(2577, rel=0.1)
    assert saved.block_inputs < saved.largest_block <= saved.encoder_blocks < saved.total


def test_what_a_slice_saves_grows_with_its_pixels_and_halves_under_bf16():
    small_model, model = (build_model(ModelSpec("lite_medsam", size, 2, "flap", 4)).eval() for size in (112, 224))
    small, large = (measure_saved_activations(m, m.image_encoder.img_size, torch.device("cpu")).total for m in (small_model, model))
    assert 3.0 < large / small < 4.2  # 4x the pixels, less the prompt encoder's and decoder's fixed part
    bf16 = measure_saved_activations(model, 224, torch.device("cpu"), amp=True).total
    assert 0.4 < bf16 / large < 0.75
    assert model.training is False  # the probe trains a forward and leaves the mode as it was


def test_step_bytes_of_a_constructed_case():
    saved = SavedActivations(total=1000, encoder_blocks=800, block_inputs=50, largest_block=100)
    assert step_bytes(saved, 10, "off") == 10 * (1000 + BACKWARD_WORKING_BLOCKS * 100)
    # checkpointing keeps the blocks' inputs instead of what they saved, and recomputes one block at a time
    assert step_bytes(saved, 10, "encoder") == 10 * (1000 - 800 + 50 + 100 + BACKWARD_WORKING_BLOCKS * 100)


NEED = {"off": 4_000, "encoder": 2_000}


@pytest.mark.parametrize(
    ("share", "checkpointing", "return_memory"),
    [
        (4_000 * HEAP_RETENTION / 0.8, "off", False),  # everything fits as built
        (3_999 * HEAP_RETENTION / 0.8, "encoder", False),  # plain does not: checkpointing is cheaper than returning memory
        (2_000 * HEAP_RETENTION / 0.8 - 1, "encoder", True),  # only with both
        (100, "encoder", True),  # nothing fits: the most frugal, said
    ],
)
def test_auto_takes_the_cheapest_plan_that_fits_the_share(share, checkpointing, return_memory):
    plan = choose_plan("auto", "auto", NEED, int(share), on_cpu=True, sites=3)
    assert (plan.checkpointing, plan.return_memory) == (checkpointing, return_memory)
    line = plan.describe()
    assert f"checkpointing {checkpointing}, cpu_return_memory {str(return_memory).lower()}" in line
    assert "(checkpointing, cpu_return_memory auto)" in line and "3 site process(es)" in line
    assert ("may not fit" in line) == (share == 100)


def test_a_value_the_job_or_site_sets_is_kept_and_only_auto_is_chosen():
    tight = int(2_000 / 0.8)
    kept_off = choose_plan("off", "auto", NEED, tight, on_cpu=True)
    assert (kept_off.checkpointing, kept_off.return_memory, kept_off.chosen) == ("off", True, ("cpu_return_memory",))
    assert choose_plan("auto", False, NEED, tight, on_cpu=True).checkpointing == "encoder"
    kept = choose_plan("encoder", True, NEED, 1, on_cpu=True)
    assert (kept.checkpointing, kept.return_memory, kept.chosen) == ("encoder", True, ())
    # off a CPU there is no glibc heap to return: the need is taken as is
    gpu = choose_plan("auto", "auto", NEED, int(4_000 / 0.8), on_cpu=False)
    assert (gpu.checkpointing, gpu.return_memory) == ("off", False)


def test_a_site_short_of_memory_trains_checkpointed_with_the_same_gradients(monkeypatch):
    """A machine with little free memory (its free memory replaced): the model it gets is checkpointed, same result."""
    torch.manual_seed(0)
    plain = build_model(LITE)
    planned = build_model(LITE)
    planned.load_state_dict(plain.state_dict())
    monkeypatch.setattr(memory_plan, "machine_share", lambda device, sites: 1)
    plan = plan_site_memory(planned, JOB.site, JOB.training, 112, torch.device("cpu"))
    assert (plan.checkpointing, plan.return_memory, plan.fits) == ("encoder", True, False)
    image = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (plain, planned):
        model.train()  # as LocalTrainer trains
        model.zero_grad()
        torch.manual_seed(2)  # the same drop paths in both
        model(image).square().mean().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and one with room to spare is left as built
    monkeypatch.setattr(memory_plan, "machine_share", lambda device, sites: 2**40)
    roomy = plan_site_memory(build_model(LITE), JOB.site, JOB.training, 112, torch.device("cpu"))
    assert (roomy.checkpointing, roomy.return_memory, roomy.fits) == ("off", False, True)


def test_set_values_skip_the_estimate():
    job = check_settings({**SETTINGS, "checkpointing": "off", "cpu_return_memory": False})
    plan = plan_site_memory(torch.nn.Linear(1, 1), job.site, job.training, 112, torch.device("cpu"))
    assert plan.describe() == "memory: checkpointing off, cpu_return_memory false (as set)"


def test_a_containers_limit_bounds_the_share(tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("max\n")
    usage.write_text("100\n")
    assert memory_plan._cgroup_room(str(limit), str(usage)) is None
    limit.write_text("1000\n")
    assert memory_plan._cgroup_room(str(limit), str(usage)) == 900
    assert memory_plan._cgroup_room(str(tmp_path / "absent"), str(usage)) is None
    assert memory_plan.flare_site_processes() >= 1
