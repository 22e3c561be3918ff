"""Built-in energies against independent references: values, gradients, contract."""

import copy
import pickle

import pytest
import torch

from torchebm.core import (BaseEnergyFunction, BoothEnergy, GaussianEnergy, HimmelblauEnergy,
                           RosenbrockEnergy)

from .cases import BUILTINS, example_id

CASES = [(ex, n) for ex in BUILTINS for n in ex.dims]


def _points(n, gen, batch=(7,)):
    return 1.5 * torch.randn(*batch, n, dtype=torch.float64, generator=gen)


@pytest.mark.parametrize("ex,n", CASES, ids=[f"{example_id(e)}-n{n}" for e, n in CASES])
def test_energy_and_gradient_match_independent_reference(ex, n, gen):
    params = ex.params(n)
    energy = ex.cls(**params)
    x = _points(n, gen)
    want = ex.reference(x, **params)
    torch.testing.assert_close(energy(x), want, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    want_grad = torch.autograd.grad(ex.reference(xr, **params).sum(), xr)[0]
    got = energy.gradient(x)
    err = (got - want_grad).abs().max() / want_grad.abs().max().clamp(min=1.0)
    assert err <= 1e-10
    e2, g2 = energy.energy_and_gradient(x)
    assert torch.equal(e2, energy(x)) and torch.equal(g2, got)
    assert torch.equal(energy.score(x), -got)


@pytest.mark.parametrize("ex,n", CASES, ids=[f"{example_id(e)}-n{n}" for e, n in CASES])
def test_gradcheck_of_closed_form(ex, n, gen):
    """Finite differences of the energy agree with the closed-form gradient."""
    energy = ex.cls(**ex.params(n))
    x = _points(n, gen, (3,))
    g = energy.gradient(x)
    h = 1e-6
    for k in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[k] = h
        fd = (energy(x + e) - energy(x - e)) / (2 * h)
        torch.testing.assert_close(g[:, k], fd, rtol=1e-6, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: energy(t), (xg,))


@pytest.mark.parametrize("ex", BUILTINS, ids=example_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_finite_at_minimisers_and_random_points(ex, dtype, gen):
    n = ex.dims[-1]
    energy = ex.cls(**ex.params(n))
    x = 3 * torch.randn(10_000, n, generator=gen).to(dtype)
    assert torch.isfinite(energy.gradient(x)).all()
    for point in ex.minimisers(n):
        p = point.to(dtype)
        e, g = energy.energy_and_gradient(p)
        assert torch.isfinite(g).all()
        tol = 1e-3 if dtype == torch.float32 else 1e-8
        assert g.abs().max() <= tol * max(1.0, abs(ex.minimum(n)))
        assert abs(float(e) - ex.minimum(n)) <= tol * max(1.0, abs(ex.minimum(n)))


@pytest.mark.parametrize("ex", BUILTINS, ids=example_id)
def test_shapes_and_dtypes(ex, gen):
    n = ex.dims[-1]
    energy = ex.cls(**ex.params(n))
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, n, generator=gen).to(dtype)
        e, g = energy.energy_and_gradient(x)
        assert e.shape == (2, 3) and g.shape == (2, 3, n)
        assert e.dtype == dtype and g.dtype == dtype
        assert energy(x).dtype == dtype and energy.gradient(x).dtype == dtype
    one = torch.randn(n, dtype=torch.float64, generator=gen)
    assert energy(one).shape == (1,)
    assert energy.gradient(one).shape == (1, n)
    empty = torch.zeros(0, n, dtype=torch.float64)
    assert energy(empty).shape == (0,) and energy.gradient(empty).shape == (0, n)


def test_float32_is_computed_in_float32_not_rounded_float64(gen):
    """float32 in: float32 arithmetic; float64 in: the same value as the float64 reference."""
    x = torch.randn(100, 4, dtype=torch.float64, generator=gen)
    energy = RosenbrockEnergy(a=1.0000001, b=100.0)
    ref = (100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1.0000001 - x[:, :-1]) ** 2).sum(-1)
    torch.testing.assert_close(energy(x), ref, rtol=1e-15, atol=1e-12)
    assert energy(x.float()).dtype == torch.float32


def test_gaussian_contract_errors():
    with pytest.raises(ValueError, match="mean"):
        GaussianEnergy(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="square"):
        GaussianEnergy(torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianEnergy(torch.zeros(2), torch.zeros(2, 2))           # singular
    with pytest.raises(ValueError, match="positive definite"):
        GaussianEnergy(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="cov"):
        GaussianEnergy(torch.zeros(3), torch.eye(2))                # mismatched sizes
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="n = 3|length 3|has 3|got 3| 3"):
        energy(torch.zeros(4, 3))                                   # x of the wrong dimension


def test_dimension_requirements():
    with pytest.raises(ValueError, match="n >= 2"):
        RosenbrockEnergy()(torch.zeros(3, 1))
    for cls in (HimmelblauEnergy, BoothEnergy):
        with pytest.raises(ValueError, match="needs x of dimension n = 2, got n = 3"):
            cls()(torch.zeros(3, 3))
        with pytest.raises(ValueError, match="needs x of dimension n = 2, got n = 1"):
            cls()(torch.zeros(3, 1))


def test_gaussian_known_values():
    """0.5 d^T S^-1 d by hand: S = [[2, 0], [0, 4]], d = (2, 4) -> 0.5*(4/2 + 16/4) = 3."""
    energy = GaussianEnergy(torch.tensor([1.0, -1.0]), torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    x = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    assert float(energy(x)) == pytest.approx(3.0, abs=1e-14)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[1.0, 1.0]],
                                                                dtype=torch.float64))


def test_parameters_are_buffers_that_move_and_round_trip(tmp_path):
    energy = RosenbrockEnergy(a=2.0, b=50.0)
    assert set(dict(energy.named_buffers())) == {"a", "b"}
    state = energy.state_dict()
    other = RosenbrockEnergy()
    other.load_state_dict(state)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(other(x), energy(x))
    assert torch.equal(copy.deepcopy(energy)(x), energy(x))
    assert torch.equal(pickle.loads(pickle.dumps(energy))(x), energy(x))
    torch.save(energy, tmp_path / "e.pt")
    loaded = torch.load(tmp_path / "e.pt", weights_only=False)
    assert torch.equal(loaded(x), energy(x))
    assert energy.double().a.dtype == torch.float64


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        BaseEnergyFunction()


def test_builtins_are_generated_code():
    import inspect
    from torchebm.core._generated import gaussian
    text = inspect.getsource(gaussian)
    assert text.startswith("# @generated by torchebm.symbolic from definitions/gaussian.toml")
    assert "DO NOT EDIT" in text.splitlines()[0]
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2))
    assert energy.class_source == text
    # the instance's source is the class's with this instance's values as defaults
    assert "def __init__(self, mean=(0.0, 0.0), cov=((1.0, 0.0), (0.0, 1.0)), *, " \
           "trainable=False):" in energy.source
