"""``energy.compile()`` fuses the parameter kernels (``_parameter_gradient``,
``_parameter_gradient_sum``) through the direct Inductor path, so contrastive divergence
on a compiled energy runs one fused kernel per batch.

References are plain torch formulas of the textbook energies written here (not from the
generated code), differentiated by autograd in float64. Compiles cost seconds: the tests
are marked slow, few, and share the compiled energies through module fixtures.
"""

import pytest
import torch

from torchebm.core import DoubleWellEnergy, GaussianEnergy
from torchebm.losses import ContrastiveDivergence

from .cases import seeded_randn as _randn

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)

pytestmark = pytest.mark.slow


def _double_well(x, barrier_height, b):
    return barrier_height * ((x**2 - b**2) ** 2).sum(-1)


def _gaussian(x, mean, cov):
    d = x - mean
    return 0.5 * (d * torch.linalg.solve(cov, d.T).T).sum(-1)


def _reference(formula, x, weights, **params):
    """``(E(x) [B], {name: sum_b weights_b dE(x_b)/dtheta})`` by autograd, float64."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    e = formula(x, **leaves)
    grads = torch.autograd.grad((weights * e).sum(), list(leaves.values()))
    return e.detach(), dict(zip(leaves, grads))


def _per_sample(formula, x, **params):
    """``{name: [B, *theta.shape]}``: one autograd backward per sample."""
    out = {k: [] for k in params}
    for i in range(x.shape[0]):
        _, g = _reference(formula, x[i:i + 1], torch.ones(1, dtype=D), **params)
        for k in params:
            out[k].append(g[k])
    return {k: torch.stack(v) for k, v in out.items()}


def _fused_calls(energy, name):
    """Direct (Inductor) graphs compiled for the generated method ``name``."""
    return [sig for sig in energy._direct._graphs if sig[0].__name__ == name]


@pytest.fixture(scope="module")
def double_well():
    return DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True).to(D).compile()


@pytest.fixture(scope="module")
def gaussian():
    mean = _randn(3, seed=1)
    a = _randn(3, 3, seed=2)
    return GaussianEnergy(mean, a @ a.T + 3 * torch.eye(3, dtype=D), trainable=True).compile()


def test_fused_parameter_kernels_follow_parameter_writes(double_well):
    energy = double_well
    x, w = _randn(6, 4, seed=3), _randn(6, seed=4)
    eager = DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True).to(D)
    for height, b in [(1.5, 0.8), (2.5, -1.2)]:
        with torch.no_grad():                       # an optimiser's in-place write
            energy.barrier_height.copy_(torch.tensor(height, dtype=D))
            energy.b.copy_(torch.tensor(b, dtype=D))
            eager.barrier_height.copy_(torch.tensor(height, dtype=D))
            eager.b.copy_(torch.tensor(b, dtype=D))
        params = dict(barrier_height=torch.tensor(height, dtype=D), b=torch.tensor(b, dtype=D))
        _, want = _reference(_double_well, x, w, **params)
        got = energy.parameter_gradient_sum(x, w)
        assert set(got) == {"barrier_height", "b"}
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL)
            torch.testing.assert_close(got[k], eager.parameter_gradient_sum(x, w)[k], **TOL)
        per = energy.parameter_gradient(x)
        want_per = _per_sample(_double_well, x, **params)
        for k in want_per:
            torch.testing.assert_close(per[k], want_per[k], **TOL)
            torch.testing.assert_close(per[k], eager.parameter_gradient(x)[k], **TOL)
    # both kernels ran through Inductor, each compiled once: the second parameter values
    # were read by the same graphs (inputs, not constants)
    assert len(_fused_calls(energy, "_parameter_gradient_sum")) == 1
    assert len(_fused_calls(energy, "_parameter_gradient")) == 1


def test_fused_contrastive_divergence_is_the_textbook_gradient(double_well):
    """Two SGD steps of CD with the energy regulariser (weights ``a + c E``: numbers baked
    into the fused graph, replayed from the fast cache) against autograd of the
    textbook loss; the optimiser's in-place parameter writes are seen by the replays."""
    energy = double_well
    with torch.no_grad():
        energy.barrier_height.copy_(torch.tensor(1.5, dtype=D))
        energy.b.copy_(torch.tensor(0.8, dtype=D))
    x, neg = _randn(8, 4, seed=5), _randn(8, 4, seed=6)
    reg = 0.25

    class Fixed:
        def sample(self, x, n_steps):
            return neg

    cd = ContrastiveDivergence(energy, Fixed(), k_steps=1, energy_reg_weight=reg)
    opt = torch.optim.SGD(energy.parameters(), lr=0.05)
    ref = dict(barrier_height=torch.tensor(1.5, dtype=D, requires_grad=True),
               b=torch.tensor(0.8, dtype=D, requires_grad=True))
    ref_opt = torch.optim.SGD(ref.values(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        loss, _ = cd(x)
        loss.backward()
        ref_opt.zero_grad()
        ep, en = _double_well(x, **ref), _double_well(neg, **ref)
        want = ep.mean() - en.mean() + reg * (ep.square().mean() + en.square().mean())
        want.backward()
        torch.testing.assert_close(loss.detach(), want.detach(), **TOL)
        for k, p in energy.named_parameters():
            torch.testing.assert_close(p.grad, ref[k].grad, **TOL)
        opt.step()
        ref_opt.step()
    # the data's and the negatives' weights (numbers) key one replayed graph each
    fast = [key for key in energy._direct._fast
            if key[0] == "_parameter_gradient_sum" and type(key[-1]) is tuple]
    assert sorted(key[-1] for key in fast) == [(-1 / 8, 2 * reg / 8), (1 / 8, 2 * reg / 8)]


def test_fused_derived_parameters_chain_to_the_covariance(gaussian):
    energy = gaussian
    x, w = _randn(7, 3, seed=7), _randn(7, seed=8)
    params = dict(mean=energy.mean.detach().clone(), cov=energy.cov.detach().clone())
    e_want, want = _reference(_gaussian, x, w, **params)
    got = energy.parameter_gradient_sum(x, w)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOL)
    (e,), summed = energy._energy_and_parameter_gradient_sum((x, w))
    torch.testing.assert_close(e, e_want, **TOL)
    # a new covariance (replaced through the attribute) is seen, without a new graph
    a = _randn(3, 3, seed=9)
    energy.cov = a @ a.T + 2 * torch.eye(3, dtype=D)
    params["cov"] = energy.cov.detach().clone()
    _, want = _reference(_gaussian, x, w, **params)
    got = energy.parameter_gradient_sum(x, w)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOL)
    assert len(_fused_calls(energy, "_parameter_gradient_sum")) == 1


def test_compile_options_run_the_parameter_kernels_through_torch_compile():
    """With options, ``compile`` has no direct path: the parameter kernels (weights as a
    pair of numbers included) run through their ``torch.compile`` functions."""
    energy = DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True).to(D)
    energy.compile(backend="eager")
    assert energy._direct is None and "_parameter_gradient_sum" in energy._fused
    x = _randn(5, 3, seed=10)
    params = dict(barrier_height=torch.tensor(1.5, dtype=D), b=torch.tensor(0.8, dtype=D))
    e_want = _double_well(x, **params)
    _, want = _reference(_double_well, x, 0.5 + 0.1 * e_want, **params)
    (e,), got = energy._energy_and_parameter_gradient_sum((x, (0.5, 0.1)))
    torch.testing.assert_close(e, e_want, **TOL)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOL)
    for k, g in _per_sample(_double_well, x, **params).items():
        torch.testing.assert_close(energy.parameter_gradient(x)[k], g, **TOL)
