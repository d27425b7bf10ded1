"""Shared fixtures. Tests run on the CPU with the test-only ``vit_test`` SAM size unless stated."""

from __future__ import annotations

import logging

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _quiet_random_weight_warning(caplog):
    caplog.set_level(logging.ERROR, logger="flap_sam.model.factory")
    yield
