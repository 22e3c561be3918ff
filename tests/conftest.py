"""Shared test settings: float64 by default in references, fixed seeds, hypothesis profiles.

Note on randomized tests: every random point comes from a seeded
``torch.Generator`` so failures reproduce. Hypothesis runs with one of two profiles:

* ``ci`` (the default): 300 examples per property, derandomized (the same draws on
  every run and machine, no example database written). The formula fuzz of
  ``test_fuzz.py`` draws 200 formulas here, a quick run of 100 and a run of 100
  marked ``slow``; the parser properties ask for 100 to 300 strings of their own.
* ``long`` (``TORCHEBM_HYPOTHESIS=long`` or ``--hypothesis-profile=long``): 5000
  examples per property, random draws, for hunting bugs by hand.

Tests marked ``slow`` (torch.compile, other processes, long runs: see tests/README.md)
run in a plain ``python -m pytest``; ``-m "not slow"`` leaves them out.
"""

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("TORCHEBM_HYPOTHESIS", "ci"))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


#: set in the worker processes of pytest-xdist (``-n 2``), which collect every test but
#: run only their share
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    # two workers on two cores: one thread each, or their thread pools fight
    torch.set_num_threads(1)


def pytest_collection_finish(session):
    """Start the documentation examples selected for this run in their own interpreters
    now, so that they run beside the other tests (test_docs_snippets.py checks them).
    Under pytest-xdist every worker collects every test, so there the test starts its
    own example when it runs (the other worker goes on meanwhile)."""
    if XDIST_WORKER:
        return
    for item in session.items:
        if getattr(item, "originalname", None) == "test_python_blocks_run_as_written":
            item.module.start(item.callspec.params["doc"])


def pytest_collection_modifyitems(session, config, items):
    """Files with the most ``slow`` tests first (stable otherwise): pytest-xdist's
    ``--dist loadfile`` hands out whole files in this order, and starting the long ones
    first lets the two workers finish together instead of one waiting on a late
    compile-heavy file. Every worker sorts the same collection the same way."""
    slow = {}
    for item in items:
        key = item.nodeid.split("::")[0]
        slow[key] = slow.get(key, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])


def pytest_sessionfinish(session):
    module = sys.modules.get("tests.test_docs_snippets")
    if module is not None:
        module.stop_all()
