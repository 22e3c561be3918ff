"""from_expression over every construct of the language, against plain-torch references.

Each case: a formula, its parameters, and an independent reference written
directly in torch (from the math, not from generated code). Energies are
compared in float64 and gradients against autograd of the reference.
"""

import pytest
import torch

from torchebm.symbolic import from_expression

from .cases import FORMULAS, pairs

T = torch.float64


@pytest.mark.parametrize("case", FORMULAS, ids=[c.id for c in FORMULAS])
def test_formula_matches_reference(case):
    cid, formula, params, reference, dims = case
    for n in dims:
        energy = from_expression(formula, params=params)
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(6, n, dtype=T, generator=gen)
        want = reference(x)
        assert want is not None
        got = energy(x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        xr = x.clone().requires_grad_(True)
        want_grad = torch.autograd.grad(reference(xr).sum(), xr)[0]
        grad = energy.gradient(x)
        scale = want_grad.abs().max().clamp(min=1.0)
        assert float((grad - want_grad).abs().max() / scale) <= 1e-10, (cid, n)


def test_at_least_thirty_formulas():
    assert len(FORMULAS) >= 30


def test_sympy_expression_input_goes_through_the_same_whitelist():
    import sympy as sp

    from torchebm.symbolic import EnergySyntaxError, i, j, n, x
    a = sp.Symbol("a", real=True)
    expr = (sp.Sum(a * x[i] ** 2 + sp.sin(x[i]), (i, 0, n - 1))
            + sp.Sum((x[i] - x[j]) ** 2, (j, i + 1, n - 1), (i, 0, n - 1)))
    energy = from_expression(expr, a=2.0)
    pts = torch.randn(4, 3, dtype=T)
    want = (2 * pts**2 + torch.sin(pts)).sum(-1) + pairs(pts, lambda u, v: (u - v) ** 2)
    torch.testing.assert_close(energy(pts), want)
    with pytest.raises(EnergySyntaxError, match="Derivative"):
        from_expression(sp.Derivative(x[i], x[i]) + sp.Sum(x[i], (i, 0, n - 1)))
    with pytest.raises(EnergySyntaxError, match="Integral"):
        from_expression(sp.Integral(x[0], (a, 0, 1)))


def test_repr_latex_expression_and_cache():
    e1 = from_expression("sum(a*x**2)", a=2.0)
    e2 = from_expression("sum(a*x**2)", a=3.0)
    assert type(e1) is type(e2)                     # compiled once, cached
    assert "sum(a*x**2)" in repr(e1) and "a=2" in repr(e1)
    assert e1.latex() == r"\sum_{i=0}^{n - 1} a {x}_{i}^{2}"
    import sympy as sp
    assert isinstance(e1.expression, sp.Expr)
