"""Shared fixtures. Tests run on the CPU with the test-only ``vit_test`` SAM size unless stated."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import pytest
import torch

# pytest-xdist's workers (pytest.ini: -n 2) share the machine's cores: each takes its share of torch threads.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _workers))

# Modules that start FLARE on fixed ports (POC, provisioned kits, hosts on network namespaces): one worker runs them all.
FIXED_PORTS = {"test_deployment", "test_site_policy", "test_hospital_network"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """xdist's ``--dist loadgroup`` groups: a module's tests stay on one worker (its module fixtures, a simulator run
    many tests read, run once), and the modules of ``FIXED_PORTS`` share one worker (two POCs would take the same ports)."""
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        item.add_marker(pytest.mark.xdist_group("flare_fixed_ports" if module in FIXED_PORTS else module))


_seconds_by_worker: dict[str, float] = defaultdict(float)
_seconds_by_group: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Sum each test's setup, call and teardown seconds per xdist worker and per group (on the controller)."""
    node = getattr(report, "node", None)  # xdist's worker, on the controller
    worker = getattr(getattr(node, "gateway", None), "id", "main")
    module = report.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    _seconds_by_worker[worker] += report.duration
    _seconds_by_group["flare_fixed_ports" if module in FIXED_PORTS else module] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Where CI's time goes: seconds per worker (the longest is the run's wall time) and the five longest groups."""
    if not _seconds_by_worker:
        return
    workers = ", ".join(f"{w} {s / 60:.1f} min" for w, s in sorted(_seconds_by_worker.items()))
    groups = ", ".join(f"{g} {s / 60:.1f}" for g, s in sorted(_seconds_by_group.items(), key=lambda kv: -kv[1])[:5])
    terminalreporter.write_line(f"test minutes per worker: {workers}; longest groups (min): {groups}")


@pytest.fixture(autouse=True)
def _quiet_random_weight_warning(caplog):
    caplog.set_level(logging.ERROR, logger="flap_sam.model.factory")
    yield
