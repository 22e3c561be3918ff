"""Golden tests of emitted source: every change to generated code is reviewed as a diff.

The built-ins are golden files already (torchebm/core/_generated, checked by
test_generated_fresh.py). Here a set of representative formulas covers the
other code paths: gathers, pairs, nested levels, matrix products, where,
prod, logsumexp. After a deliberate change, rewrite the expected files with

    TORCHEBM_ACCEPT=1 python -m pytest tests/test_golden.py

and review ``git diff tests/golden``.
"""

import os
from pathlib import Path

import pytest

from torchebm.symbolic.compiler import compile_spec
from torchebm.symbolic.ir import EnergySpec, ParamDecl

GOLDEN = Path(__file__).parent / "golden"
ACCEPT = os.environ.get("TORCHEBM_ACCEPT") == "1"

# name -> (formula, {param: rank})
FORMULAS = {
    "elementwise": ("sum(a*x**2 + b*sin(x))", {"a": 0, "b": 0}),
    "neighbours": ("sum(b*(x[i+1] - x[i]**2)**2 + (a - x[i])**2 for i in range(n - 1))",
                   {"a": 0, "b": 0}),
    "periodic": ("sum(-2*kappa*x[i]*x[(i+1) % n] + x[i]**2 for i in range(n))", {"kappa": 0}),
    "pairs": ("sum(4*eps*((s/(x[j]-x[i]))**12 - (s/(x[j]-x[i]))**6) "
              "for i in range(n) for j in range(i+1, n))", {"eps": 0, "s": 0}),
    "mixture": ("-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2)/s**2 for k in range(len(w)))",
                {"w": 1, "M": 2, "s": 0}),
    "quadratic_form": ("0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S)", {"mu": 1, "S": 2}),
    "where_prod": ("sum(where(x > 0, sqrt(x), -x)) + prod(cos(x))", {}),
    "norm_component": ("norm(x) + x[0]*x[-1]", {}),
}


def _source(name):
    formula, ranks = FORMULAS[name]
    decls = tuple(ParamDecl(p, r, 1.0 if r == 0 else None) for p, r in ranks.items())
    spec = EnergySpec("GoldenEnergy", formula, decls, summary=f"Golden case {name}.")
    return compile_spec(spec).generated.source


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_emitted_source_matches_golden(name):
    path = GOLDEN / f"{name}.py"
    text = _source(name)
    if ACCEPT:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with TORCHEBM_ACCEPT=1 to create it"
    assert text == path.read_text(), f"{path} differs; review and accept with TORCHEBM_ACCEPT=1"
