"""``energy.compile()``: generated functions called as Inductor graphs without Dynamo's
per-call work (``torchebm.core._direct``), and the ``torch.compile`` path they fall
back to when an autograd graph is needed.

References are plain torch formulas written here, differentiated by autograd.
torch.compile takes seconds per graph: these tests are marked slow and kept few.
"""

import pickle

import pytest
import torch

from torchebm.core import DoubleWellEnergy, GaussianEnergy

T = torch.float64


def _double_well(x, a, b):          # barrier_height * sum((x^2 - b^2)^2)
    return a * ((x**2 - b**2) ** 2).sum(-1)


def _autograd(f, x):
    x = x.detach().clone().requires_grad_(True)
    e = f(x)
    return e.detach(), torch.autograd.grad(e.sum(), x)[0]


@pytest.mark.slow
def test_direct_calls_follow_parameters_and_autograd_calls_use_torch_compile():
    x = torch.randn(16, 3, dtype=T, generator=torch.Generator().manual_seed(0))
    energy = DoubleWellEnergy().compile()
    e_ref, g_ref = _autograd(lambda t: _double_well(t, 2.0, 1.0), x)
    torch.testing.assert_close(energy.gradient(x), g_ref)
    e, g = energy.energy_and_gradient(x)
    torch.testing.assert_close(e, e_ref)
    torch.testing.assert_close(g, g_ref)
    graphs = len(energy._direct)
    assert graphs == 2                     # _gradient and _energy_and_gradient, called directly
    # a parameter changed in place is a graph input: seen, nothing recompiled
    energy.barrier_height = 3.0
    energy.b = 1.5
    e_ref, g_ref = _autograd(lambda t: _double_well(t, 3.0, 1.5), x)
    torch.testing.assert_close(energy.gradient(x), g_ref)
    assert len(energy._direct) == graphs
    # another shape is another signature; a non-contiguous x another stride
    xt = torch.randn(3, 16, dtype=T, generator=torch.Generator().manual_seed(1)).T
    torch.testing.assert_close(energy.gradient(xt), _autograd(
        lambda t: _double_well(t, 3.0, 1.5), xt)[1])
    assert len(energy._direct) == graphs + 1
    # create_graph: the torch.compile function, which records the graph
    xg = x.clone().requires_grad_(True)
    g = energy.gradient(xg, create_graph=True)
    assert g.requires_grad
    (h,) = torch.autograd.grad(g.sum(), xg)
    torch.testing.assert_close(h, 4 * 3.0 * (3 * x**2 - 1.5**2))     # d/dx of 4 a x (x^2 - b^2)
    assert len(energy._direct) == graphs + 1
    # pickling drops the compiled functions
    assert pickle.loads(pickle.dumps(energy))._fused is None


@pytest.mark.slow
def test_parameter_only_values_are_graph_inputs():
    """Gaussian: inverse(cov) is derived from the parameters outside the graph and passed
    in, so a new covariance changes the gradient without a new graph."""
    x = torch.randn(8, 2, dtype=T, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor([0.5, -1.0], dtype=T)
    energy = GaussianEnergy(mean, torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=T)).compile()
    energy.gradient(x)
    cov = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=T)
    energy.cov = cov
    want = torch.linalg.solve(cov, (x - mean).T).T                   # cov^-1 (x - mean)
    torch.testing.assert_close(energy.gradient(x), want)
    assert len(energy._direct) == 1


def test_compile_options_turn_the_direct_calls_off():
    energy = DoubleWellEnergy().compile(backend="eager")
    assert energy._direct is None
    x = torch.randn(4, 3, dtype=T, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(energy.gradient(x), _autograd(
        lambda t: _double_well(t, 2.0, 1.0), x)[1])
