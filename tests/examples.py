"""Every built-in energy once, with an independent plain-torch reference formula.

The references are written from the papers/benchmarks, not from the
generated code; tests compare values and autograd gradients of these
references with the generated energies. New built-ins get an entry here.
"""

import math
from dataclasses import dataclass, field

import torch

from torchebm.core import (AckleyEnergy, BoothEnergy, DoubleWellEnergy, GaussianEnergy,
                           HarmonicEnergy, HimmelblauEnergy, RastriginEnergy, RosenbrockEnergy,
                           StyblinskiTangEnergy)


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


EXAMPLES = [
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
