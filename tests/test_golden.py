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

from .cases import GOLDEN as FORMULAS      # name -> (formula, {param: rank})

GOLDEN = Path(__file__).parent / "golden"
ACCEPT = os.environ.get("TORCHEBM_ACCEPT") == "1"

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
