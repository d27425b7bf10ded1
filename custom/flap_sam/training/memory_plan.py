"""A site's memory plan: what ``checkpointing = auto`` and ``cpu_return_memory = auto`` become on its machine.

Both settings change how much memory a training step holds, never what it computes (checkpointing
recomputes the same activations; returning freed memory changes only glibc's heap). So the site
can choose them itself: it measures what autograd keeps for one slice on its own model, at its own
image size and precision (``measure_saved_activations``: one forward with gradients, batch 1),
scales that to a step's slices (``step_bytes``), and compares the result with its share of the
machine (``machine_share``: what the OS says is available, within a container's limit, shared
among the FLARE site processes running on the machine). ``choose_plan`` takes the cheapest
combination that fits: nothing, then checkpointing the encoder, then also returning freed memory.

Calibrated on LiteMedSAM at 112 px, batch 4 stacks (20 slices), fp32 on a CPU: the step benchmark
measured 4,844 MiB (off) and 2,577 MiB (encoder) above the process's base; the estimate gives
4,852 and 2,584 (docs/performance.md#what-auto-chooses-for-a-sites-memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch
from torch import nn

from flap_sam.data.stacks import STACK_DEPTH
from flap_sam.model.checkpointing import set_checkpointing
from flap_sam.model.encoders import family_of
from flap_sam.training.schema import AUTO
from flap_sam.training.settings import SiteSettings, TrainingSettings

# Backward holds, beside what forward saved, about this many times the largest encoder block's saved
# activations (that block's gradients and the decoder's upsampled logits): the calibration above.
BACKWARD_WORKING_BLOCKS = 1.4
# Without ``cpu_return_memory`` glibc's heap keeps freed activations: a CPU process resides up to this
# multiple of what a step uses (measured 1.2x in fp32 without checkpointing, 2.4x in bf16 with it).
HEAP_RETENTION = 1.5
# A step's memory may use this share of the site's part of the machine: validation and the round's
# exchange need the rest.
USABLE_SHARE = 0.8
# The command-line modules of FLARE's site job processes (simulator, POC and provisioned sites):
# the processes that share a machine's memory with this site.
FLARE_SITE_PROCESSES = ("nvflare.private.fed.app.simulator.simulator_worker", "nvflare.private.fed.app.client.worker_process")
CGROUP_LIMIT, CGROUP_USAGE = "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"


@dataclass(frozen=True)
class SavedActivations:
    """Bytes autograd keeps for backward from one slice's forward (batch 1, the site's image size and precision).

    Attributes:
        total: everything forward saved (image encoder, prompt encoder, mask decoder, loss inputs excluded).
        encoder_blocks: of which inside the encoder's blocks (what checkpointing stops keeping).
        block_inputs: the blocks' inputs (what checkpointing keeps instead).
        largest_block: the most one block saved (checkpointing recomputes one block at a time).
    """

    total: int
    encoder_blocks: int = 0
    block_inputs: int = 0
    largest_block: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """What a site trains with, and why.

    Attributes:
        checkpointing: ``off`` | ``encoder``.
        return_memory: whether freed CPU memory goes back to the OS at once.
        need_bytes: what a step is estimated to hold with that choice (0: not estimated, every value was set).
        share_bytes: the site's share of the machine's memory (0: not measured).
        sites: the FLARE site processes counted on the machine.
        chosen: the settings that were ``auto`` (the rest were set by the job or the site).
    """

    checkpointing: str
    return_memory: bool
    need_bytes: int = 0
    share_bytes: int = 0
    sites: int = 1
    chosen: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.need_bytes <= USABLE_SHARE * self.share_bytes

    def describe(self) -> str:
        """One log line: the choice, and for ``auto`` the estimate and the share it was compared with."""
        choice = f"checkpointing {self.checkpointing}, cpu_return_memory {str(self.return_memory).lower()}"
        if not self.chosen:
            return f"memory: {choice} (as set)"
        line = (
            f"memory: {choice} ({', '.join(self.chosen)} auto): a training step needs about {self.need_bytes / 1e9:.1f} GB, "
            f"this site's share of the machine is {self.share_bytes / 1e9:.1f} GB ({self.sites} site process(es) on it)"
        )
        if not self.fits:
            line += "; it may not fit: lower batch_size or image_size, set cpu_bf16 on a bf16 CPU, or run fewer sites here"
        return line


def measure_saved_activations(model: nn.Module, image_size: int, device: torch.device, amp: bool = False) -> SavedActivations:
    """What one slice's training forward keeps for backward on ``model`` as built (checkpointing off), per encoder block.

    Runs one forward of a (1, 3, image_size, image_size) image with gradients, under the training's
    bf16 autocast when ``amp``; counts each storage autograd saves once. Leaves the model's mode and buffers as they were.
    """
    counted: set[int] = set()
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in counted:
            counted.add(storage.data_ptr())
            saved[0] += storage.nbytes()
        return tensor

    encoder = getattr(model, "image_encoder", model)
    blocks = family_of(encoder).blocks(encoder)
    per_block: list[tuple[int, int]] = []  # (bytes saved inside, bytes of its input)
    starts: dict[int, int] = {}

    def before(block: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        starts[id(block)] = saved[0]

    def after(block: nn.Module, args: tuple[torch.Tensor, ...], output: object) -> None:
        per_block.append((saved[0] - starts[id(block)], args[0].numel() * args[0].element_size()))

    hooks = [h for b in blocks for h in (b.register_forward_pre_hook(before), b.register_forward_hook(after))]
    was_training = model.training
    buffers = {name: value.clone() for name, value in model.named_buffers()}  # batch norms' running statistics
    image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            output = model(image)
        del output
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, value in model.named_buffers():
                if name in buffers:  # a mode may cache buffers of its own (TinyViT's attention biases in eval)
                    value.copy_(buffers[name])
    return SavedActivations(
        total=saved[0],
        encoder_blocks=sum(inside for inside, _ in per_block),
        block_inputs=sum(given for _, given in per_block),
        largest_block=max((inside for inside, _ in per_block), default=0),
    )


def step_bytes(saved: SavedActivations, slices: int, checkpointing: str) -> int:
    """Bytes a training step of ``slices`` slices holds at its peak (autograd's and backward's working memory)."""
    per_slice = saved.total + BACKWARD_WORKING_BLOCKS * saved.largest_block
    if checkpointing == "encoder":
        per_slice += saved.block_inputs + saved.largest_block - saved.encoder_blocks
    return int(slices * per_slice)


def flare_site_processes() -> int:
    """FLARE site job processes running on this machine (simulator workers, POC and provisioned sites); at least 1."""
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or ())
        count += any(module in cmdline for module in FLARE_SITE_PROCESSES)
    return max(1, count)


def _cgroup_room(limit_file: str = CGROUP_LIMIT, usage_file: str = CGROUP_USAGE) -> int | None:
    """Bytes left under this container's (cgroup v2) memory limit, or None where there is none."""
    try:
        with open(limit_file, encoding="ascii") as f:
            limit = f.read().strip()
        with open(usage_file, encoding="ascii") as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - usage)


def machine_share(device: torch.device, sites: int) -> int:
    """This site's share of the memory its device can still give: available bytes / ``sites``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // sites
    available = psutil.virtual_memory().available
    room = _cgroup_room()
    return (available if room is None else min(available, room)) // sites


def choose_plan(
    checkpointing: str, return_memory: bool | str, need: dict[str, int], share: int, on_cpu: bool, sites: int = 1
) -> MemoryPlan:
    """The cheapest memory plan that fits ``share``, for the settings that are ``auto``.

    Args:
        checkpointing: the setting: ``off`` | ``encoder`` | ``auto``.
        return_memory: the ``cpu_return_memory`` setting: a bool or ``auto`` (``auto`` is False off a CPU).
        need: checkpointing mode -> bytes a step holds (``step_bytes``), before glibc's heap retention.
        share: this site's share of its device's memory, bytes.
        on_cpu: whether the site trains on a CPU (glibc's heap then keeps up to ``HEAP_RETENTION`` x).

    Ordered by cost: checkpointing the encoder costs about 1.1x a step's time, returning memory about
    1.4x its CPU time (docs/performance.md); when nothing fits the most frugal plan is taken.
    """
    modes = [checkpointing] if checkpointing != AUTO else ["off", "encoder"]
    returns = [return_memory] if return_memory != AUTO else ([False, True] if on_cpu else [False])
    candidates = [(mode, bool(ret)) for ret in returns for mode in modes]
    chosen = tuple(name for name, value in (("checkpointing", checkpointing), ("cpu_return_memory", return_memory)) if value == AUTO)

    def held(mode: str, ret: bool) -> int:
        return int(need[mode] * (HEAP_RETENTION if on_cpu and not ret else 1.0))

    plans = [MemoryPlan(mode, ret, held(mode, ret), share, sites, chosen) for mode, ret in candidates]
    return next((plan for plan in plans if plan.fits), plans[-1])


def checkpointing_to_build(setting: str) -> str:
    """The ``checkpointing`` a model is built with: ``auto`` builds without it (``plan_site_memory`` may add it)."""
    return "off" if setting == AUTO else setting


def plan_site_memory(model: nn.Module, site: SiteSettings, training: TrainingSettings, image_size: int, device: torch.device) -> MemoryPlan:
    """Resolve a site's ``auto`` memory settings on its machine and apply checkpointing to ``model`` if chosen.

    Args:
        model: built with ``checkpointing_to_build(site.checkpointing)``.
        site: its ``checkpointing``, ``cpu_return_memory`` and ``cpu_bf16``.
        training: its ``batch_size`` (a step feeds the model ``batch_size x 5`` slices) and ``amp``.
    """
    checkpointing = site.checkpointing
    return_memory = AUTO if site.cpu_return_memory == AUTO else bool(site.cpu_return_memory)
    if AUTO not in (checkpointing, return_memory):
        return MemoryPlan(checkpointing, bool(return_memory))
    saved = measure_saved_activations(model, image_size, device, training.uses_amp(device, site.cpu_bf16))
    slices = training.batch_size * STACK_DEPTH
    need = {mode: step_bytes(saved, slices, mode) for mode in ("off", "encoder")}
    sites = flare_site_processes()
    plan = choose_plan(checkpointing, return_memory, need, machine_share(device, sites), device.type == "cpu", sites)
    if checkpointing == AUTO and plan.checkpointing == "encoder":
        set_checkpointing(model, "encoder")
    return plan
