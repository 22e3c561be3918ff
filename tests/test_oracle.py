"""Every built-in and every construct against oracles independent of the torch printer.

* energy vs the SymPy expression evaluated with 30 digits (mpmath), rtol 1e-12
  relative to max(|E|, 1) (the formulas here are well conditioned at these points);
* closed-form gradient vs torch.autograd of the generated forward, rtol 1e-9;
* closed-form gradient vs central differences of the mpmath oracle, rtol 1e-7;
* energy_and_gradient equal to forward and gradient bit for bit; dtypes follow x;
* closed-form parameter derivatives (per sample, summed, batch total) vs autograd of
  the generated forward in the parameters, rtol 1e-9, for every energy with parameters.
"""

import pytest
import torch

from torchebm.symbolic import from_expression
from torchebm.symbolic.parse import parse_formula
from torchebm.symbolic.verify import verify_energy

from .cases import BUILTINS, FORMULAS, LITERATURE_VALUES, example_id

LIMITS = {"energy~mpmath": 1e-12, "grad~autograd": 1e-9, "grad~fd": 1e-7, "e&g==fwd,grad": 0.0,
          "hessian~autograd": 1e-9, "hvp~autograd": 1e-9, "hdiag~autograd": 1e-9,
          "laplacian~autograd": 1e-9, "grad~func": 1e-10, "special~autograd": 1e-9,
          "special-hdiag~func": 1e-9, "theta~autograd": 1e-9, "theta-sum~autograd": 1e-9,
          "theta-total~autograd": 1e-9,
          "dtype": 0.0}


def _check(label, energy, formula, params, n, points=3):
    ranks = {k: (v.dim() if isinstance(v, torch.Tensor) else 0) for k, v in params.items()}
    parsed = parse_formula(formula, ranks)
    checks = verify_energy(label, energy, parsed, params, n, points=points, seed=n)
    for c in checks:
        assert c.points > 0 or c.optional, (label, c.check, c.note)
        if c.check.startswith("theta") and getattr(type(energy), "param_specs", ()):
            assert c.points > 0, (label, c.check, "an energy with parameters: checked")
        assert c.max_rel <= LIMITS[c.check], (label, n, c.check, c.max_rel, c.failed_at)


@pytest.mark.parametrize("ex", BUILTINS, ids=example_id)
def test_builtins_against_oracles(ex):
    for n in ex.dims:
        params = ex.params(n)
        _check(ex.cls.__name__, ex.cls(**params), ex.cls.formula, params, n)


@pytest.mark.parametrize("case", FORMULAS, ids=[c.id for c in FORMULAS])
def test_constructs_against_oracles(case):
    cid, formula, params, _, dims = case
    for n in dims[:2]:
        _check(cid, from_expression(formula, params=params), formula, params, n, points=2)


@pytest.mark.parametrize("case", LITERATURE_VALUES, ids=[c["id"] for c in LITERATURE_VALUES])
def test_literature_cases_against_oracles(case):
    params = {k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else float(v))
              for k, v in case["params"].items()}
    n = len(case["points"][0])
    # the mpmath finite differences cost 2n evaluations per point: one point at n > 10 (the
    # same formula is checked at two points at its smaller n; the stored values of
    # test_literature_cases.py cover the large n at their own points)
    _check(case["id"], from_expression(case["formula"], **params), case["formula"], params, n,
           points=2 if n <= 10 else 1)


def test_parameter_checks_catch_a_wrong_parameter_kernel(monkeypatch):
    """verify's theta checks compare against autograd: a summed kernel off by 0.1% in
    one parameter fails the summed and the total check (DoubleWell has no batch-total
    kernel, so the total comes from the summed one), and only those."""
    from torchebm.core import DoubleWellEnergy
    energy = DoubleWellEnergy(barrier_height=1.5, b=0.8)
    cls = type(energy)
    right = cls._parameter_gradient_sum

    def wrong(self, *args):
        out = dict(right(self, *args))
        out["barrier_height"] = out["barrier_height"] * 1.001
        return out
    monkeypatch.setattr(cls, "_parameter_gradient_sum", wrong)
    params = {"barrier_height": 1.5, "b": 0.8}
    parsed = parse_formula(cls.formula, {"barrier_height": 0, "b": 0})
    checks = verify_energy("dw", energy, parsed, params, 3, points=3, seed=3)
    assert {c.check for c in checks if not c.ok} == {"theta-sum~autograd",
                                                      "theta-total~autograd"}
