"""Shared fixtures. Tests run on the CPU with the test-only ``vit_test`` SAM size unless stated."""

from __future__ import annotations

import logging
import os

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


@pytest.fixture(autouse=True)
def _quiet_random_weight_warning(caplog):
    caplog.set_level(logging.ERROR, logger="flap_sam.model.factory")
    yield
