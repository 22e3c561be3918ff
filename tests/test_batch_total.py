"""The batch-total kernel (``symbolic/contract.py``): ``sum_b w_b E(x_b)`` and its
parameter gradient with the matrix-vector products contracted over the batch before
the matrix, which contrastive divergence without its regulariser uses.

References are plain-torch formulas written from each energy's textbook form,
differentiated by autograd in float64; nothing is read from the generated code
except which methods exist and which products it forms.
"""

import inspect
import re

import pytest
import torch

from torchebm.core import DoubleWellEnergy, GaussianEnergy
from torchebm.errors import ShapeError
from torchebm.losses import ContrastiveDivergence
from torchebm.symbolic import from_expression

from .cases import seeded_randn as _randn
from .cases import seeded_spd as _spd

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-11)
N = 4


def _contracted():
    """name -> (energy, plain formula f(x, **params) -> [B]): energies affine in a
    product with a parameter matrix, which get a batch-total kernel."""
    W, u, m = _randn(N, N, seed=1), _randn(N, seed=2), _randn(N, seed=3)
    V = _randn(N, N, seed=7)
    return {
        "gaussian": (GaussianEnergy(m, _spd(N, 4), trainable=True),
                     lambda x, mean, cov: 0.5 * (((x - mean) @ torch.linalg.inv(cov))
                                                 * (x - mean)).sum(-1)),
        "gaussian_and_logdet": (
            from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S)",
                            mu=m, S=_spd(N, 5), trainable=True),
            lambda x, mu, S: 0.5 * (((x - mu) @ torch.linalg.inv(S)) * (x - mu)).sum(-1)
            + 0.5 * torch.logdet(S)),
        # a non-symmetric matrix, a scalar factor inside, another term outside
        "scaled_form_plus_terms": (
            from_expression("a*(x - m) @ W @ (x - m) + log(1 + sum(x**2)) + dot(b, x)",
                            a=1.3, m=m, W=W, b=u, trainable=True),
            lambda x, a, m, W, b: a * (((x - m) @ W) * (x - m)).sum(-1)
            + torch.log1p((x**2).sum(-1)) + x @ b),
        # W @ x (rows of W), read twice: two products, both contracted
        "row_products": (
            from_expression("sum((W @ x) * x) + dot(u, W @ x)", W=W, u=u, trainable=True),
            lambda x, W, u: ((x @ W.T) * x).sum(-1) + (x @ W.T) @ u),
        # one product contracted (W's), one not (V's, inside tanh)
        "one_of_two_products": (
            from_expression("x @ W @ x + sum(tanh(x @ V))", W=W, V=_randn(N, N, seed=7),
                            trainable=True),
            lambda x, W, V: ((x @ W) * x).sum(-1) + torch.tanh(x @ V).sum(-1)),
        # a where whose condition does not read the product: affine in each branch
        "where_on_x": (
            from_expression("where(x[0] > 0, x @ W @ x, -(x @ V @ x))", W=W, V=V,
                            trainable=True),
            lambda x, W, V: torch.where(x[:, 0] > 0, ((x @ W) * x).sum(-1),
                                        -((x @ V) * x).sum(-1))),
        # without the product what is left is a number, a parameter or a per-sample
        # value: still summed over the n points (its value at y = 0 is c, not n c)
        "product_plus_scalar_parameter": (
            from_expression("sum((W @ x) + c)", W=W, c=0.7, trainable=True),
            lambda x, W, c: (x @ W.T).sum(-1) + x.shape[-1] * c),
        "product_plus_number": (
            from_expression("sum(W @ x + 2)", W=W, trainable=True),
            lambda x, W: (x @ W.T).sum(-1) + 2 * x.shape[-1]),
        "product_plus_component": (
            from_expression("sum((W @ x) + x[0])", W=W, trainable=True),
            lambda x, W: (x @ W.T).sum(-1) + x.shape[-1] * x[:, 0]),
        # of two products of W, the one in the condition keeps its forward product and
        # the selected one is contracted: affine in it once the condition is a value
        "form_selected_by_itself": (
            from_expression("where(x @ W @ x > 0, x @ W @ x, 0)", W=W, trainable=True),
            lambda x, W: torch.clamp(((x @ W) * x).sum(-1), min=0)),
        # the energy is not affine in V's product: W's is contracted alone
        "one_of_two_products_rows": (
            from_expression("x @ W @ x + sum(tanh(V @ x))", W=W, V=V, trainable=True),
            lambda x, W, V: ((x @ W) * x).sum(-1) + torch.tanh(x @ V.T).sum(-1)),
        # a slice of the matrix's columns
        "column_slice": (
            from_expression("sum(sum(W[i, j]*x[j] for j in range(1, n))*x[i] for i in range(n))",
                            W=W, trainable=True),
            lambda x, W: ((x[:, 1:] @ W[:, 1:].T) * x).sum(-1)),
    }


def _not_contracted():
    """Energies that are not affine in their products (or have none): no such kernel."""
    W = _randn(N, N, seed=6)
    return {
        "tanh_of_product": (from_expression("sum(tanh(x @ W))", W=W, trainable=True),
                            lambda x, W: torch.tanh(x @ W).sum(-1)),
        "square_of_form": (from_expression("(x @ W @ x)**2", W=W, trainable=True),
                           lambda x, W: (((x @ W) * x).sum(-1))**2),
        # a condition or a sign of the product: zero derivative, yet not affine in it
        "condition_on_form": (
            from_expression("where(x @ W @ x > 1, 2.0, -1.0)*x[0] + sum(x**2)", W=W,
                            trainable=True),
            lambda x, W: torch.where(((x @ W) * x).sum(-1) > 1, 2.0, -1.0) * x[:, 0]
            + (x**2).sum(-1)),
        "sign_of_product": (
            from_expression("sum(sign(W @ x))*x[0] + sum(x**2)", W=W, trainable=True),
            lambda x, W: torch.sign(x @ W.T).sum(-1) * x[:, 0] + (x**2).sum(-1)),
        "double_well": (DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True),
                        lambda x, barrier_height, b: barrier_height
                        * ((x**2 - b**2)**2).sum(-1)),
    }


def _reference(energy, formula, jobs):
    """(sum over jobs of sum_b w_b E(x_b), {name: its gradient}) by autograd."""
    params = {k: p.detach().clone().requires_grad_(True) for k, p in energy.named_parameters()}
    total = sum((torch.as_tensor(w, dtype=D) * formula(x, **params)).sum() for x, w in jobs)
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True) \
        if total.requires_grad else [None] * len(params)         # W only in a condition
    return total.detach(), {k: torch.zeros_like(p) if g is None else g
                            for (k, p), g in zip(params.items(), grads)}


def _jobs():
    return [(_randn(7, N, seed=10), torch.linspace(-1.0, 2.0, 7, dtype=D)),
            (_randn(5, N, seed=11), -0.2)]


@pytest.mark.parametrize("name", sorted(_contracted()))
def test_total_kernel_is_the_weighted_total_and_its_gradient(name):
    energy, formula = _contracted()[name]
    jobs = _jobs()
    totals, grads = energy._energy_total_and_parameter_gradient_sum(*jobs)
    assert getattr(type(energy), "_parameter_gradient_total", None) is not None
    want_total, want = _reference(energy, formula, jobs)
    assert all(t.dim() == 0 for t in totals)
    torch.testing.assert_close(sum(totals), want_total, **TOL)
    assert list(grads) == list(want)
    for k in want:
        torch.testing.assert_close(grads[k], want[k], **TOL)


@pytest.mark.parametrize("name", sorted(_not_contracted()))
def test_without_a_total_kernel_the_summed_kernel_gives_the_same(name):
    energy, formula = _not_contracted()[name]
    jobs = _jobs()
    totals, grads = energy._energy_total_and_parameter_gradient_sum(*jobs)
    want_total, want = _reference(energy, formula, jobs)
    torch.testing.assert_close(sum(totals), want_total, **TOL)
    for k in want:
        torch.testing.assert_close(grads[k], want[k], **TOL)
    assert getattr(type(energy), "_parameter_gradient_total", None) is None
    assert getattr(type(energy), "_parameter_gradient_sum", None) is not None


def test_a_formula_without_parameter_kernels_gets_its_total_by_autograd():
    """A matrix read by two products of which one is constant in x has no generated
    parameter adjoints (the runtime differentiates it with autograd): the total is still
    given, not an AttributeError for the missing kernel."""
    W, u = _randn(N, N, seed=40), _randn(N, seed=41)
    energy = from_expression("x @ W @ x + u @ W @ x", W=W, u=u, trainable=True)
    jobs = _jobs()
    totals, grads = energy._energy_total_and_parameter_gradient_sum(*jobs)
    assert getattr(type(energy), "_parameter_gradient_sum", None) is None
    want_total, want = _reference(
        energy, lambda x, W, u: ((x @ W) * x).sum(-1) + x @ (u @ W), jobs)
    torch.testing.assert_close(sum(totals), want_total, **TOL)
    assert list(grads) == ["W", "u"]
    for k in want:
        torch.testing.assert_close(grads[k], want[k], **TOL)


@pytest.mark.parametrize("formula", [
    "sum(sum(W[i, j]*x[j] for j in range(1, n))*x[i] for i in range(n)) + dot(u, x)",
    "sum(W[i, j]*x[i]*x[j] for i in range(n) for j in range(i + 1, n)) + dot(u, x)"])
def test_an_empty_level_contracts_to_zero(formula):
    """At n = 1 the range(1, n) and the pairs i < j are empty: W's batch contractions
    are over no point (a [B, 0] operand), W's gradient is 0 and the energy is dot(u, x)."""
    W, u = _randn(1, 1, seed=43), _randn(1, seed=44)
    energy = from_expression(formula, W=W, u=u, trainable=True)
    x, w = _randn(5, 1, seed=45), torch.linspace(-1.0, 1.0, 5, dtype=D)
    totals, grads = energy._energy_total_and_parameter_gradient_sum((x, w))
    torch.testing.assert_close(totals[0], (w * x[:, 0] * u[0]).sum(), **TOL)
    summed = energy.parameter_gradient_sum(x, w)
    for got in (grads, summed):
        assert torch.equal(got["W"], torch.zeros(1, 1, dtype=D))
        torch.testing.assert_close(got["u"], (w * x[:, 0]).sum().reshape(1), **TOL)


def test_total_refuses_energy_dependent_weights():
    energy, _ = _contracted()["gaussian"]
    with pytest.raises(TypeError, match=r"fixed weights.*_energy_and_parameter_gradient_sum"):
        energy._energy_total_and_parameter_gradient_sum((_randn(3, N, seed=42), (1.0, 0.5)))
    with pytest.raises(ShapeError, match="one weight per sample"):
        energy._energy_total_and_parameter_gradient_sum((_randn(3, N, seed=42),
                                                         torch.ones(4, dtype=D)))


def _products(source, method):
    """The ``[B, n] x [n, n]``-sized matrix products of a generated method: ``@`` between
    names (the per-sample ones), not the contracted ``(weights @ h) @ A``."""
    body = source[source.index(f"def {method}("):]
    body = body[:body.index("\n    def ") if "\n    def " in body else len(body)]
    return [ln.strip() for ln in body.splitlines()
            if re.search(r"= \w+ @ \w+(\.mT)?$", ln.strip())]


def test_gaussian_total_forms_no_forward_product():
    """The Gaussian's summed kernel forms ``(x - mean) @ P`` per sample; the total does
    not: its one ``[n, n]`` product is the weighted scatter matrix, P's gradient."""
    summed = inspect.getsource(GaussianEnergy._parameter_gradient_sum)
    total = inspect.getsource(GaussianEnergy._parameter_gradient_total)
    assert _products(summed, "_parameter_gradient_sum")           # mv0 = h @ inverse_cov
    assert _products(total, "_parameter_gradient_total") == []
    assert total.count(".mT @") == 1                               # the scatter matrix


def test_quadratic_form_of_an_undeclared_matrix_forms_no_per_sample_product():
    """``0.5 (x - mu) @ inverse(S) @ (x - mu)`` with S not declared symmetric: mu's
    adjoint has a second term through ``hbar = ybar @ P^T``, read only as ``w @ hbar``;
    the total contracts it as ``(w @ ybar) @ P^T`` (a GEMV), so its one ``[n, n]``
    product is the weighted scatter matrix, as for the built-in Gaussian. The values
    are checked by test_total_kernel_is_the_weighted_total_and_its_gradient."""
    energy, _ = _contracted()["gaussian_and_logdet"]
    energy._ensure_second_order()
    summed = energy.class_source
    assert _products(summed, "_parameter_gradient_sum")        # mv0 and hbar per sample
    assert _products(summed, "_parameter_gradient_total") == []
    total = summed[summed.index("def _parameter_gradient_total("):]
    assert total[:total.index("return")].count(".mT @") == 1


def test_contrastive_divergence_uses_the_total_kernel_without_regulariser(monkeypatch):
    energy, formula = _contracted()["gaussian"]
    calls = []
    kernel = type(energy)._parameter_gradient_total

    def spy(self, *args):
        calls.append(1)
        return kernel(self, *args)
    monkeypatch.setattr(type(energy), "_parameter_gradient_total", spy)
    x, neg = _randn(6, N, seed=20), _randn(6, N, seed=21)

    class Fixed:
        def sample(self, x, n_steps):
            return neg
    cd = ContrastiveDivergence(energy, Fixed(), k_steps=1, energy_reg_weight=0.0)
    energy.zero_grad()
    loss, _ = cd(x)
    loss.backward()
    assert len(calls) == 2                      # one per batch
    params = {k: p.detach().clone().requires_grad_(True) for k, p in energy.named_parameters()}
    want_loss = formula(x, **params).mean() - formula(neg, **params).mean()
    want = torch.autograd.grad(want_loss, list(params.values()))
    torch.testing.assert_close(loss.detach(), want_loss.detach(), **TOL)
    for (k, p), w in zip(energy.named_parameters(), want):
        torch.testing.assert_close(p.grad, w, **TOL)
    # with the regulariser the per-sample energies are needed: the summed kernel
    calls.clear()
    ContrastiveDivergence(energy, Fixed(), k_steps=1, energy_reg_weight=0.1)(x)[0].backward()
    assert calls == []


def test_covariance_gradient_follows_in_place_updates_and_factorisations():
    """The chain to ``cov`` reuses the factorisation of an unchanged matrix; an in-place
    update (an optimiser step) or a switch from SPD to non-symmetric is seen."""
    energy, formula = _contracted()["gaussian_and_logdet"]
    S = energy.S
    x, w = _randn(6, N, seed=30), torch.linspace(0.5, 1.5, 6, dtype=D)
    for change in (None, lambda: S.add_(0.3 * torch.eye(N, dtype=D)),
                   lambda: S.add_(0.2 * _randn(N, N, seed=31))):        # non-symmetric
        if change is not None:
            with torch.no_grad():
                change()
        for _ in range(2):                      # the second call reuses the factorisation
            _, grads = energy._energy_total_and_parameter_gradient_sum((x, w))
            _, want = _reference(energy, formula, [(x, w)])
            torch.testing.assert_close(grads["S"], want["S"], **TOL)
            torch.testing.assert_close(grads["mu"], want["mu"], **TOL)


def test_fused_total_kernel_matches_eager():
    torch.manual_seed(0)
    mean, cov = torch.randn(8), torch.eye(8) + 0.1 * torch.ones(8, 8)
    eager = GaussianEnergy(mean, cov, trainable=True)
    fused = GaussianEnergy(mean, cov, trainable=True).compile()
    x, neg = torch.randn(64, 8), torch.randn(64, 8) * 2

    class Fixed:
        def sample(self, x, n_steps):
            return neg
    results = []
    for energy in (eager, fused):
        cd = ContrastiveDivergence(energy, Fixed(), k_steps=1, energy_reg_weight=0.0)
        energy.zero_grad()
        loss, _ = cd(x)
        loss.backward()
        results.append((loss.detach(), energy.mean.grad.clone(), energy.cov.grad.clone()))
    assert "_parameter_gradient_total" in fused._fused
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_keeps_a_symmetric_covariance_exactly_symmetric():
    """The closed-form gradient of an SPD matrix through its Cholesky factor is the
    symmetric part's, and symmetric to the last bit: optimiser steps keep ``cov``
    exactly symmetric, so every call stays on the Cholesky route (a matrix off by one
    ulp would go through LU from then on). Each step's gradient is autograd's of the
    plain formula with ``torch.linalg.inv``."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(N, N, dtype=D, generator=g)
    energy = GaussianEnergy(torch.zeros(N, dtype=D), a @ a.T + N * torch.eye(N, dtype=D),
                            trainable=True)
    formula = _contracted()["gaussian"][1]
    opt = torch.optim.Adam(energy.parameters(), lr=0.01)

    class Fixed:
        def sample(self, x, n_steps):
            return neg
    for step in range(4):
        x = 2 * torch.randn(16, N, dtype=D, generator=g)
        neg = torch.randn(16, N, dtype=D, generator=g)
        for reg in (0.0, 0.01):
            params = {k: p.detach().clone().requires_grad_(True)
                      for k, p in energy.named_parameters()}
            e_pos, e_neg = formula(x, **params), formula(neg, **params)
            want = torch.autograd.grad(e_pos.mean() - e_neg.mean()
                                       + reg * (e_pos.square().mean() + e_neg.square().mean()),
                                       list(params.values()))
            opt.zero_grad()
            ContrastiveDivergence(energy, Fixed(), energy_reg_weight=reg).compute_loss(
                x, neg).backward()
            for p, w in zip(energy.parameters(), want):
                torch.testing.assert_close(p.grad, w, **TOL)
            assert torch.equal(energy.cov.grad, energy.cov.grad.mT)
            opt.step()
            assert torch.equal(energy.cov, energy.cov.mT), (step, reg)
