"""Shared test settings: float64 by default in references, fixed seeds, hypothesis profiles.

Note on randomized tests: every random point comes from a seeded
``torch.Generator`` so failures reproduce; hypothesis runs with the "ci"
profile (derandomized) unless ``--hypothesis-profile=long`` or
``TORCHEBM_HYPOTHESIS=long`` asks for the long run.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("TORCHEBM_HYPOTHESIS", "ci"))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
