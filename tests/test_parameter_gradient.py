"""Closed-form parameter gradients (``parameter_gradient``, ``parameter_gradient_sum``)
and contrastive divergence's graph-free backward, against autograd of independent
plain-torch formulas in float64.

Each reference below is written from the energy's textbook formula as a function of
its parameters (not from the generated code); its derivatives come from autograd.
"""

import inspect
import math
import re

import pytest
import torch
from torch import nn

from torchebm.core import (AckleyEnergy, BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy,
                           RastriginEnergy, RosenbrockEnergy)
from torchebm.errors import ParameterError, ShapeError
from torchebm.losses import (ContrastiveDivergence, ParallelTemperingCD,
                             PersistentContrastiveDivergence)
from torchebm.samplers import LangevinDynamics
from torchebm.symbolic import from_expression

from .cases import seeded_randn as _randn
from .cases import seeded_spd as _spd

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _x(b=5, n=3, seed=0):
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed), dtype=D)


def _cases():
    """name -> (energy, {parameter name: value}, plain formula f(x [B, n], **params) -> [B])."""
    n, k = 3, 4
    cases = {}

    def add(name, energy, formula):
        values = {p: t.detach().clone() for p, t in energy.named_parameters()}
        cases[name] = (energy, values, formula)

    add("double_well", DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True),
        lambda x, barrier_height, b: barrier_height * ((x**2 - b**2)**2).sum(-1))
    add("rastrigin", RastriginEnergy(a=7.0, trainable=True),
        lambda x, a: a * x.shape[-1] + (x**2 - a * torch.cos(2 * math.pi * x)).sum(-1))
    add("rosenbrock", RosenbrockEnergy(a=1.2, b=30.0, trainable=True),
        lambda x, a, b: (b * (x[..., 1:] - x[..., :-1]**2)**2 + (a - x[..., :-1])**2).sum(-1))
    add("ackley", AckleyEnergy(trainable=True),
        lambda x, a, b, c: (-a * torch.exp(-b * torch.sqrt((x**2).mean(-1)))
                            - torch.exp(torch.cos(c * x).mean(-1)) + a + math.e))
    # mean and covariance: the covariance reaches the energy only through inverse(cov),
    # a derived value (its closed-form adjoint is chained through _derive)
    add("gaussian", GaussianEnergy(_randn(n, seed=1), _spd(n, 2), trainable=True),
        lambda x, mean, cov: 0.5 * (((x - mean) @ torch.linalg.inv(cov)) * (x - mean)).sum(-1))
    add("mixture", from_expression(
        "-logsumexp(logits[k] - 0.5*sum((x - M[k, :])**2)*exp(-2*log_s[k]) - n*log_s[k] "
        "for k in range(len(logits)))",
        logits=_randn(k, seed=3), M=_randn(k, n, seed=4), log_s=0.2 * _randn(k, seed=5),
        trainable=True),
        lambda x, logits, M, log_s: -torch.logsumexp(
            logits - 0.5 * ((x.unsqueeze(-2) - M)**2).sum(-1) * torch.exp(-2 * log_s)
            - x.shape[-1] * log_s, -1))
    add("logdet", from_expression(
        "0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S)", mu=_randn(n, seed=6),
        S=_spd(n, 7), trainable=True),
        lambda x, mu, S: 0.5 * (((x - mu) @ torch.linalg.inv(S)) * (x - mu)).sum(-1)
        + 0.5 * torch.logdet(S))
    add("matrix_rows", from_expression(
        "sum(tanh(W @ x + c)) + dot(u, x)", W=_randn(k, n, seed=8), c=_randn(k, seed=9),
        u=_randn(n, seed=10), trainable=True),
        lambda x, W, c, u: torch.tanh(x @ W.T + c).sum(-1) + x @ u)
    add("matrix_gather", from_expression(
        "sum(sum(M[i, j]*x[j] for j in range(i))**2 for i in range(n))",
        M=_randn(n, n, seed=11), trainable=True),
        lambda x, M: ((x @ torch.tril(M, -1).T)**2).sum(-1))
    add("slices_and_roots", from_expression(
        "sum(c[i+1]*x[i]**2 for i in range(n-1)) + c[0]*x[0] + k*x[2] + sum(c**2)",
        c=_randn(n, seed=12), k=2.0, trainable=True),
        lambda x, c, k: (c[1:] * x[..., :-1]**2).sum(-1) + c[0] * x[..., 0] + k * x[..., 2]
        + (c**2).sum())
    add("prod_norm", from_expression(
        "prod(a[i]*x[i] for i in range(n)) + s*norm(x - mu)", a=_randn(n, seed=13),
        mu=_randn(n, seed=14), s=1.5, trainable=True),
        lambda x, a, mu, s: (a * x).prod(-1) + s * torch.linalg.vector_norm(x - mu, dim=-1))
    # a scalar parameter times a term that reads another per-sample reduction: its
    # adjoint is k's factor pulled out of the sum, sum(x**2) per sample (not the
    # [B, 1] view of it broadcast into the sum, which made a [B, B] gradient)
    add("scale_times_inner_sum", from_expression("sum(k*x**3*sum(x**2))", k=0.7,
                                                 trainable=True),
        lambda x, k: k * (x**3).sum(-1) * (x**2).sum(-1))
    add("scale_times_inner_sum_and_product", from_expression(
        "dot(sum(x**2) * (W @ x), k*x)", W=_randn(n, n, seed=15), k=-1.3, trainable=True),
        lambda x, W, k: k * ((x @ W.T) * x).sum(-1) * (x**2).sum(-1))
    # ... and the rest of the term keeps reading the broadcast at the sum's points
    add("scale_times_broadcast_in_the_rest", from_expression(
        "sum(k*x*(tanh(x) + sum(x**2)*x))", k=0.7, trainable=True),
        lambda x, k: k * (x * (torch.tanh(x) + (x**2).sum(-1, keepdim=True) * x)).sum(-1))
    return cases


CASES = sorted(_cases())


def _reference_per_sample(formula, values, x):
    """{name: [B, *shape]}: autograd of the plain formula, one sample at a time."""
    params = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    out = {k: [] for k in params}
    for b in range(x.shape[0]):
        grads = torch.autograd.grad(formula(x[b:b + 1], **params).sum(), list(params.values()),
                                    allow_unused=True)
        for k, g in zip(params, grads):
            out[k].append(torch.zeros_like(params[k]) if g is None else g)
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("name", CASES)
def test_parameter_gradient_is_closed_form_and_per_sample_autograd(name):
    energy, values, formula = _cases()[name]
    x = _x(seed=len(name))
    got = energy.parameter_gradient(x)
    # generated (with the second order, on first use), not the torch.func fallback
    assert getattr(type(energy), "_parameter_gradient", None) is not None
    want = _reference_per_sample(formula, values, x)
    assert list(got) == [p for p, _ in energy.named_parameters()]
    for k, w in want.items():
        assert got[k].shape == w.shape and got[k].dtype == D
        torch.testing.assert_close(got[k], w, **TOL)


@pytest.mark.parametrize("name", CASES)
def test_parameter_gradient_sum_contracts_with_weights(name):
    energy, values, formula = _cases()[name]
    x = _x(b=7, seed=3)
    weights = torch.linspace(-1.0, 2.0, 7, dtype=D)
    params = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    want = torch.autograd.grad((weights * formula(x, **params)).sum(), list(params.values()),
                               allow_unused=True)
    got = energy.parameter_gradient_sum(x, weights)
    for (k, p), w in zip(params.items(), want):
        torch.testing.assert_close(got[k], torch.zeros_like(p) if w is None else w, **TOL)
    # default weights: the plain sum
    want = torch.autograd.grad(formula(x, **params).sum(), list(params.values()),
                               allow_unused=True)
    got = energy.parameter_gradient_sum(x)
    for (k, p), w in zip(params.items(), want):
        torch.testing.assert_close(got[k], torch.zeros_like(p) if w is None else w, **TOL)


def test_energy_dependent_weights_give_a_quadratic_loss_gradient():
    # weights (a, c) mean a + c*E(x): the gradient of sum_b (a E_b + c E_b^2 / 2)
    energy, values, formula = _cases()["gaussian"]
    x = _x(b=6, seed=4)
    params = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    e = formula(x, **params)
    want = torch.autograd.grad((0.3 * e + 0.5 * 0.7 * e**2).sum(), list(params.values()))
    (e_got,), got = energy._energy_and_parameter_gradient_sum((x, (0.3, 0.7)))
    torch.testing.assert_close(e_got, e.detach(), **TOL)
    for k, w in zip(params, want):
        torch.testing.assert_close(got[k], w, **TOL)
    # two batches: the sums add, derived values chained once
    y = _x(b=3, seed=8)
    e, ey = formula(x, **params), formula(y, **params)
    want = torch.autograd.grad((0.3 * e + 0.35 * e**2).sum() + (-ey).sum(),
                               list(params.values()))
    (e1, e2), got = energy._energy_and_parameter_gradient_sum((x, (0.3, 0.7)), (y, (-1.0, 0.0)))
    torch.testing.assert_close(e2, ey.detach(), **TOL)
    for k, w in zip(params, want):
        torch.testing.assert_close(got[k], w, **TOL)


def test_trainable_subset_returns_only_those_parameters():
    mean, cov = _randn(3, seed=1), _spd(3, 2)
    energy = GaussianEnergy(mean, cov, trainable=["cov"])
    x = _x(b=4, seed=5)
    got = energy.parameter_gradient(x)
    assert list(got) == ["cov"]
    c = cov.clone().requires_grad_(True)
    for b in range(4):
        d = x[b] - mean
        (w,) = torch.autograd.grad(0.5 * d @ torch.linalg.inv(c) @ d, [c])
        torch.testing.assert_close(got["cov"][b], w, **TOL)
    summed = energy.parameter_gradient_sum(x)
    torch.testing.assert_close(summed["cov"], got["cov"].sum(0), **TOL)
    # by hand: d/dmean of 0.5 (x - m)^T P (x - m) is -P (x - m)
    energy = GaussianEnergy(mean, cov, trainable=["mean"])
    got = energy.parameter_gradient(x)
    torch.testing.assert_close(got["mean"], -(x - mean) @ torch.linalg.inv(cov), **TOL)


def test_batched_shapes_float32_inputs_and_zero_gradients():
    energy = DoubleWellEnergy(barrier_height=2.0, b=1.0, trainable=True)
    x = torch.randn(2, 3, 4)                       # float32, batch [2, 3]
    got = energy.parameter_gradient(x)
    assert got["b"].shape == (2, 3) and got["b"].dtype == energy.b.dtype
    want = ((x.double()**2 - 1)**2).sum(-1)        # dE/dbarrier_height by hand
    torch.testing.assert_close(got["barrier_height"], want, rtol=1e-5, atol=1e-5)
    # a formula flat in its parameter almost everywhere: zeros of the parameter's shape
    flat = from_expression("sum(sign(W @ x))", W=torch.eye(3, dtype=D), trainable=True)
    assert torch.equal(flat.parameter_gradient(_x())["W"], torch.zeros(5, 3, 3, dtype=D))
    assert torch.equal(flat.parameter_gradient_sum(_x())["W"], torch.zeros(3, 3, dtype=D))


def test_errors_name_the_problem():
    with pytest.raises(ParameterError, match="trainable"):
        DoubleWellEnergy().parameter_gradient(_x())
    with pytest.raises(ParameterError, match="trainable"):
        DoubleWellEnergy().parameter_gradient_sum(_x())
    with pytest.raises(ShapeError, match="one weight per sample"):
        DoubleWellEnergy(trainable=True).parameter_gradient_sum(_x(b=5), torch.ones(4))


class _Quartic(BaseEnergyFunction):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5, dtype=D))

    def forward(self, x):
        return self.a * (x**4).sum(-1)


def test_hand_written_energies_keep_autograd():
    energy = _Quartic()
    x = _x()
    torch.testing.assert_close(energy.parameter_gradient(x)["a"], (x**4).sum(-1), **TOL)
    torch.testing.assert_close(energy.parameter_gradient_sum(x, torch.full((5,), 0.5, dtype=D))
                               ["a"], 0.5 * (x**4).sum(), **TOL)


def test_summed_matrix_adjoint_is_one_product_not_outer_products():
    # batch-summed: h^T (w ybar), one matrix product; per sample, the adjoint of the
    # derived inverse(cov) is its rank-one factors (h, ybar): no [B, n, n] in the kernel
    summed = inspect.getsource(GaussianEnergy._parameter_gradient_sum)
    per_sample = inspect.getsource(GaussianEnergy._parameter_gradient)
    assert ".mT @ " in summed and "unsqueeze(-2)" not in summed
    assert re.search(r"adj_inverse_cov = \(\(\w+, \w+\),\)", per_sample)
    assert "unsqueeze(-2)" not in per_sample
    # a matrix parameter read directly (not through inverse) keeps the outer products
    energy = from_expression("x @ W @ x", W=_randn(3, 3, seed=40), trainable=True)
    energy.parameter_gradient(_x())
    assert "unsqueeze(-2)" in inspect.getsource(type(energy)._parameter_gradient)


def test_rank_one_inverse_adjoints_chain_on_both_routes_and_when_frozen():
    """Per-sample gradients of S through inverse(S) from rank-one factors, two products
    (two factor pairs), a symmetric and a non-symmetric S (not declared positive
    definite: a general matrix either way), against per-sample autograd of the plain
    formula; with S frozen the factors are densified for the other parameters' path.
    The declared, symmetrised case: test_spd_parameters."""
    mu = _randn(3, seed=41)

    def formula(x, mu, S):         # S is not declared positive definite: LU, both values
        inv = torch.linalg.inv(S)
        return 0.5 * (((x - mu) @ inv) * (x - mu)).sum(-1) + ((x @ inv) * mu).sum(-1)
    for S in (_spd(3, 42), _spd(3, 43) + 0.3 * _randn(3, 3, seed=44)):
        energy = from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + x @ inverse(S) @ mu",
                                 mu=mu, S=S, trainable=True)
        x = _x(b=6, seed=45)
        got = energy.parameter_gradient(x)
        want = _reference_per_sample(formula, {"mu": mu, "S": S}, x)
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL)
    energy = from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + x @ inverse(S) @ mu",
                             mu=mu, S=S, trainable=["mu"])       # S a buffer
    got = energy.parameter_gradient(x)
    assert list(got) == ["mu"]
    torch.testing.assert_close(got["mu"], want["mu"], **TOL)


def test_summed_quadratic_form_kernel_makes_no_scaled_copies():
    """The Gaussian's batch-summed kernel: the matrix adjoint reads the forward's
    ``x - mean`` (the form's 0.5 scales the [n, n] product), and the mean's two
    adjoints (one per side of the form, both multiples of ``d @ P``) are one GEMV.
    Values: the float64 tests above and ``test_parameter_gradient_fused``."""
    summed = "\n".join(line for line in inspect.getsource(
        GaussianEnergy._parameter_gradient_sum).splitlines()
        if not line.lstrip().startswith("#"))        # code, not the formula's comments
    assert summed.count("weights.reshape(-1) @") == 1
    assert "0.5*x" not in summed and "-0.5*mv0" not in summed
    assert summed.count(" @ inverse_cov") == 1 and summed.count(".mT @ ") == 1


# -- contrastive divergence ------------------------------------------------------------------
def _cd_losses(energy):
    sampler = LangevinDynamics(energy, step_size=0.01)
    return [ContrastiveDivergence(energy, sampler, k_steps=1, energy_reg_weight=0.05),
            PersistentContrastiveDivergence(energy, sampler, energy_reg_weight=0.0),
            ParallelTemperingCD(energy, sampler, energy_reg_weight=0.01)]


@pytest.mark.parametrize("name", ["double_well", "gaussian", "mixture", "logdet",
                                  "scale_times_inner_sum_and_product"])
def test_cd_backward_is_the_closed_form_without_a_graph(name):
    energy, values, formula = _cases()[name]
    x, neg = _x(b=6, seed=1), 1.5 * _x(b=4, seed=2)
    for cd in _cd_losses(energy):
        reg = cd.energy_reg_weight
        loss = cd.compute_loss(x, neg)
        # one node whose inputs are the parameters: no graph through the energy
        assert type(loss.grad_fn).__name__ == "_ClosedFormCDBackward"
        assert all(type(f).__name__ == "AccumulateGrad"
                   for f, _ in loss.grad_fn.next_functions if f is not None)
        params = {k: v.clone().requires_grad_(True) for k, v in values.items()}
        ep, en = formula(x, **params), formula(neg, **params)
        ref = ep.mean() - en.mean() + reg * (ep.square().mean() + en.square().mean())
        torch.testing.assert_close(loss, ref.detach(), **TOL)
        energy.zero_grad(set_to_none=True)
        loss.backward()
        for (k, p), w in zip(energy.named_parameters(),
                             torch.autograd.grad(ref, list(params.values()))):
            torch.testing.assert_close(p.grad, w, **TOL)


def test_cd_by_hand_is_data_mean_minus_negative_mean():
    # DoubleWell: dE/dbh = sum((x^2 - b^2)^2), dE/db = -4 bh b sum(x^2 - b^2)
    energy = DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True)
    x, neg = _x(b=6, seed=3), _x(b=6, seed=4)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01),
                               energy_reg_weight=0.0)
    cd.compute_loss(x, neg).backward()

    def by_hand(z):
        return ((z**2 - 0.64)**2).sum(-1), -4 * 1.5 * 0.8 * (z**2 - 0.64).sum(-1)

    (pb, pd), (nb, nd) = by_hand(x), by_hand(neg)
    torch.testing.assert_close(energy.barrier_height.grad, pb.mean() - nb.mean(), **TOL)
    torch.testing.assert_close(energy.b.grad, pd.mean() - nd.mean(), **TOL)


def test_cd_keeps_autograd_when_the_data_require_grad_or_grad_is_off():
    energy = DoubleWellEnergy(trainable=True)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01))
    x = _x().requires_grad_(True)
    loss = cd.compute_loss(x, _x(seed=1))
    assert type(loss.grad_fn).__name__ != "_ClosedFormCDBackward"
    (gx,) = torch.autograd.grad(loss, x)
    assert gx.shape == x.shape
    closed = cd.compute_loss(_x(), _x(seed=1))
    with torch.no_grad():                  # grad mode off: the autograd path, same value
        plain = cd.compute_loss(_x(), _x(seed=1))
    assert type(plain.grad_fn).__name__ != "_ClosedFormCDBackward"
    torch.testing.assert_close(plain.detach(), closed.detach(), **TOL)


def test_parameter_kernels_are_generated_on_first_use():
    # from_expression defers them with the second order: compiling costs the energy and
    # gradient only; the first parameter_gradient generates them, and they are used
    energy = from_expression("sum(a*(x - m)**2)", a=0.5, m=torch.zeros(3, dtype=D),
                             trainable=True, name="DeferredParameterKernels")
    assert getattr(type(energy), "_parameter_gradient", None) is None
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    got = energy.parameter_gradient(x)
    assert getattr(type(energy), "_parameter_gradient", None) is not None
    torch.testing.assert_close(got["a"], ((x - 0.0)**2).sum(-1), **TOL)
    torch.testing.assert_close(got["m"], -2 * 0.5 * x, **TOL)



def _spd3():
    A = torch.tensor([[1.0, 0.2, 0.0], [0.3, 1.2, 0.1], [0.0, -0.4, 0.9]], dtype=D)
    return A @ A.T + torch.eye(3, dtype=D)


def _derived_energy():
    return from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S) + a*sum(x**2)",
                           mu=torch.zeros(3, dtype=D), S=_spd3(), a=1.0, trainable=True)


def _derived_reference(x, mu, S, a):
    h = x - mu
    return (0.5 * torch.einsum("bi,ij,bj->b", h, torch.linalg.inv(S), h)
            + 0.5 * torch.logdet(S) + a * (x**2).sum(-1))


def test_frozen_parameters_and_inference_mode_keep_derived_adjoints():
    # a parameter with requires_grad=False still gets its gradient (it is a parameter),
    # and derived values (inverse, logdet) chain in any grad mode
    x = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(4))
    mu, S, a = (torch.zeros(3, dtype=D).requires_grad_(), _spd3().requires_grad_(),
                torch.tensor(1.0, dtype=D).requires_grad_())
    want = torch.autograd.grad(_derived_reference(x, mu, S, a).sum(), [mu, S, a])
    for freeze in ("a", "S", None):
        energy = _derived_energy()
        if freeze:
            getattr(energy, freeze).requires_grad_(False)
        for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with mode():
                got = energy.parameter_gradient_sum(x)
            for k, w in zip(("mu", "S", "a"), want):
                torch.testing.assert_close(got[k], w, **TOL)
        assert getattr(energy, freeze or "a").requires_grad is (freeze is None)
        per = energy.parameter_gradient(x)
        torch.testing.assert_close(per["S"].sum(0), want[1], **TOL)


def test_cd_with_a_frozen_parameter_trains_the_others():
    energy = _derived_energy()
    energy.a.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    x, neg = torch.randn(8, 3, dtype=D, generator=g), torch.randn(8, 3, dtype=D, generator=g)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01),
                               energy_reg_weight=0.0)
    cd.compute_loss(x, neg).backward()
    mu, S = (torch.zeros(3, dtype=D).requires_grad_(), _spd3().requires_grad_())
    a = torch.tensor(1.0, dtype=D)
    loss = _derived_reference(x, mu, S, a).mean() - _derived_reference(neg, mu, S, a).mean()
    want = torch.autograd.grad(loss, [mu, S])
    torch.testing.assert_close(energy.mu.grad, want[0], **TOL)
    torch.testing.assert_close(energy.S.grad, want[1], **TOL)
    assert energy.a.grad is None


def test_cd_closed_form_backward_is_differentiable_with_create_graph():
    # a penalty on the parameter gradient: d/da (dL/da)^2 as autograd of the textbook loss
    energy = from_expression("sum(a*x**2)", a=1.5, trainable=True)
    energy.double()
    g = torch.Generator().manual_seed(6)
    x, neg = torch.randn(5, 2, dtype=D, generator=g), 2 * torch.randn(5, 2, dtype=D, generator=g)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01),
                               energy_reg_weight=0.1)
    loss = cd.compute_loss(x, neg)
    (ga,) = torch.autograd.grad(loss, [energy.a], create_graph=True)
    (gga,) = torch.autograd.grad(ga**2, [energy.a])
    a = torch.tensor(1.5, dtype=D, requires_grad=True)
    ep, en = a * (x**2).sum(-1), a * (neg**2).sum(-1)
    ref = ep.mean() - en.mean() + 0.1 * (ep.square().mean() + en.square().mean())
    (ra,) = torch.autograd.grad(ref, [a], create_graph=True)
    (rra,) = torch.autograd.grad(ra**2, [a])
    torch.testing.assert_close(ga, ra, **TOL)
    torch.testing.assert_close(gga, rra, **TOL)


def test_cd_backward_after_an_in_place_parameter_change_raises():
    energy = from_expression("sum((x - mu)**2)", mu=torch.zeros(2, dtype=D), trainable=True)
    g = torch.Generator().manual_seed(7)
    x, neg = torch.randn(4, 2, dtype=D, generator=g), torch.randn(4, 2, dtype=D, generator=g)
    loss = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01)
                                 ).compute_loss(x, neg)
    with torch.no_grad():
        energy.mu.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_parameter_named_energy_keeps_its_own_gradient():
    # the summed kernel returns the energy beside the parameters under a key that is not
    # an identifier, so a parameter called 'energy' cannot overwrite it (or be lost)
    energy = from_expression("sum(energy*x**2)", params={"energy": 2.0}, trainable=True)
    energy.double()
    g = torch.Generator().manual_seed(8)
    x, neg = torch.randn(5, 3, dtype=D, generator=g), torch.randn(5, 3, dtype=D, generator=g)
    (name,) = [k for k, _ in energy.named_parameters()]
    torch.testing.assert_close(energy.parameter_gradient_sum(x)[name], (x**2).sum(), **TOL)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01),
                               energy_reg_weight=0.0)
    loss = cd.compute_loss(x, neg)
    loss.backward()
    torch.testing.assert_close(loss, 2.0 * ((x**2).sum(-1).mean() - (neg**2).sum(-1).mean()),
                               **TOL)
    torch.testing.assert_close(getattr(energy, name).grad,
                               (x**2).sum(-1).mean() - (neg**2).sum(-1).mean(), **TOL)


def test_a_parameter_only_in_a_condition_has_zero_gradient_not_an_error():
    # where(x > c, x, 0): the energy is piecewise constant in c, so dE/dc = 0 almost
    # everywhere; autograd has no path to c, which used to raise
    energy = from_expression("sum(where(x > c, x, 0))", c=0.0, trainable=True)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(9))
    assert float(energy.parameter_gradient_sum(x)["c"]) == 0.0
    assert torch.equal(energy.parameter_gradient(x)["c"], torch.zeros(4, dtype=torch.float64))
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01))
    cd.compute_loss(x, torch.randn(4, 3)).backward()
    assert float(energy.c.grad) == 0.0


def test_a_number_as_weights_weighs_every_sample_alike():
    energy = from_expression("x @ W @ x", W=torch.eye(3, dtype=D), trainable=True)
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(10))
    want = 0.25 * torch.einsum("bi,bj->ij", x, x)            # d(x W x)/dW = x x^T
    torch.testing.assert_close(energy.parameter_gradient_sum(x, 0.25)["W"], want, **TOL)
    torch.testing.assert_close(energy.parameter_gradient_sum(x, torch.tensor(0.25))["W"],
                               want, **TOL)
    with pytest.raises(ShapeError, match="one weight per sample"):
        energy.parameter_gradient_sum(x, torch.ones(4))


def test_an_empty_batch_gives_empty_gradients_for_derived_parameters():
    energy = from_expression("x @ inverse(S) @ x + logdet(S)", S=2 * torch.eye(3, dtype=D),
                             trainable=True)
    for batch in ((0,), (2, 0)):
        got = energy.parameter_gradient(torch.randn(*batch, 3, dtype=D))
        assert got["S"].shape == batch + (3, 3)
    torch.testing.assert_close(energy.parameter_gradient_sum(torch.randn(0, 3, dtype=D))["S"],
                               torch.zeros(3, 3, dtype=D))


@pytest.mark.parametrize("symmetric", [True, False])
def test_inverse_adjoints_chain_in_closed_form_for_both_factorisations(symmetric):
    """``inverse(S)`` is chained to ``S`` in closed form. A non-symmetric adjoint (the
    two sides of the form differ) would tell a Cholesky route (the symmetric part,
    ``-P sym(A) P``) from LU (``-P^T A P^T``) apart. ``S`` is not declared positive
    definite here, so it is a general matrix: LU, and the full gradient, whether or not
    its value happens to be symmetric (the gradient must not jump when S moves one ulp
    off symmetric). A declared one is read as its symmetric part: test_spd_parameters."""
    n = 3
    a = _randn(n, n, seed=11)
    s = a @ a.T + n * torch.eye(n, dtype=D) if symmetric else a + n * torch.eye(n, dtype=D)
    mu = _randn(n, seed=12)
    energy = from_expression("(x - mu) @ inverse(S) @ (2*x + mu)", mu=mu, S=s, trainable=True)

    def formula(x, mu, S):
        return ((x - mu) @ torch.linalg.inv(S) * (2 * x + mu)).sum(-1)
    values = {"mu": mu, "S": s}
    x = _x(b=6, n=n, seed=13)
    weights = torch.linspace(-1.0, 2.0, 6, dtype=D)
    params = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    want = torch.autograd.grad((weights * formula(x, **params)).sum(), list(params.values()))
    got = energy.parameter_gradient_sum(x, weights)
    for k, w in zip(params, want):
        torch.testing.assert_close(got[k], w, **TOL)
    if symmetric:   # the adjoint is not symmetric: the two conventions differ here
        sym = torch.autograd.grad((weights * ((x - params["mu"]) @ torch.linalg.inv(
            (params["S"] + params["S"].mT) / 2) * (2 * x + params["mu"])).sum(-1)).sum(),
            params["S"])[0]
        assert not torch.allclose(sym, want[1])
        # one ulp off symmetric: the same gradient (no change of convention)
        nudged = from_expression("(x - mu) @ inverse(S) @ (2*x + mu)", mu=mu,
                                 S=s + torch.tensor([[0, 4e-16, 0], [0, 0, 0], [0, 0, 0]],
                                                    dtype=D), trainable=True)
        torch.testing.assert_close(nudged.parameter_gradient_sum(x, weights)["S"], got["S"],
                                   rtol=1e-9, atol=1e-12)
    per = energy.parameter_gradient(x)
    for k, w in _reference_per_sample(formula, values, x).items():
        torch.testing.assert_close(per[k], w, **TOL)
