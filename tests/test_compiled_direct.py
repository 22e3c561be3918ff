"""``energy.compile()``: generated functions called as Inductor graphs without Dynamo's
per-call work (``torchebm.core._direct``), and the ``torch.compile`` path they fall
back to when an autograd graph is needed.

References are plain torch formulas written here, differentiated by autograd.
torch.compile takes seconds per graph: these tests are marked slow and kept few.
"""

import pickle

import pytest
import torch

from torchebm.core import DoubleWellEnergy, GaussianEnergy, RosenbrockEnergy

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


@pytest.mark.slow
def test_replayed_calls_see_every_parameter_write_and_equal_the_closed_form():
    """After the first call, a compiled call with the same kind of ``x`` replays the
    Inductor graph without flattening its arguments (``DirectCalls._fast``). Each way of
    changing a parameter (in place, ``.data = ...``, ``module.to(dtype)``) must reach
    the next call; references are the double well written here, differentiated by
    autograd, and its Hessian-vector product by hand: 4 a (3 x^2 - b^2) v."""
    x = torch.randn(16, 3, dtype=T, generator=torch.Generator().manual_seed(4))
    v = torch.randn(16, 3, dtype=T, generator=torch.Generator().manual_seed(5))
    energy = DoubleWellEnergy().compile()
    direct = energy._direct

    def check(a, b, y=x, **tol):
        torch.testing.assert_close(energy.gradient(y), _autograd(
            lambda t: _double_well(t, a, b), y)[1], **tol)
        torch.testing.assert_close(energy.hessian_vector_product(y, v.to(y.dtype)),
                                   4 * a * (3 * y**2 - b**2) * v.to(y.dtype), **tol)

    check(2.0, 1.0)
    graphs = len(direct)
    assert len(direct._fast) == 2             # gradient and HVP recorded for replay
    checked = direct._checked
    calls = []

    def counting(*args):
        calls.append(args[1])
        return checked(*args)

    direct._checked = counting
    check(2.0, 1.0)
    assert calls == []                        # both calls replayed
    energy.b.fill_(1.5)                       # in place
    check(2.0, 1.5)
    energy.barrier_height.data = torch.tensor(3.0, dtype=T)     # a new tensor under .data
    check(3.0, 1.5)
    energy.barrier_height = 0.5               # assignment through the module
    check(0.5, 1.5)
    assert calls                              # each write sent a call through the checks
    assert len(direct) == graphs              # ... and compiled nothing anew
    energy.to(torch.float32)                  # another dtype: new signatures
    check(0.5, 1.5, y=x.float(), rtol=1e-5, atol=1e-5)
    energy.to(T)
    energy.b.mul_(2.0)
    check(0.5, 3.0)


def _rosenbrock(x, a, b):           # sum over i < n-1 of b (x[i+1] - x[i]^2)^2 + (a - x[i])^2
    return (b * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (a - x[..., :-1]) ** 2).sum(-1)


@pytest.mark.slow
def test_compiled_shifted_slice_gradient_equals_autograd_of_an_independent_rosenbrock():
    # the gradient adds the x[i + 1] term into [1, n) as one concatenation (_rt.add_slice),
    # which Inductor stores piece by piece: every column, the first and the last included
    energy = RosenbrockEnergy(a=0.5, b=3.0).to(T).compile()
    x = torch.randn(37, 9, dtype=T, generator=torch.Generator().manual_seed(11))
    e_want, g_want = _autograd(lambda y: _rosenbrock(y, 0.5, 3.0), x)
    for _ in range(2):                  # the compiling call, then the replayed one
        e, g = energy.energy_and_gradient(x)
        torch.testing.assert_close(e, e_want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(energy.gradient(x), g_want, rtol=1e-12, atol=1e-12)
