"""Energies from the optimisation, sampling and physics literature, with values computed
independently (hand-derived float64 formulas or autograd of a plain-torch reference).

The data file holds, per case, the formula, its parameters, float64 points and
the expected energies and gradients; "raises" cases must be refused
with a ValueError by ``from_expression`` itself (not later, at the first energy or
gradient call) and leave no side effect.
"""

import os

import pytest
import torch

from torchebm.symbolic import from_expression

from .cases import LITERATURE

def _params(p):
    return {k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else float(v))
            for k, v in p.items()}


def _close(got, want, tol):
    want = torch.tensor(want, dtype=torch.float64)
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    assert ((got - want).abs() <= tol["atol"] + tol["rtol"] * want.abs()).all(), (got, want)


@pytest.mark.parametrize("case", LITERATURE, ids=[c["id"] for c in LITERATURE])
def test_literature_case(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)        # a side effect would land here
    x = torch.tensor(case["points"], dtype=torch.float64)
    expect = case["expect"]
    if "raises" in expect:
        # refused by from_expression itself, before any energy or gradient is evaluated
        with pytest.raises(ValueError):
            from_expression(case["formula"], **_params(case["params"]))
        marker = case.get("must_not_exist")
        assert not marker or not os.path.exists(marker)
        return
    tol = case.get("tol", {"rtol": 1e-10, "atol": 1e-12})
    E = from_expression(case["formula"], **_params(case["params"]))
    e = E(x)
    assert e.dtype == torch.float64
    _close(e, expect["energy"], tol)
    _close(E.gradient(x), expect["gradient"], tol)
