"""Hand-written subclasses of BaseEnergyFunction keep working, with autograd gradients."""

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location(
    "custom_energy", Path(__file__).parent.parent / "examples" / "custom_energy.py")
custom = importlib.util.module_from_spec(spec)
spec.loader.exec_module(custom)


def test_custom_energy_gradient_is_autograd_of_forward():
    energy = custom.MyCustomEnergy(a=1.5, b=0.2)
    x = torch.randn(5, 3, dtype=torch.float64)
    want = 2 * 1.5 * x + 4 * 0.2 * x**3                     # d/dx (a x^2 + b x^4) by hand
    torch.testing.assert_close(energy.gradient(x), want)
    e, g = energy.energy_and_gradient(x)
    torch.testing.assert_close(e, (1.5 * x**2 + 0.2 * x**4).sum(-1))
    torch.testing.assert_close(g, want)
    torch.testing.assert_close(energy.score(x), -want)
    assert not g.requires_grad


def test_neural_energy_gradient_and_create_graph():
    torch.manual_seed(0)
    energy = custom.NeuralEnergy(3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    g = energy.gradient(x)
    assert g.shape == (4, 3)
    xr = x.clone().requires_grad_(True)
    want = torch.autograd.grad(energy(xr).sum(), xr)[0]
    torch.testing.assert_close(g, want)
    g2 = energy.gradient(x.clone().requires_grad_(True), create_graph=True)
    loss = (g2**2).sum()
    loss.backward()                                      # second derivatives reach the weights
    assert energy.net[0].weight.grad is not None


def test_one_sample_is_a_batch_of_one():
    energy = custom.MyCustomEnergy()
    assert energy(torch.ones(3)).shape == (1,)
    assert energy.gradient(torch.ones(3)).shape == (1, 3)
