"""Compiled energies behave like torch modules: dtypes, parameters, state, errors."""

import warnings

import pytest
import torch

from torchebm.core import BaseEnergyFunction, GaussianEnergy, HarmonicEnergy
from torchebm.errors import ParameterError, ShapeError
from torchebm.symbolic import from_expression


@pytest.mark.parametrize("formula", ["sum(maximum(x, 0))", "sum(where(x > 0, 0.1*x, 0.3*x))",
                                     "sum(where(x > 0, 1, 0))", "sum(clamp(x, 0, 1))",
                                     "sum(sign(x))"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_piecewise_outputs_follow_input_dtype(formula, dtype):
    x = torch.randn(4, 3, dtype=torch.float64)
    energy = from_expression(formula)
    e, g = energy.energy_and_gradient(x.to(dtype))
    assert e.dtype == dtype and g.dtype == dtype and energy(x.to(dtype)).dtype == dtype
    if dtype == torch.float64 and formula.startswith("sum(where(x > 0, 0.1"):
        want = torch.where(x > 0, torch.tensor(0.1, dtype=torch.float64),
                           torch.tensor(0.3, dtype=torch.float64))
        assert torch.equal(g, want)                  # exactly 0.1 in float64, not float32's


def test_flat_energy_has_zero_gradient():
    x = torch.randn(4, 3)
    assert torch.equal(from_expression("sum(sign(x))").gradient(x), torch.zeros_like(x))


def test_parameters_and_optimiser():
    energy = from_expression("sum(a*(x - m)**2)", a=1.0, m=torch.zeros(2), trainable=True)
    names = {name for name, _ in energy.named_parameters()}
    assert names == {"a", "m"} and len(list(energy.parameters())) == 2
    opt = torch.optim.SGD(energy.parameters(), lr=0.1)
    x = torch.ones(8, 2, dtype=torch.float64)
    loss = energy(x).mean()
    loss.backward()
    opt.step()
    assert energy.m.grad is not None
    with pytest.raises(ParameterError, match="nope"):
        from_expression("sum(a*x**2)", trainable=["nope"])
    assert HarmonicEnergy(k=2.0, trainable=True).k.requires_grad


def test_load_state_dict_checks_constraints():
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        energy.load_state_dict({"mean": torch.zeros(2), "cov": -torch.eye(2)})


def test_hand_written_energy_batches_a_single_sample():
    class Quadratic(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * (x**2).sum(-1)

    energy = Quadratic()
    assert energy(torch.ones(3)).shape == (1,)
    assert energy.gradient(torch.ones(3)).shape == (1, 3)


def test_zero_dimension_is_a_clear_error():
    with pytest.raises(ShapeError, match="n = 0"):
        from_expression("sum(x**2)")(torch.zeros(3, 0))


def test_tensor_parameters_are_stored_in_float64():
    energy = from_expression("sum((x - m)**2)", m=torch.tensor([0.1, 0.2], dtype=torch.float32))
    assert energy.m.dtype == torch.float64
    x = torch.zeros(1, 2, dtype=torch.float64)
    want = (torch.tensor([0.1, 0.2], dtype=torch.float32).double() ** 2).sum()
    assert float(energy(x)) == float(want)


def test_non_tensor_and_integer_inputs_are_refused_clearly():
    energy = from_expression("sum(x**2)")
    with pytest.raises(TypeError, match="torch.Tensor"):
        energy([[1.0, 2.0]])
    with pytest.raises(TypeError, match="floating-point"):
        energy(torch.ones(2, 2, dtype=torch.int64))


def test_resizing_a_parameter_keeps_its_dtype_and_freeze():
    from torchebm.symbolic import from_expression
    energy = from_expression("-logsumexp(l[k] - sum((x - M[k, :])**2) for k in range(len(l)))",
                             l=torch.zeros(2, dtype=torch.float64),
                             M=torch.randn(2, 3, dtype=torch.float64), trainable=True)
    energy.float()
    energy.M.requires_grad_(False)
    old = energy.l
    optimiser = torch.optim.SGD([energy.l], lr=0.1)
    with pytest.warns(UserWarning, match=r"M changed shape from \[2, 3\] to \[4, 3\].*"
                                         r"build the optimiser again"):
        energy.M = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="l changed shape"):
        energy.l = [0.0, 0.0, 0.0, 0.0]
    assert energy.l is not old and optimiser.param_groups[0]["params"][0] is old
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the same shape: the same Parameter, quiet
        energy.l = [0.0, 0.0, 0.0, 0.0]
    assert energy.M.dtype == torch.float32 and energy.l.dtype == torch.float32
    assert energy.M.requires_grad is False and energy.l.requires_grad is True
    x = torch.randn(5, 3)
    want = -torch.logsumexp(-((x[:, None, :] - energy.M.detach()) ** 2).sum(-1), -1)
    torch.testing.assert_close(energy(x), want)


def test_contrastive_divergence_under_no_grad_builds_no_graph():
    from torchebm.losses import ContrastiveDivergence
    from torchebm.samplers import LangevinDynamics
    from torchebm.symbolic import from_expression
    energy = from_expression("sum(a*x**2)", a=1.5, trainable=True)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01))
    x, neg = torch.randn(4, 2), torch.randn(4, 2)
    with torch.no_grad():
        loss = cd.compute_loss(x, neg)
    assert not loss.requires_grad
    a = 1.5
    ep, en = a * (x**2).sum(-1), a * (neg**2).sum(-1)
    want = ep.mean() - en.mean() + 0.001 * (ep.square().mean() + en.square().mean())
    torch.testing.assert_close(loss, want)


def test_assigning_an_nn_parameter_checks_rank_and_constraint():
    """E.cov = nn.Parameter(...) replaces the parameter (an optimiser must be built on
    the new one) and is checked like the constructor's value (an attack-pass finding:
    it skipped the checks, so an indefinite covariance got in)."""
    from torch import nn
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2), trainable=True)
    with pytest.raises(ParameterError, match="positive definite"):
        energy.cov = nn.Parameter(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ParameterError, match="to be a vector"):
        energy.mean = nn.Parameter(torch.zeros(2, 2))
    new = nn.Parameter(2 * torch.eye(2, dtype=torch.float64))
    energy.cov = new
    assert energy.cov is new
    x = torch.ones(1, 2, dtype=torch.float64)
    torch.testing.assert_close(energy(x), torch.tensor([0.5], dtype=torch.float64))  # x^T x / 4
