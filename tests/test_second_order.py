"""Second derivatives: hessian, hessian_vector_product, hessian_diagonal, laplacian.

References are independent of the generated code: autograd Hessians of the
plain-torch reference formulas in ``examples.py``, and Hessians derived by
hand in float64. ``test_oracle.py`` checks every construct and literature
case against autograd of the generated forward through ``verify``.
"""

import math

import pytest
import torch

from torchebm.core import (AckleyEnergy, BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy,
                           HarmonicEnergy, RastriginEnergy, RosenbrockEnergy)
from torchebm.errors import MemoryLimitError, ShapeError
from torchebm.symbolic import from_expression

from .cases import BUILTINS, SECOND_ORDER_KINKED, example_id

RTOL = 1e-9


def _rel(got, want):
    return float((got - want).abs().max() / want.abs().max().clamp(min=1.0))


def _reference_hessian(fn, x):
    return torch.stack([torch.autograd.functional.hessian(lambda z: fn(z), x[k])
                        for k in range(x.shape[0])])


@pytest.mark.parametrize("ex", BUILTINS, ids=example_id)
def test_builtins_match_autograd_of_their_reference_formulas(ex):
    for n in ex.dims:
        params = ex.params(n)
        energy = ex.cls(**params)
        g = torch.Generator().manual_seed(n)
        x = torch.randn(4, n, dtype=torch.float64, generator=g)
        v = torch.randn(4, n, dtype=torch.float64, generator=g)
        want = _reference_hessian(lambda z: ex.reference(z, **params), x)
        diag = torch.diagonal(want, dim1=-2, dim2=-1)
        assert _rel(energy.hessian(x), want) <= RTOL
        assert _rel(energy.hessian_vector_product(x, v), (want @ v.unsqueeze(-1))[..., 0]) <= RTOL
        assert _rel(energy.hessian_diagonal(x), diag) <= RTOL
        assert _rel(energy.laplacian(x), diag.sum(-1)) <= RTOL
        assert torch.equal(energy.score(x), -energy.gradient(x))


def test_hand_derived_hessians():
    x = torch.randn(3, 4, dtype=torch.float64)
    # Harmonic: H = k I
    h = HarmonicEnergy(k=1.5).hessian(x)
    torch.testing.assert_close(h, 1.5 * torch.eye(4, dtype=torch.float64).expand(3, 4, 4),
                               rtol=0, atol=1e-15)
    # Gaussian: H = cov^-1, whatever x
    a = torch.randn(4, 4, dtype=torch.float64)
    cov = a @ a.T + torch.eye(4, dtype=torch.float64)
    gauss = GaussianEnergy(torch.randn(4, dtype=torch.float64), cov)
    prec = torch.linalg.inv(cov)
    torch.testing.assert_close(gauss.hessian(x), prec.expand(3, 4, 4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gauss.laplacian(x), torch.trace(prec).expand(3), rtol=1e-12,
                               atol=0)
    # DoubleWell h (x^2 - b^2)^2: d2/dx2 = h (12 x^2 - 4 b^2), diagonal
    dw = DoubleWellEnergy(barrier_height=2.0, b=1.0)
    torch.testing.assert_close(dw.hessian_diagonal(x), 2.0 * (12 * x**2 - 4), rtol=1e-13,
                               atol=1e-13)
    # Rastrigin at 0: each d2/dx2 = 2 + 4 pi^2 a
    z = torch.zeros(2, 5, dtype=torch.float64)
    torch.testing.assert_close(RastriginEnergy(a=10.0).laplacian(z),
                               torch.full((2,), 5 * (2 + 40 * math.pi**2), dtype=torch.float64))
    # Rosenbrock n = 2: [[2 - 4b(x1 - x0^2) + 8b x0^2, -4b x0], [-4b x0, 2b]]
    p = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    b = 100.0
    x0, x1 = 0.3, -0.7
    want = torch.tensor([[[2 - 4 * b * (x1 - x0**2) + 8 * b * x0**2, -4 * b * x0],
                          [-4 * b * x0, 2 * b]]], dtype=torch.float64)
    torch.testing.assert_close(RosenbrockEnergy(a=1.0, b=b).hessian(p), want, rtol=1e-13,
                               atol=1e-12)


def test_singular_points_are_finite_and_documented():
    # Ackley's cone at the origin has no Hessian; the sqrt term's derivatives are taken
    # as 0 there (as its gradient is), leaving the cosine term: (e c^2 / n) I
    for n in (1, 2, 5):
        z = torch.zeros(1, n, dtype=torch.float64)
        ackley = AckleyEnergy()
        c = 2 * math.pi
        want = math.e * c**2 / n * torch.eye(n, dtype=torch.float64)
        torch.testing.assert_close(ackley.hessian(z)[0], want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(ackley.laplacian(z), torch.tensor([math.e * c**2],
                                                                      dtype=torch.float64))
    # even powers of a norm are smooth: |x|^2 has Hessian 2 I at the origin too
    square = from_expression("norm(x)**2")
    z = torch.zeros(1, 3, dtype=torch.float64)
    torch.testing.assert_close(square.hessian(z)[0], 2 * torch.eye(3, dtype=torch.float64))
    norm = from_expression("sqrt(sum(x**2))")
    z = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.equal(norm.hessian(z), torch.zeros(2, 3, 3, dtype=torch.float64))
    assert torch.equal(norm.laplacian(z), torch.zeros(2, dtype=torch.float64))
    # away from the origin: (I - u u^T) / |x|
    p = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    u = p[0] / 5
    torch.testing.assert_close(norm.hessian(p)[0], (torch.eye(3, dtype=torch.float64)
                                                     - torch.outer(u, u)) / 5)


def test_products_with_zero_factors_are_exact():
    energy = from_expression("prod(x)")
    x = torch.tensor([[0.0, 2.0, 3.0, 0.5], [0.0, 0.0, 3.0, 2.0]], dtype=torch.float64)
    # H_ij = prod of x_k over k not in {i, j} (i != j), 0 on the diagonal
    want = torch.zeros(2, 4, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                if i != j:
                    want[b, i, j] = math.prod(float(x[b, k]) for k in range(4) if k not in (i, j))
    torch.testing.assert_close(energy.hessian(x), want, rtol=0, atol=0)
    v = torch.tensor([[1.0, -1.0, 0.5, 2.0]] * 2, dtype=torch.float64)
    torch.testing.assert_close(energy.hessian_vector_product(x, v),
                               (want @ v.unsqueeze(-1))[..., 0], rtol=0, atol=1e-15)


def test_direct_diagonal_agrees_with_products_and_chunks():
    for formula in ["sum(x**4 - 3*x**2)",
                    "sum(cos(x[i] - x[j]) for i in range(n) for j in range(i + 1, n))",
                    "sum(x[i]*x[j]**2 for i in range(n) for j in range(n))",
                    "log(sum(exp(x**2/4))) + sum(x[i]*x[(i+1) % n] for i in range(n))"]:
        energy = from_expression(formula)
        assert energy.structured_hessian_diagonal, formula
        x = torch.randn(6, 5, dtype=torch.float64)
        lay, der = energy._inputs(x)[1:]
        direct = energy.hessian_diagonal(x)
        energy.max_hessian_elements = 2 * 6 * 5     # two unit vectors per chunk
        from_products = energy._diagonal_from_products(x, lay, der)
        assert _rel(direct, from_products) <= 1e-12, formula
    x = torch.randn(5, 4, dtype=torch.float64)
    mixture = from_expression("-logsumexp(-0.5*sum((x - M[k, :])**2) for k in range(len(M)))",
                              M=torch.randn(3, 4, dtype=torch.float64))
    griewank = from_expression("1 + sum(x**2)/4000 - prod(cos(x[i]/sqrt(i + 1)) "
                               "for i in range(n))")
    for energy, direct in ((mixture, True), (griewank, False)):
        assert energy.structured_hessian_diagonal == direct
        want = torch.diagonal(_reference_hessian(lambda z: energy(z.unsqueeze(0))[0], x),
                              dim1=-2, dim2=-1)
        assert _rel(energy.hessian_diagonal(x), want) <= RTOL


def test_shapes_dtypes_and_input_errors():
    energy = RastriginEnergy()
    x = torch.randn(2, 3, 4)
    assert energy.hessian(x).shape == (2, 3, 4, 4)
    assert energy.hessian_vector_product(x, torch.ones_like(x)).shape == (2, 3, 4)
    assert energy.hessian_diagonal(x).shape == (2, 3, 4)
    assert energy.laplacian(x).shape == (2, 3)
    for dt in (torch.float32, torch.float64):
        xd = x.to(dt)
        outs = [energy.hessian(xd), energy.hessian_vector_product(xd, xd),
                energy.hessian_diagonal(xd), energy.laplacian(xd),
                *energy.gradient_and_laplacian(xd)]
        assert all(o.dtype == dt for o in outs)
    one = torch.randn(4)
    assert energy.hessian_vector_product(one, torch.ones(4)).shape == (1, 4)
    assert energy.laplacian(one).shape == (1,)
    with pytest.raises(ShapeError, match="v has shape"):
        energy.hessian_vector_product(x, torch.ones(3, 4))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        energy.hessian_vector_product(x, [1.0, 2.0])
    big = torch.randn(100, 64)
    with pytest.raises(MemoryLimitError, match="max_elements"):
        energy.hessian(big, max_elements=1000)
    assert energy.hessian(big, max_elements=100 * 64 * 64).shape == (100, 64, 64)
    energy.max_hessian_elements = 10
    with pytest.raises(MemoryLimitError, match="more than the limit of 10"):
        energy.hessian(x)


def test_outputs_are_detached_unless_create_graph():
    energy = from_expression("sum(a*cos(x))", trainable=True, a=1.5)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert not energy.laplacian(x).requires_grad
    lap = energy.laplacian(x, create_graph=True)
    (da,) = torch.autograd.grad(lap.sum(), energy.a)
    # laplacian = -a sum(cos x): d/da = -sum(cos x)
    torch.testing.assert_close(da, -torch.cos(x).sum(), rtol=1e-13, atol=1e-13)
    xg = x.clone().requires_grad_(True)
    hv = energy.hessian_vector_product(xg, torch.ones_like(x), create_graph=True)
    (dx,) = torch.autograd.grad(hv.sum(), xg)
    torch.testing.assert_close(dx, 1.5 * torch.sin(x), rtol=1e-13, atol=1e-13)


class _Quartic(BaseEnergyFunction):
    def forward(self, x):
        return (x**4).sum(-1) / 4 + x[..., 0] * x[..., -1]


def test_hand_written_energies_fall_back_to_autograd():
    energy = _Quartic()
    x = torch.randn(3, 4, dtype=torch.float64)
    want = torch.diag_embed(3 * x**2)
    want[:, 0, -1] += 1
    want[:, -1, 0] += 1
    torch.testing.assert_close(energy.hessian(x), want)
    v = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(energy.hessian_vector_product(x, v),
                               (want @ v.unsqueeze(-1))[..., 0])
    torch.testing.assert_close(energy.hessian_diagonal(x), 3 * x**2)
    torch.testing.assert_close(energy.laplacian(x), (3 * x**2).sum(-1))
    with pytest.raises(MemoryLimitError, match="max_elements"):
        energy.hessian(torch.randn(10, 4), max_elements=5)


def test_mixture_curvature_is_centred_far_from_the_means():
    # two components at (0, 0) and (3, 0), s = 0.5, and x = (1.5, y), equidistant:
    # laplacian(-log p) = n / s^2 - Var_r((x - M_k) / s^2) = 8 - 36 = -28 for every y
    energy = from_expression(
        "-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2)/s**2 for k in range(len(w)))",
        w=torch.tensor([0.5, 0.5]), M=torch.tensor([[0.0, 0.0], [3.0, 0.0]]), s=0.5)
    assert energy.structured_hessian_diagonal
    for y in (0.3, 30.0, 1000.0):
        x = torch.tensor([[1.5, y]], dtype=torch.float64)
        assert abs(float(energy.laplacian(x)) + 28) < 1e-8 * 28, y
    x32 = torch.tensor([[1.5, 30.0], [1.5, 100.0]])
    assert (energy.laplacian(x32) + 28).abs().max() < 0.01 * 28


def test_hand_written_energies_flat_in_x_and_empty_dimensions():
    class Linear(BaseEnergyFunction):
        def forward(self, x):
            return (2 * x).sum(-1)

    energy = Linear()
    x = torch.randn(3, 4)
    assert torch.equal(energy.gradient(x), torch.full((3, 4), 2.0))
    assert torch.equal(energy.hessian(x), torch.zeros(3, 4, 4))
    assert torch.equal(energy.hessian_vector_product(x, x), torch.zeros(3, 4))
    grad, lap = energy.gradient_and_laplacian(x)
    assert torch.equal(lap, torch.zeros(3)) and torch.equal(grad, torch.full((3, 4), 2.0))
    assert energy.hessian_diagonal(torch.randn(2, 0)).shape == (2, 0)
    with pytest.raises(TypeError, match="max_elements must be an int"):
        energy.hessian(x, max_elements="big")


def test_hessian_memory_guard_counts_the_points_of_pair_sums():
    pairs = from_expression("sum(1/(1 + (x[j] - x[i])**2) for i in range(n) "
                            "for j in range(i + 1, n))")
    x = torch.randn(64, 64)
    # 64 * 64 * 64 output elements fit 2**20, but the pair level has 2016 points
    with pytest.raises(MemoryLimitError, match="2016 points"):
        pairs.hessian(x, max_elements=2**20)
    assert pairs.hessian(x[:2, :8]).shape == (2, 8, 8)


def test_kinks_of_functions_of_functions():
    # abs of a maximum: SymPy must know the maximum is real to differentiate twice
    energy = from_expression("sum(abs(maximum(x, 0.25)))")
    x = torch.tensor([[-1.0, 0.1, 0.5, 2.0]], dtype=torch.float64)
    assert torch.equal(energy.hessian(x), torch.zeros(1, 4, 4, dtype=torch.float64))
    assert torch.equal(energy.gradient(x), torch.tensor([[0.0, 0.0, 1.0, 1.0]],
                                                        dtype=torch.float64))


@pytest.mark.parametrize("formula", SECOND_ORDER_KINKED)
def test_second_derivatives_of_kinked_and_antisymmetric_formulas(formula):
    a = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7], [0.4, 0.1, 2.0]], dtype=torch.float64)
    energy = from_expression(formula, **({"A": a} if "A" in formula else {}))
    x = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.2, -0.7]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.5, -2.0], [0.3, -1.0, 0.7]], dtype=torch.float64)
    want = _reference_hessian(lambda z: energy(z.unsqueeze(0))[0], x)
    assert _rel(energy.hessian(x), want) <= RTOL
    assert _rel(energy.hessian_vector_product(x, v), (want @ v.unsqueeze(-1))[..., 0]) <= RTOL
    assert _rel(energy.hessian_diagonal(x), torch.diagonal(want, dim1=-2, dim2=-1)) <= RTOL


@pytest.mark.parametrize("x0", [1e-60, -3e-55, 1e-30, 1e-8, 0.3])
def test_ackley_diagonal_at_one_dimension_near_the_origin(x0):
    """At n = 1 the norm is |x|: its own curvature (1 - u^2)/|x| is exactly 0, but it
    was added to the diagonal as two terms of order 1/|x| (about 1e60 here), which
    cancelled to 0 and took the true value (about 106.5) with them.

    Reference: E(x) = -a exp(-b |x|) - exp(cos(c x)) + a + e for x != 0, so
    E'' = -a b^2 exp(-b|x|) + c^2 exp(cos cx) (cos cx - sin^2 cx), in 50-digit mpmath.
    """
    import mpmath
    mpmath.mp.dps = 50
    a, b, c = mpmath.mpf(20), mpmath.mpf("0.2"), 2 * mpmath.pi
    t = mpmath.mpf(x0)
    want = (-a * b**2 * mpmath.exp(-b * abs(t))
            + c**2 * mpmath.exp(mpmath.cos(c * t)) * (mpmath.cos(c * t) - mpmath.sin(c * t)**2))
    x = torch.tensor([[x0]], dtype=torch.float64)
    E = AckleyEnergy(a=20.0, b=0.2, c=float(2 * mpmath.pi))
    got = E.hessian_diagonal(x)
    assert got.shape == (1, 1)
    assert abs(float(got[0, 0]) - float(want)) <= 1e-12 * abs(float(want))
    _, laplacian = E.gradient_and_laplacian(x)       # the shared-pass entry point
    assert abs(float(laplacian[0]) - float(want)) <= 1e-12 * abs(float(want))
