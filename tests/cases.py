"""The one registry of formulas and cases for the tests.

Every test that needs formulas takes them from here, so a new construct, built-in
or literature energy is added once and reaches every check that applies to it:

* :data:`BUILTINS`: every built-in energy with an independent plain-torch
  reference formula (written from the papers/benchmarks, not from the generated
  code), its dimensions and known minimisers;
* :data:`FORMULAS`: formulas over every construct of the language, each with a
  plain-torch reference and the dimensions to try;
* :data:`LITERATURE`: energies from the optimisation, sampling and physics
  literature (``data/literature_cases.json``) with independently computed values,
  split into :data:`LITERATURE_VALUES` and :data:`LITERATURE_REFUSED`;
* :data:`KINKS`: formulas with points at kinks, branch points, zeros and extremes;
* :data:`SECOND_ORDER_KINKED`: kinked and antisymmetric formulas for the second
  derivatives (parameter ``A`` is a 3 x 3 matrix where it appears);
* :data:`COMPILED`: formulas run through ``torch.compile`` (fullgraph);
* :data:`GOLDEN`: the golden-source formulas (name -> formula, parameter ranks);
  the names are the file names under ``tests/golden``;
* :data:`REFUSED` and :data:`FOUND_BY_ATTACK`: hostile input refused with a clear
  error, and formulas once wrong (found by attack) with their parameters;
* :data:`PARSER_SEEDS`: valid formulas that the parser fuzz mutates.

References here are never computed by the code under test.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from torchebm.core import (AckleyEnergy, BoothEnergy, DoubleWellEnergy, GaussianEnergy,
                           HarmonicEnergy, HimmelblauEnergy, RastriginEnergy, RosenbrockEnergy,
                           StyblinskiTangEnergy)
from torchebm.errors import MemoryLimitError, ParameterError, SingularMatrixError
from torchebm.symbolic import EnergySyntaxError


# -- built-in energies with independent references ---------------------------------------------
def seeded_randn(*shape, seed, dtype=torch.float64):
    """``torch.randn(*shape)`` from its own generator seeded with ``seed`` (float64)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_spd(n, seed):
    """A symmetric positive definite ``[n, n]`` float64 matrix: ``a a^T + n I``."""
    a = seeded_randn(n, n, seed=seed)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64)


def _gauss_params(n):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, dtype=torch.float64, generator=g)
    return {"mean": torch.randn(n, dtype=torch.float64, generator=g),
            "cov": a @ a.T / n + torch.eye(n, dtype=torch.float64)}


def _gauss_ref(x, mean, cov):
    d = x - mean
    return 0.5 * (d * torch.linalg.solve(cov, d.unsqueeze(-1)).squeeze(-1)).sum(-1)


@dataclass
class Example:
    cls: type
    params: object                  # callable n -> kwargs
    reference: object               # callable (x, **kwargs) -> energy
    dims: tuple = (1, 2, 5)
    minimisers: object = None       # callable n -> [points] where E = min
    minimum: object = None          # callable n -> value at the minimiser
    extra: dict = field(default_factory=dict)


BUILTINS = [
    Example(GaussianEnergy, _gauss_params, _gauss_ref, (1, 2, 5),
            lambda n, p=None: [_gauss_params(n)["mean"]], lambda n: 0.0),
    Example(DoubleWellEnergy, lambda n: {"barrier_height": 2.0, "b": 1.0},
            lambda x, barrier_height, b: barrier_height * ((x**2 - b**2) ** 2).sum(-1),
            (1, 2, 5), lambda n: [torch.ones(n, dtype=torch.float64), -torch.ones(n, dtype=torch.float64)], lambda n: 0.0),
    Example(DoubleWellEnergy, lambda n: {"barrier_height": 0.7, "b": 1.3},
            lambda x, barrier_height, b: barrier_height * ((x**2 - b**2) ** 2).sum(-1),
            (3,), lambda n: [1.3 * torch.ones(n, dtype=torch.float64)], lambda n: 0.0),
    Example(RosenbrockEnergy, lambda n: {"a": 1.0, "b": 100.0},
            lambda x, a, b: (b * (x[..., 1:] - x[..., :-1] ** 2) ** 2
                             + (a - x[..., :-1]) ** 2).sum(-1),
            (2, 3, 5), lambda n: [torch.ones(n, dtype=torch.float64)], lambda n: 0.0),
    Example(RastriginEnergy, lambda n: {"a": 10.0},
            lambda x, a: a * x.shape[-1] + (x**2 - a * torch.cos(2 * math.pi * x)).sum(-1),
            (1, 2, 5), lambda n: [torch.zeros(n, dtype=torch.float64)], lambda n: 0.0),
    Example(AckleyEnergy, lambda n: {"a": 20.0, "b": 0.2, "c": 2 * math.pi},
            lambda x, a, b, c: (-a * torch.exp(-b * torch.sqrt((x**2).mean(-1)))
                                - torch.exp(torch.cos(c * x).mean(-1)) + a + math.e),
            (1, 2, 5), lambda n: [torch.zeros(n, dtype=torch.float64)], lambda n: 0.0),
    Example(HarmonicEnergy, lambda n: {"k": 1.5},
            lambda x, k: 0.5 * k * (x**2).sum(-1), (1, 2, 5),
            lambda n: [torch.zeros(n, dtype=torch.float64)], lambda n: 0.0),
    Example(HimmelblauEnergy, lambda n: {},
            lambda x: ((x[..., 0] ** 2 + x[..., 1] - 11) ** 2
                       + (x[..., 0] + x[..., 1] ** 2 - 7) ** 2), (2,),
            lambda n: [torch.tensor([3.0, 2.0], dtype=torch.float64)], lambda n: 0.0),
    Example(BoothEnergy, lambda n: {},
            lambda x: ((x[..., 0] + 2 * x[..., 1] - 7) ** 2
                       + (2 * x[..., 0] + x[..., 1] - 5) ** 2), (2,),
            lambda n: [torch.tensor([1.0, 3.0], dtype=torch.float64)], lambda n: 0.0),
    Example(StyblinskiTangEnergy, lambda n: {},
            lambda x: 0.5 * (x**4 - 16 * x**2 + 5 * x).sum(-1), (1, 2, 5),
            lambda n: [torch.full((n,), -2.903534027771178, dtype=torch.float64)],
            lambda n: -39.16616570377142 * n),
]


def example_id(ex):
    return ex.cls.__name__


# -- every construct of the language, with plain-torch references ------------------------------
class Formula(NamedTuple):
    id: str
    formula: str
    params: dict
    reference: object               # callable x -> energy, plain torch
    dims: tuple


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


#: (id, formula, params, reference(x), dims)
FORMULAS = [Formula(*case) for case in [
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
]]


# -- literature energies (values computed independently, stored with the points) ---------------
LITERATURE = json.loads((Path(__file__).parent / "data" / "literature_cases.json").read_text())
LITERATURE_VALUES = [c for c in LITERATURE if "raises" not in c["expect"]]
LITERATURE_REFUSED = [c for c in LITERATURE if "raises" in c["expect"]]


# -- kinks, branch points, zeros and extremes ----------------------------------------------------
#: (formula, params, points)
KINKS = [
    ("sum(x**a)", {"a": 2.0}, [[0.0, 1.0, -2.0]]),
    ("sum(abs(x)**p)", {"p": 1.5}, [[0.0, 4.0, -1.0]]),
    ("sum(x**2)**0.75", {}, [[0.0, 0.0], [3.0, 4.0]]),
    ("sum(x**2)**1.5", {}, [[0.0, 0.0], [1.0, -2.0]]),
    ("norm(x)", {}, [[0.0, 0.0], [3e-200, 4e-200], [3e200, 4e200]]),
    ("norm(x)**1.5 + norm(x - 1)", {}, [[0.0, 0.0], [1.0, 1.0]]),
    # (at 1e-200 the Hessian of atan2, 2 x y / r**4, is 5e399: out of range)
    ("atan2(x[0], x[1])", {}, [[0.0, 0.0], [1e-100, 1e-100], [1.0, -1.0]]),
    ("hypot(x[0], x[1])", {}, [[0.0, 0.0], [3e-200, 4e-200]]),
    ("sum(log(sigmoid(x)))", {}, [[-1000.0, 0.0, 1000.0]]),
    ("sum(log(1 - sigmoid(x)))", {}, [[-1000.0, 0.0, 1000.0]]),
    ("sum(log(cosh(x)))", {}, [[1000.0, -1000.0, 0.0], [400.0, -400.0, 0.5]]),
    ("sum(softplus(x))", {}, [[-1000.0, 0.0, 1000.0]]),
    ("sum(log(1 + exp(x)))", {}, [[-1000.0, 0.0, 1000.0]]),
    ("sum(where(x > 0, sqrt(x), -x))", {}, [[-1.0, 0.0, 4.0]]),
    ("sum(where(x > 0, log(x), x))", {}, [[-1.0, 0.0, 2.0]]),
    ("sum(where(abs(x) <= 1, 0.5*x**2, abs(x) - 0.5))", {}, [[-1.0, 0.0, 1.0, 3.0]]),
    ("sum(maximum(x, 0)) + minimum(x[0], x[1])", {}, [[0.0, 0.0], [1.0, -1.0]]),
    ("sum(abs(x)) + sum(sign(x)*x**2)", {}, [[0.0, -1.0]]),
    ("prod(x)", {}, [[0.0, 2.0, 3.0], [0.0, 0.0, 3.0]]),
    ("sqrt(mean(x**2))", {}, [[0.0, 0.0]]),
    ("-20*exp(-0.2*sqrt(mean(x**2))) - exp(mean(cos(2*pi*x))) + 20 + e", {},
     [[0.0, 0.0], [1.0, -0.5]]),
    ("logsumexp(x) + logaddexp(x[0], 0)", {}, [[-1000.0, 1000.0], [0.0, 0.0]]),
    ("sum(log_ndtr(x))", {}, [[-30.0, 0.0, 5.0]]),
    ("sum(clamp(x, -1, 1)**2)", {}, [[-1.0, 1.0, 2.0]]),
    ("sum((x[i] - x[j])**2 for i in range(n) for j in range(i + 1, n))", {}, [[0.0, 0.0, 1.0]]),
]


# -- second derivatives of kinked and antisymmetric formulas -----------------------------------
SECOND_ORDER_KINKED = [
    "maximum(x[0], x[-1]) * x[1]",                 # a partial that is 0 for some loads
    "sum(x*maximum(sum(x**2), mean(x)))",
    "logsumexp(maximum(x, sum(x)))",
    "sum(abs(x - mean(x))**3)",                    # sign of an expression with 1/n
    "logsumexp(sum(x**2) for k in range(3))",      # a per-sample body, the same at each k
    "sum(x[i]*(A @ x)[i] for i in range(1, n))",   # a matrix diagonal over a shorter range
    "sum(x[i+1]*(A @ x)[i] for i in range(n-1))",
    "prod(sum(x**2) for k in range(3))",
    "sum(4*((1/(x[j] - x[i]))**12 - (1/(x[j] - x[i]))**6) "
    "for i in range(n) for j in range(i + 1, n))",  # partials equal up to sign, shared
]


# -- torch.compile (fullgraph) over the main code paths ----------------------------------------
COMPILED = [
    ("sum(b*(x[i+1] - x[i]**2)**2 + (a - x[i])**2 for i in range(n-1))", {}),
    ("sum((x[i] - x[j])**2 for i in range(n) for j in range(i+1, n))", {}),
    ("0.5*(x - m) @ inverse(S) @ (x - m)", {"m": torch.zeros(4), "S": 2 * torch.eye(4)}),
    ("-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2) for k in range(len(w)))",
     {"w": torch.full((3,), 1 / 3), "M": torch.randn(3, 4)}),
    ("prod(cos(x)) + sum(where(x > 0, sqrt(x), -x))", {}),
]


# -- golden sources ------------------------------------------------------------------------------
# name -> (formula, {param: rank})
GOLDEN = {
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
    "strided": ("sum(x[2*i]*x[2*i + 1]**2 + a*sin(x[2*i]) for i in range(n // 2))", {"a": 0}),
}


# -- hostile input --------------------------------------------------------------------------------
#: (formula, params, message pattern, error type): refused with a clear error
REFUSED = [
    ("sum(x)*(a < b)", {}, "condition", EnergySyntaxError),
    ("sum(log(x < 1))", {}, "condition", EnergySyntaxError),
    ("sum(where(a, x, 0))", {}, "condition", EnergySyntaxError),
    ("sum([2**1024, 1, 1]*x)", {}, "float64", EnergySyntaxError),
    ("x[2**62]", {}, "2\\*\\*31", EnergySyntaxError),
    ("sum(x[i] for i in range(10**20, n))", {}, "2\\*\\*31", EnergySyntaxError),
    ("sum(x)*0**-1", {}, "zero", EnergySyntaxError),
    ("sum(x)*(-1)**0.5", {}, "NaN", EnergySyntaxError),
    ("sum(_ambda*x)", {}, "reserved", EnergySyntaxError),
    ("sum(x)", {"pi": 1.0}, "built into", ParameterError),
    ("x @ inverse(M) @ x", {"M": torch.zeros(3, 3)}, "singular", SingularMatrixError),
    ("sum(a*x)", {"a": torch.tensor(1 + 2j)}, "complex", ParameterError),
    ("sum(a*x)", {"a": 10**400}, "tensor", ParameterError),
    ("sum(x[i % n] for i in range(10**9))", {}, "index points", MemoryLimitError),
]

#: (formula, params): found wrong by attack, now right
FOUND_BY_ATTACK = [
    ("sum(x - mean(x))", {}), ("sum(x**2 - sum(x))", {}), ("sum(x - logsumexp(x))", {}),
    ("sum(x**2)/sum(w)", {"w": torch.rand(3) + 0.5}), ("sum(x**2)*sum(s)", {"s": torch.ones(3)}),
    ("mean(x[i]*x[j] for i in range(n) for j in range(i+1, n))", {}),
    ("sum(logsumexp(x[j] for j in range(n)) for i in range(n))", {}),
    ("sum(sum(M[i, j]*x[j] for j in range(i))**2 for i in range(n))", {"M": torch.randn(3, 3)}),
    ("sum(mean(where(x[j] > 0, x[j], x[i]) for j in range(n)) for i in range(n))", {}),
    ("sum(x[i] for i in range(5, 2)) + x[0]", {}), ("prod(x[i] for i in range(n, 0)) + x[0]", {}),
    ("sum(sign(W @ x))", {"W": torch.eye(3)}),
    ("x @ inverse(M) @ mu", {"M": torch.tensor([[2.0, 5.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 1.0]]),
                             "mu": torch.tensor([1.0, -1.0, 0.0])}),
]


# -- parser fuzz seeds -----------------------------------------------------------------------------
PARSER_SEEDS = ["sum(x**2)", "sum(b*(x[i+1] - x[i]**2)**2 for i in range(n-1))",
                "0.5*(x - mu) @ inverse(S) @ (x - mu)", "-logsumexp(w[k] - sum(x**2) for k in range(3))",
                "sum(where(abs(x) <= d, 0.5*x**2, d*abs(x)))", "w = 1 + x/4\nsum(w**2)"]
