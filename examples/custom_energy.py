"""A hand-written energy: subclass BaseEnergyFunction and implement forward.

Its gradient comes from autograd (the default of BaseEnergyFunction).
"""

import torch

from torchebm.core import BaseEnergyFunction


class MyCustomEnergy(BaseEnergyFunction):
    """E(x) = sum(a x^2 + b x^4): x [..., n] -> [...]."""

    def __init__(self, a: float = 1.0, b: float = 0.1):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        return (self.a * x**2 + self.b * x**4).sum(-1)


class NeuralEnergy(BaseEnergyFunction):
    """A small MLP energy, E(x) = mlp(x): x [..., n] -> [...]."""

    def __init__(self, n: int, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        return self.net(x).squeeze(-1)


if __name__ == "__main__":
    x = torch.randn(4, 3)
    print(MyCustomEnergy().gradient(x))
    print(NeuralEnergy(3).gradient(x).shape)
