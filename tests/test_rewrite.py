"""Each numerical rewrite: its structural effect, and a value that is wrong without it."""

import math

import pytest
import sympy as sp
import torch
from sympy.codegen.cfunctions import expm1, log1p

from torchebm.symbolic import from_expression, rewrite
from torchebm.symbolic import functions as F
from torchebm.symbolic.parse import parse_formula

T = torch.float64


def _compiled_without(monkeypatch, rule, formula, **params):
    """Compile with one rule of the pipeline disabled (what the rule protects against)."""
    from torchebm.symbolic import api
    monkeypatch.setattr(rewrite, "PHASES", tuple(r for r in rewrite.PHASES if r is not rule))
    api._cache.clear()
    try:
        return from_expression(formula, **params)
    finally:
        api._cache.clear()


def test_log_one_plus_becomes_log1p(monkeypatch):
    expr = rewrite.log_one_plus(parse_formula("sum(log(1 + x**2))").expression)
    assert expr.has(log1p) and not expr.has(sp.log)
    x = torch.tensor([[1e-9]], dtype=T)
    assert float(from_expression("sum(log(1 + x**2))")(x)) == pytest.approx(1e-18, rel=1e-12)
    bad = _compiled_without(monkeypatch, rewrite.log_one_plus, "sum(log(1 + x**2))")
    assert float(bad(x)) == 0.0                        # 1 + 1e-18 rounds to 1


def test_exp_minus_one_becomes_expm1(monkeypatch):
    expr = rewrite.exp_minus_one(parse_formula("sum(exp(x) - 1)").expression)
    assert expr.has(expm1)
    x = torch.tensor([[1e-12]], dtype=T)
    assert float(from_expression("sum(exp(x) - 1)")(x)) == pytest.approx(1e-12, rel=1e-12)
    bad = _compiled_without(monkeypatch, rewrite.exp_minus_one, "sum(exp(x) - 1)")
    assert abs(float(bad(x)) - 1e-12) > 1e-17


def test_log_sum_exp_is_max_shifted(monkeypatch):
    expr = rewrite.log_of_exps(parse_formula("log(sum(exp(x)))").expression)
    assert expr.has(F.LogSumExp)
    x = torch.tensor([[800.0, 800.0]], dtype=T)
    assert float(from_expression("log(sum(exp(x)))")(x)) == pytest.approx(800 + math.log(2))
    monkeypatch.setattr(rewrite, "PHASES", tuple(r for r in rewrite.PHASES
                                                  if r is not rewrite.log_of_exps))
    from torchebm.symbolic import api
    api._cache.clear()
    assert math.isinf(float(from_expression("log(sum(exp(x)))")(x)))
    api._cache.clear()


def test_log_of_exponentials_becomes_logaddexp(monkeypatch):
    expr = rewrite.log_of_exps(parse_formula("log(exp(x[0]) + 2*exp(x[1]))").expression)
    assert expr.has(F.LogAddExp)
    x = torch.tensor([[900.0, 900.0]], dtype=T)
    want = 900 + math.log(3)
    assert float(from_expression("log(exp(x[0]) + 2*exp(x[1]))")(x)) == pytest.approx(want)
    bad = _compiled_without(monkeypatch, rewrite.log_of_exps, "log(exp(x[0]) + 2*exp(x[1]))")
    assert math.isinf(float(bad(x)))


def test_log_one_plus_exp_becomes_softplus(monkeypatch):
    expr = rewrite.stabilize(parse_formula("sum(log(1 + exp(x)))").expression)
    assert expr.has(F.Softplus)
    x = torch.tensor([[1000.0]], dtype=T)
    assert float(from_expression("sum(log(1 + exp(x)))")(x)) == 1000.0
    monkeypatch.setattr(rewrite, "PHASES", (rewrite.sqrt_of_squares,))
    from torchebm.symbolic import api
    api._cache.clear()
    assert math.isinf(float(from_expression("sum(log(1 + exp(x)))")(x)))
    api._cache.clear()


def test_sqrt_of_squares_has_zero_gradient_at_zero(monkeypatch):
    expr = rewrite.sqrt_of_squares(parse_formula("sqrt(mean(x**2))").expression)
    assert expr.has(F.SafeSqrt)
    zero = torch.zeros(1, 3, dtype=T)
    assert torch.equal(from_expression("sqrt(mean(x**2))").gradient(zero), zero)
    bad = _compiled_without(monkeypatch, rewrite.sqrt_of_squares, "sqrt(mean(x**2))")
    assert torch.isnan(bad.gradient(zero)).all()


def test_softplus_is_exact_for_large_arguments():
    """log(1 + exp(u)) = u + log1p(exp(-u)): torch's threshold switch would give u at 25."""
    x = torch.tensor([[25.0, -800.0]], dtype=T)
    got = from_expression("sum(softplus(x))")(x)
    want = 25.0 + math.log1p(math.exp(-25.0)) + math.exp(-800.0)
    assert float(got) == want


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_ackley_at_its_minimum(dtype, tol):
    from torchebm.core import AckleyEnergy
    e, g = AckleyEnergy().energy_and_gradient(torch.zeros(2, 5, dtype=dtype))
    assert torch.equal(g, torch.zeros_like(g))           # exactly 0, not NaN
    assert float(e.abs().max()) <= tol


def test_prod_gradient_with_zero_factors():
    x = torch.tensor([[0.0, 2.0, 3.0], [0.0, 0.0, 5.0]], dtype=T)
    g = from_expression("prod(x)").gradient(x)
    torch.testing.assert_close(g, torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=T))


def test_empty_reductions():
    x = torch.randn(3, 1, dtype=T)
    assert torch.equal(from_expression("sum(x[1:]**2) + x[0]")(x), x[:, 0])
    assert torch.equal(from_expression("prod(x[1:]) + x[0]")(x), 1 + x[:, 0])
    e = from_expression("logsumexp(x[1:]) + x[0]")(x)
    assert torch.isinf(e).all() and (e < 0).all()
    assert from_expression("sum(x[i]*x[j] for i in range(n) for j in range(i+1, n))")(x).shape \
        == (3,)


def test_logs_of_signed_exponentials_stay_logs():
    """log(c exp(a) + ...) becomes a log-sum-exp only for positive numeric coefficients:
    log(c) of a negative c is NaN where the energy is finite (found by attack)."""
    import torch
    from torchebm.symbolic import from_expression
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    cases = [("sum(log(1 - exp(-x**2)))", lambda z: torch.log(1 - torch.exp(-z**2)).sum(), {}),
             ("sum(log(2 - exp(-x)))", lambda z: torch.log(2 - torch.exp(-z)).sum(), {}),
             ("log(exp(x[1]) - exp(x[0]))", lambda z: torch.log(z[0, 1].exp() - z[0, 0].exp()), {}),
             ("sum(log(1 + c*exp(-x)))", lambda z: torch.log(1 - 0.5 * torch.exp(-z)).sum(),
              {"c": -0.5})]
    for formula, reference, params in cases:
        energy = from_expression(formula, **params)
        want = reference(x)
        grad = torch.autograd.grad(want, x)[0]
        torch.testing.assert_close(energy(x.detach())[0], want.detach(), rtol=1e-13, atol=0)
        torch.testing.assert_close(energy.gradient(x.detach()), grad, rtol=1e-13, atol=0)
