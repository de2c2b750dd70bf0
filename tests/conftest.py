"""Shared test set-up: every test starts from the same seed; torch uses the CI machine's 2 cores."""

import random

import pytest
import torch


@pytest.fixture(autouse=True)
def fixed_seed():
    """Seed torch and python's random before every test."""
    random.seed(0)
    torch.manual_seed(0)
    yield
