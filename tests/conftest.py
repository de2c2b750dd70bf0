"""Shared test set-up: every test starts from the same seed; under pytest-xdist (``make test`` runs two
workers on the CI machine's 2 cores) each worker computes on one thread."""

import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def fixed_seed():
    """Seed torch and python's random before every test."""
    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    """One torch thread in each pytest-xdist worker: two workers of two threads each on two cores made the
    tiny models' many small kernels wait on each other's threads (an optimiser step of a tiny model took
    48-126 ms on a busy machine against 1.3 ms on one thread)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
