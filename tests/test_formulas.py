"""from_expression over every construct of the language, against plain-torch references.

Each case: a formula, its parameters, and an independent reference written
directly in torch (from the math, not from generated code). Energies are
compared in float64 and gradients against autograd of the reference.
"""

import math

import pytest
import torch

from torchebm.symbolic import from_expression

T = torch.float64
g = torch.Generator().manual_seed(7)
MU3 = torch.randn(3, dtype=T, generator=g)
SIG3 = 0.5 + torch.rand(3, dtype=T, generator=g)
W43 = torch.randn(4, 3, dtype=T, generator=g)
W33 = torch.randn(3, 3, dtype=T, generator=g)
A = torch.randn(3, 3, dtype=T, generator=g)
S33 = A @ A.T + 3 * torch.eye(3, dtype=T)
LOGW = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=T))
M23 = torch.randn(2, 3, dtype=T, generator=g)
W2 = torch.tensor([0.4, 0.6], dtype=T)


def pairs(x, f):
    n = x.shape[-1]
    i, j = torch.triu_indices(n, n, 1)
    return f(x[..., i], x[..., j]).sum(-1)


def levy(x):
    w = 1 + (x - 1) / 4
    return (torch.sin(math.pi * w[..., 0]) ** 2
            + ((w[..., :-1] - 1) ** 2 * (1 + 10 * torch.sin(math.pi * w[..., :-1] + 1) ** 2)).sum(-1)
            + (w[..., -1] - 1) ** 2 * (1 + torch.sin(2 * math.pi * w[..., -1]) ** 2))


# (id, formula, params, reference(x), dims)
CASES = [
    ("spec-example", "sum(a*x**2 + b*sin(x))", dict(a=1.0, b=0.5),
     lambda x: (x**2 + 0.5 * torch.sin(x)).sum(-1), (1, 3)),
    ("arith", "sum((x + 2)*(x - 3)/(x**2 + 1)) - 0.25*sum(-x)", {},
     lambda x: ((x + 2) * (x - 3) / (x**2 + 1)).sum(-1) + 0.25 * x.sum(-1), (1, 4)),
    ("trig", "sum(sin(x) + cos(2*x) + tan(x/4) + atan(x) + atan2(x, 2.0))", {},
     lambda x: (torch.sin(x) + torch.cos(2 * x) + torch.tan(x / 4) + torch.atan(x)
                + torch.atan2(x, torch.full_like(x, 2.0))).sum(-1), (3,)),
    ("inverse-trig", "sum(asin(x/10) + acos(x/10) + asinh(x) + acosh(x**2 + 2) + atanh(x/10))", {},
     lambda x: (torch.asin(x / 10) + torch.acos(x / 10) + torch.asinh(x)
                + torch.acosh(x**2 + 2) + torch.atanh(x / 10)).sum(-1), (3,)),
    ("hyperbolic", "sum(sinh(x/2) + cosh(x/3) + tanh(x))", {},
     lambda x: (torch.sinh(x / 2) + torch.cosh(x / 3) + torch.tanh(x)).sum(-1), (3,)),
    ("exp-log", "sum(exp(-x**2) + log(1 + x**2) + log1p(x**4) + expm1(x/5) + sqrt(x**2 + 1))", {},
     lambda x: (torch.exp(-x**2) + torch.log(1 + x**2) + torch.log1p(x**4)
                + torch.expm1(x / 5) + torch.sqrt(x**2 + 1)).sum(-1), (1, 3)),
    ("special", "sum(erf(x) + erfc(x) + sigmoid(x) + softplus(x) + lgamma(x**2 + 1) + log_ndtr(x))",
     {}, lambda x: (torch.erf(x) + torch.erfc(x) + torch.sigmoid(x) + torch.nn.functional.softplus(x)
                    + torch.lgamma(x**2 + 1) + torch.special.log_ndtr(x)).sum(-1), (3,)),
    ("abs-sign", "sum(abs(x)*x + sign(x)*x**2)", {},
     lambda x: (torch.abs(x) * x + torch.sign(x) * x**2).sum(-1), (3,)),
    ("min-max-clamp", "sum(minimum(x, 0.5) + maximum(x, -0.5) + clamp(x, -1, 1)**2)", {},
     lambda x: (torch.clamp(x, max=0.5) + torch.clamp(x, min=-0.5)
                + torch.clamp(x, -1, 1) ** 2).sum(-1), (4,)),
    ("where-huber", "sum(where(abs(x) <= delta, 0.5*x**2, delta*(abs(x) - 0.5*delta)))",
     dict(delta=1.0), lambda x: torch.where(x.abs() <= 1, 0.5 * x**2, x.abs() - 0.5).sum(-1), (1, 5)),
    ("where-chained-and-or", "sum(where(-1 < x < 1 or x > 2, x**2, not_(x)))".replace(
        "not_(x)", "0.5*x"), {},
     lambda x: torch.where(((x > -1) & (x < 1)) | (x > 2), x**2, 0.5 * x).sum(-1), (5,)),
    ("mean", "mean(x**2) + mean(x)**2", {},
     lambda x: (x**2).mean(-1) + x.mean(-1) ** 2, (1, 4)),
    ("prod", "prod(cos(x)) + prod(x)", {},
     lambda x: torch.cos(x).prod(-1) + x.prod(-1), (1, 4)),
    ("logsumexp", "logsumexp(-x**2) + logsumexp(x[0], 2*x[0])", {},
     lambda x: torch.logsumexp(-x**2, -1) + torch.logaddexp(x[..., 0], 2 * x[..., 0]), (1, 3)),
    ("logsumexp-variadic", "logsumexp(x[0], x[1], -x[0]*x[1])", {},
     lambda x: torch.logsumexp(torch.stack([x[..., 0], x[..., 1], -x[..., 0] * x[..., 1]], -1), -1),
     (2,)),
    ("norm-dot", "norm(x - mu) + dot(x, mu)", dict(mu=MU3),
     lambda x: torch.linalg.vector_norm(x - MU3, dim=-1) + (x * MU3).sum(-1), (3,)),
    ("diag-gaussian", "sum((x - mu)**2/(2*sigma**2) + log(sigma)) + 0.5*n*log(2*pi)",
     dict(mu=MU3, sigma=SIG3),
     lambda x: ((x - MU3) ** 2 / (2 * SIG3**2) + torch.log(SIG3)).sum(-1) + 1.5 * math.log(2 * math.pi),
     (3,)),
    ("quadratic-form", "0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S)", dict(mu=MU3, S=S33),
     lambda x: 0.5 * ((x - MU3) * torch.linalg.solve(S33, (x - MU3).unsqueeze(-1)).squeeze(-1)
                      ).sum(-1) + 0.5 * torch.logdet(S33), (3,)),
    ("matvec", "sum(tanh(W @ x)) + sum(x*(M.T @ x))", dict(W=W43, M=W33),
     lambda x: torch.tanh(x @ W43.T).sum(-1) + (x * (x @ W33)).sum(-1), (3,)),
    ("transpose-fn", "x @ transpose(M) @ x + trace(M)*sum(x) + det(S)", dict(M=W33, S=S33),
     lambda x: (x * (x @ W33)).sum(-1) + torch.trace(W33) * x.sum(-1) + torch.det(S33), (3,)),
    ("components", "x[0]**2 + 3*x[-1] + x[1]*x[0]", {},
     lambda x: x[..., 0] ** 2 + 3 * x[..., -1] + x[..., 1] * x[..., 0], (2, 4)),
    ("slices-rosenbrock", "sum(b*(x[1:] - x[:-1]**2)**2 + (a - x[:-1])**2)", dict(a=1.0, b=100.0),
     lambda x: (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1),
     (2, 5)),
    ("slice-bounds", "sum(x[1:3]**2) + sum(x[:2]) - sum(x[2:])", {},
     lambda x: (x[..., 1:3] ** 2).sum(-1) + x[..., :2].sum(-1) - x[..., 2:].sum(-1), (3, 5)),
    ("list-literal", "sum(x * [1.0, -0.5, 2.0])", {},
     lambda x: (x * torch.tensor([1.0, -0.5, 2.0], dtype=T)).sum(-1), (3,)),
    ("indexed-rosenbrock", "sum(b*(x[i+1] - x[i]**2)**2 + (a - x[i])**2 for i in range(n-1))",
     dict(a=1.5, b=10.0),
     lambda x: (10 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.5 - x[..., :-1]) ** 2).sum(-1),
     (1, 2, 5)),
    ("griewank", "1 + sum(x**2)/4000 - prod(cos(x[i]/sqrt(i+1)) for i in range(n))", {},
     lambda x: 1 + (x**2).sum(-1) / 4000 - torch.cos(
         x / torch.sqrt(torch.arange(1, x.shape[-1] + 1, dtype=T))).prod(-1), (1, 2, 5)),
    ("phi4-periodic",
     "sum(-2*kappa*x[i]*x[(i+1) % n] + x[i]**2 + lambda*(x[i]**2 - 1)**2 for i in range(n))",
     {"kappa": 0.3, "lambda": 0.5},
     lambda x: (-0.6 * x * torch.roll(x, -1, -1) + x**2 + 0.5 * (x**2 - 1) ** 2).sum(-1),
     (1, 2, 6)),
    ("strided", "sum(x[2*i]*x[2*i+1] for i in range(n // 2))", {},
     lambda x: (x[..., 0:2 * (x.shape[-1] // 2):2] * x[..., 1:2 * (x.shape[-1] // 2):2]).sum(-1),
     (2, 5, 6)),
    ("index-as-number", "sum((i + 1)*x[i]**2 for i in range(n)) + sum(x[j]**(j + 1) for j in range(n))",
     {}, lambda x: (torch.arange(1, x.shape[-1] + 1, dtype=T) * x**2).sum(-1)
     + (x ** torch.arange(1, x.shape[-1] + 1, dtype=T)).sum(-1), (1, 4)),
    ("pairs", "sum((x[i] - x[j])**2 for i in range(n) for j in range(i+1, n))", {},
     lambda x: pairs(x, lambda a, b: (a - b) ** 2), (1, 2, 5)),
    ("lennard-jones",
     "sum(4*eps*((s/(x[j]-x[i]))**12 - (s/(x[j]-x[i]))**6) for i in range(n) for j in range(i+1, n))",
     dict(eps=1.0, s=0.5),
     lambda x: pairs(x, lambda a, b: 4 * ((0.5 / (b - a)) ** 12 - (0.5 / (b - a)) ** 6)), (2, 4)),
    ("ising", "sum(W[i, j]*x[i]*x[j] for i in range(n) for j in range(i+1, n))", dict(W=W33),
     lambda x: (x * (x @ torch.triu(W33, 1).T)).sum(-1), (3,)),
    ("gmm-nested",
     "-logsumexp(logw[k] - 0.5*sum((x[i] - M[k, i])**2 for i in range(n))/sigma**2 for k in range(len(logw)))",
     dict(logw=LOGW[:2], M=M23, sigma=0.8),
     lambda x: -torch.logsumexp(LOGW[:2] - 0.5 * ((x.unsqueeze(-2) - M23) ** 2).sum(-1) / 0.64, -1),
     (3,)),
    ("gmm-rows", "-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2)/s**2 for k in range(len(w)))",
     dict(w=W2, M=M23, s=0.5),
     lambda x: -torch.logsumexp(torch.log(W2) - 0.5 * ((x.unsqueeze(-2) - M23) ** 2).sum(-1) / 0.25,
                                -1), (3,)),
    ("ragged-nested", "sum(x[i]*sum(x[j] for j in range(i)) for i in range(n))", {},
     lambda x: pairs(x, lambda a, b: a * b), (1, 2, 5)),
    ("variance", "sum((x - mean(x))**2)", {},
     lambda x: ((x - x.mean(-1, keepdim=True)) ** 2).sum(-1), (1, 4)),
    ("neal-funnel", "x[0]**2/(2*sigma**2) + (n - 1)*x[0]/2 + 0.5*exp(-x[0])*sum(x[i]**2 for i in range(1, n))",
     dict(sigma=3.0), lambda x: x[..., 0] ** 2 / 18 + (x.shape[-1] - 1) * x[..., 0] / 2
     + 0.5 * torch.exp(-x[..., 0]) * (x[..., 1:] ** 2).sum(-1), (1, 2, 5)),
    ("levy-local-definitions", "w = 1 + (x - 1)/4\nsin(pi*w[0])**2 + sum((w[:-1] - 1)**2*(1 + 10*sin(pi*w[:-1] + 1)**2)) + (w[-1] - 1)**2*(1 + sin(2*pi*w[-1])**2)",
     {}, levy, (2, 4)),
    ("reserved-names", "E*sum(x**2) + I*sum(x) + N + S*Q + beta*gamma*zeta + O + e + pi",
     dict(E=2.0, I=0.5, N=1.5, S=2.0, Q=3.0, beta=0.5, gamma=2.0, zeta=3.0, O=0.25),
     lambda x: 2 * (x**2).sum(-1) + 0.5 * x.sum(-1) + 1.5 + 6 + 3 + 0.25 + math.e + math.pi, (2,)),
    ("mean-param-and-reduction", "mean((x - mean)**2)", dict(mean=MU3),
     lambda x: ((x - MU3) ** 2).mean(-1), (3,)),
    ("zakharov", "sum(x**2) + sum(0.5*(i+1)*x[i] for i in range(n))**2 + sum(0.5*(i+1)*x[i] for i in range(n))**4",
     {}, lambda x: (x**2).sum(-1) + (0.5 * torch.arange(1, x.shape[-1] + 1, dtype=T) * x).sum(-1) ** 2
     + (0.5 * torch.arange(1, x.shape[-1] + 1, dtype=T) * x).sum(-1) ** 4, (1, 3)),
    ("dixon-price", "(x[0] - 1)**2 + sum((i + 1)*(2*x[i]**2 - x[i-1])**2 for i in range(1, n))", {},
     lambda x: (x[..., 0] - 1) ** 2 + (torch.arange(2, x.shape[-1] + 1, dtype=T)
                                        * (2 * x[..., 1:] ** 2 - x[..., :-1]) ** 2).sum(-1), (1, 2, 5)),
    ("michalewicz", "-sum(sin(x[i])*sin((i+1)*x[i]**2/pi)**20 for i in range(n))", {},
     lambda x: -(torch.sin(x) * torch.sin(torch.arange(1, x.shape[-1] + 1, dtype=T) * x**2 / math.pi)
                 ** 20).sum(-1), (2, 5)),
    ("banana", "x[0]**2/200 + 0.5*(x[1] + b*x[0]**2 - 100*b)**2", dict(b=0.1),
     lambda x: x[..., 0] ** 2 / 200 + 0.5 * (x[..., 1] + 0.1 * x[..., 0] ** 2 - 10) ** 2, (2,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
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
    assert len(CASES) >= 30


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
