"""Matrices declared ``positive_definite`` (the Gaussian's covariance) are read as their
symmetric part ``(S + S^T) / 2`` everywhere: the generated code assumes a symmetric
matrix (``P d`` for the gradient of ``d^T P d / 2``), so the energy, its derivatives in
``x`` and in ``S``, and what an optimiser does to ``S`` must agree with that reading.

References: the plain formula with ``torch.linalg.inv((S + S^T) / 2)``, by autograd in
float64. A new user found the failure this guards against: score matching on
``GaussianEnergy`` gave ``cov`` a non-symmetric gradient once ``cov`` was a few ulps off
symmetric, Adam made it drift, and the trained model could not be saved and loaded.
"""

import pytest
import torch

from torchebm.core import GaussianEnergy
from torchebm.errors import ParameterError
from torchebm.losses import ScoreMatching, SlicedScoreMatching

from .cases import seeded_randn as _randn

D = torch.float64


def _cov(n=3, seed=0):
    a = _randn(n, n, seed=seed)
    return a @ a.T / n + torch.eye(n, dtype=D)


def _plain(x, mean, cov):
    d = x - mean
    return 0.5 * ((d @ torch.linalg.inv((cov + cov.mT) / 2)) * d).sum(-1)


def _exact_score_matching(x, mean, cov):
    """mean_B [ |g|^2 / 2 - tr H ] with g = P d and H = P, P = inv(sym(cov))."""
    p = torch.linalg.inv((cov + cov.mT) / 2)
    g = (x - mean) @ p
    return (0.5 * (g * g).sum(-1) - torch.diagonal(p).sum()).mean()


def test_a_few_ulps_off_symmetric_changes_nothing():
    mean, cov = _randn(3, seed=1), _cov(seed=2)
    off = cov.clone()
    off[0, 1] += 4e-16                       # a few ulps: within rounding of a product
    x = _randn(9, 3, seed=3)
    results = []
    for c in (cov, off):
        energy = GaussianEnergy(mean, c, trainable=True)
        loss = ScoreMatching(energy)(x)
        loss.backward()
        results.append((energy.gradient(x), energy.cov.grad.clone()))
        params = {"mean": mean.clone().requires_grad_(True), "cov": c.clone().requires_grad_(True)}
        want = torch.autograd.grad(_exact_score_matching(x, **params), list(params.values()))
        torch.testing.assert_close(energy.mean.grad, want[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(energy.cov.grad, want[1], rtol=1e-10, atol=1e-12)
        assert torch.equal(energy.cov.grad, energy.cov.grad.mT)      # exactly symmetric
        xg = x.clone().requires_grad_(True)
        gx = torch.autograd.grad(_plain(xg, mean, c).sum(), xg)[0]
        torch.testing.assert_close(energy.gradient(x), gx, rtol=1e-12, atol=1e-12)
    # before: the 4e-16 switched inverse() from Cholesky to LU and cov's gradient jumped
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss_cls", [ScoreMatching, SlicedScoreMatching])
def test_training_keeps_the_covariance_symmetric_and_loadable(loss_cls):
    torch.manual_seed(0)
    data = torch.randn(256, 3, dtype=D) @ torch.tensor([[1.4, 0.0, 0.0], [0.5, 1.0, 0.0],
                                                       [0.2, -0.3, 0.7]], dtype=D)
    energy = GaussianEnergy(torch.zeros(3, dtype=D), torch.eye(3, dtype=D), trainable=True)
    opt = torch.optim.Adam(energy.parameters(), lr=0.05)
    loss_fn = loss_cls(energy)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(data).backward()
        opt.step()
    assert torch.equal(energy.cov, energy.cov.mT)
    assert not torch.equal(energy.cov, torch.eye(3, dtype=D))         # it trained
    fresh = GaussianEnergy(torch.zeros(3, dtype=D), torch.eye(3, dtype=D))
    fresh.load_state_dict(energy.state_dict())
    torch.testing.assert_close(fresh(data), energy(data).detach())


def test_closed_form_parameter_gradients_are_symmetric():
    mean, cov = _randn(3, seed=4), _cov(seed=5)
    cov[1, 2] += 1e-15
    energy = GaussianEnergy(mean, cov, trainable=True)
    x, w = _randn(7, 3, seed=6), torch.linspace(-1, 2, 7, dtype=D)
    params = {"mean": mean.clone().requires_grad_(True), "cov": cov.clone().requires_grad_(True)}
    want = torch.autograd.grad((w * _plain(x, **params)).sum(), list(params.values()))
    summed = energy.parameter_gradient_sum(x, w)
    (_,), total = energy._energy_total_and_parameter_gradient_sum((x, w))
    per = energy.parameter_gradient(x)
    for got in (summed["cov"], total["cov"], (w[:, None, None] * per["cov"]).sum(0)):
        torch.testing.assert_close(got, want[1], rtol=1e-10, atol=1e-12)
    for got in (summed["cov"], total["cov"]):
        assert torch.equal(got, got.mT)
    assert torch.equal(per["cov"], per["cov"].mT)


def test_symmetry_is_checked_relative_to_rounding():
    cov = _cov(5, seed=7)
    rounded = cov.float().double() @ torch.eye(5, dtype=D)
    rounded[0, 3] += 1e-7 * float(cov.abs().max())      # a float32-sized asymmetry
    GaussianEnergy(torch.zeros(5, dtype=D), rounded)      # accepted: read as sym(S)
    bad = cov.clone()
    bad[0, 3] += 0.1
    with pytest.raises(ParameterError, match=r"max \|S - S\^T\| = 0\.1.*\(S \+ S\.mT\) / 2"):
        GaussianEnergy(torch.zeros(5, dtype=D), bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rounding_asymmetry_is_accepted(dtype):
    """A float16/bfloat16 covariance ``Q D Q^T`` made in that dtype is off symmetric by
    its rounding (about one ulp of the dtype, far above 1e-5 of max|S|): accepted and read
    as its symmetric part, as float32 rounding is; an asymmetry of a tenth of max|S| is
    not. Reference: the plain formula in float64 on the symmetric part."""
    Q, _ = torch.linalg.qr(_randn(6, 6, seed=11))
    D6 = torch.diag(torch.linspace(1.0, 3.0, 6, dtype=D))
    Qd, Dd = Q.to(dtype), D6.to(dtype)
    cov = Qd @ Dd @ Qd.mT
    c64 = cov.double()
    assert (c64 - c64.mT).abs().max() > 1e-4 * c64.abs().max()   # the case in question
    energy = GaussianEnergy(torch.zeros(6, dtype=dtype), cov)
    x = _randn(4, 6, seed=12).to(dtype)
    sym = (c64 + c64.mT) / 2
    want = 0.5 * torch.einsum("bi,ij,bj->b", x.double(), torch.linalg.inv(sym), x.double())
    torch.testing.assert_close(energy(x).double(), want, rtol=3e-2, atol=1e-2)
    bad = cov.clone()
    bad[0, 3] += 0.1 * float(c64.abs().max())
    with pytest.raises(ParameterError, match="not symmetric"):
        GaussianEnergy(torch.zeros(6, dtype=dtype), bad)
