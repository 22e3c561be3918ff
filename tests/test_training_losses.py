"""Training losses (CD, PCD, PT-CD, sliced and denoising score matching) against the
textbook formulas computed by autograd on plain-torch energies, in float64.

References are written here independently of the compiled code: each energy is a
plain torch expression of its parameters, its derivatives come from autograd
(double backward), and each loss from its paper's formula.
"""

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy
from torchebm.losses import (ContrastiveDivergence, DenoisingScoreMatching, ParallelTemperingCD,
                             PersistentContrastiveDivergence, SlicedScoreMatching,
                             score_matching_loss)
from torchebm.samplers import LangevinDynamics
from torchebm.symbolic import from_expression

D = torch.float64
MIXTURE = ("-logsumexp(logits[k] - 0.5*sum((x - M[k, :])**2)*exp(-2*log_s[k]) - n*log_s[k]"
           " for k in range(len(logits))) + logsumexp(logits[k] for k in range(len(logits)))")


class HandWritten(BaseEnergyFunction):
    """a sum(x^4) + c sum(x^2) + w . x, autograd derivatives."""

    def __init__(self, n):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.3, dtype=D))
        self.c = nn.Parameter(torch.tensor(-0.7, dtype=D))
        self.w = nn.Parameter(torch.linspace(-1, 1, n, dtype=D))

    def forward(self, x):
        return self.a * (x**4).sum(-1) + self.c * (x**2).sum(-1) + x @ self.w


def _cases(n=3):
    """(energy, its parameters in order, plain torch formula of (x, *parameters))."""
    g = torch.Generator().manual_seed(7)
    dw = DoubleWellEnergy(barrier_height=1.5, b=0.8, trainable=True)
    a = torch.randn(n, n, generator=g, dtype=D)
    cov = a @ a.T + n * torch.eye(n, dtype=D)
    gauss = GaussianEnergy(torch.randn(n, generator=g, dtype=D), cov, trainable=True)
    k = 3
    mix = from_expression(MIXTURE, logits=torch.randn(k, generator=g, dtype=D),
                          M=torch.randn(k, n, generator=g, dtype=D),
                          log_s=0.2 * torch.randn(k, generator=g, dtype=D), trainable=True)
    hand = HandWritten(n)

    def f_dw(x, bh, b):
        return bh * ((x**2 - b**2)**2).sum(-1)

    def f_gauss(x, mean, c):
        d = x - mean
        return 0.5 * ((d @ torch.linalg.inv(c)) * d).sum(-1)

    def f_mix(x, logits, m, log_s):
        sq = ((x.unsqueeze(-2) - m)**2).sum(-1)                         # [B, K]
        comp = logits - 0.5 * sq * torch.exp(-2 * log_s) - x.shape[-1] * log_s
        return -torch.logsumexp(comp, -1) + torch.logsumexp(logits, -1)

    def f_hand(x, a_, c_, w_):
        return a_ * (x**4).sum(-1) + c_ * (x**2).sum(-1) + x @ w_

    return {
        "double_well": (dw, [dw.barrier_height, dw.b], f_dw),
        "gaussian": (gauss, [gauss.mean, gauss.cov], f_gauss),
        "mixture": (mix, [mix.logits, mix.M, mix.log_s], f_mix),
        "hand_written": (hand, [hand.a, hand.c, hand.w], f_hand),
    }


CASES = ["double_well", "gaussian", "mixture", "hand_written"]


def _reference_grads(loss, params):
    return torch.autograd.grad(loss, params)


def _check(ours, ref, params):
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10), (float(ours), float(ref))
    got = torch.autograd.grad(ours, params)
    want = _reference_grads(ref, params)
    for g_, w_ in zip(got, want):
        assert torch.allclose(g_, w_, rtol=1e-10, atol=1e-10), (g_, w_)
        assert not torch.all(w_ == 0) or torch.all(g_ == 0)


def _plain_params(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def _data(n=3, b=17, seed=3):
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed), dtype=D)


def _autograd_g(f, x, ps):
    xg = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg, *ps).sum(), xg, create_graph=True)
    return xg, g


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_sliced_score_matching_is_the_textbook_formula(case, kind):
    energy, params, f = _cases()[case]
    x = _data()
    p = 4
    loss_fn = SlicedScoreMatching(energy, n_projections=p, projection_type=kind)
    v = loss_fn._get_random_projections(x.unsqueeze(0).expand(p, *x.shape),
                                        torch.Generator().manual_seed(11))
    if kind == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    ours = loss_fn(x, projections=v)
    # Song et al. 2019 eq. 8 with s = -dE/dx, by double backward on the plain formula
    ps = _plain_params(params)
    terms = []
    for k in range(p):
        xg, g = _autograd_g(f, x, ps)
        (hv,) = torch.autograd.grad((g * v[k]).sum(), xg, create_graph=True)
        terms.append(0.5 * (v[k] * g).sum(-1)**2 - (v[k] * hv).sum(-1))
    ref = torch.stack(terms).mean()
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(ours, params)
    want = torch.autograd.grad(ref, ps)
    for g_, w_ in zip(got, want):
        assert torch.allclose(g_, w_, rtol=1e-10, atol=1e-10)
    assert any(bool((w_ != 0).any()) for w_ in want)


@pytest.mark.parametrize("case", CASES)
def test_sliced_over_every_sign_vector_is_exact_score_matching(case):
    # the mean of v v^T over all 2^n sign vectors is I, so the sliced loss with every
    # Rademacher vector is Hyvarinen's |g|^2/2 - laplacian exactly
    energy, params, f = _cases(n=3)[case]
    x = _data(n=3)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=D)
    v = signs[:, None, :].expand(8, x.shape[0], 3)
    ours = SlicedScoreMatching(energy, n_projections=8)(x, projections=v)
    exact = score_matching_loss(energy, x)
    assert torch.allclose(ours, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_denoising_score_matching_is_the_textbook_formula(case):
    energy, params, f = _cases()[case]
    x = _data()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=D)
    sigma = 0.3
    ours = DenoisingScoreMatching(energy, noise_scale=sigma)(x, noise=eps)
    ps = _plain_params(params)
    _, g = _autograd_g(f, x + sigma * eps, ps)
    # Vincent 2011: |s(x~) - d log q(x~|x)/dx~|^2 / 2 with s = -g, d log q = -eps / sigma
    ref = (0.5 * ((-g) - (-eps / sigma))**2).sum(-1).mean()
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    for g_, w_ in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, ps)):
        assert torch.allclose(g_, w_, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_contrastive_divergence_loss_is_the_textbook_formula(case, reg):
    energy, params, f = _cases()[case]
    x = _data()
    neg = _data(seed=9) * 1.5
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01), k_steps=1,
                               energy_reg_weight=reg)
    ours = cd.compute_loss(x, neg)
    ps = _plain_params(params)
    ep, en = f(x, *ps), f(neg, *ps)
    ref = ep.mean() - en.mean() + reg * (ep.square().mean() + en.square().mean())
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    for g_, w_ in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, ps)):
        assert torch.allclose(g_, w_, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["double_well", "gaussian", "mixture"])
def test_parameter_gradient_is_per_sample_autograd(case):
    energy, params, f = _cases()[case]
    x = _data(b=6)
    got = energy.parameter_gradient(x)
    names = [name for name, _ in energy.named_parameters()]
    assert list(got) == names
    ps = _plain_params(params)
    for b in range(x.shape[0]):
        want = torch.autograd.grad(f(x[b:b + 1], *ps).sum(), ps)
        for name, w_ in zip(names, want):
            assert got[name].shape == (x.shape[0],) + tuple(w_.shape)
            assert torch.allclose(got[name][b], w_, rtol=1e-10, atol=1e-10)


def test_cd_parameter_gradient_is_data_minus_model_mean():
    # the CD gradient (no regulariser) is mean dE/dtheta(data) - mean dE/dtheta(negatives)
    energy, params, f = _cases()["double_well"]
    x, neg = _data(), _data(seed=9)
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01),
                               energy_reg_weight=0.0)
    got = torch.autograd.grad(cd.compute_loss(x, neg), params)
    # by hand: dE/dbh = sum((x^2-b^2)^2), dE/db = -4 bh b sum(x^2 - b^2)
    bh, b = 1.5, 0.8

    def by_hand(z):
        return [((z**2 - b**2)**2).sum(-1), -4 * bh * b * (z**2 - b**2).sum(-1)]

    for g_, dp, dn in zip(got, by_hand(x), by_hand(neg)):
        assert torch.allclose(g_, dp.mean() - dn.mean(), rtol=1e-12)


# -- CD mechanics ------------------------------------------------------------------------------
def _sampler(energy):
    return LangevinDynamics(energy, step_size=0.01, generator=torch.Generator().manual_seed(0))


def test_cd_warns_once_when_a_seeded_sampler_repeats_its_noise():
    """A sampler built with seed= restarts its noise at every call: every CD update would
    draw the same noise (the negatives of two updates from the same data are equal)."""
    energy = DoubleWellEnergy(trainable=True)
    x = _data()
    cd = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.01, seed=0),
                               k_steps=2)
    with pytest.warns(RuntimeWarning, match=r"seed=0 .*same noise.*generator=torch\.Generator"):
        _, first = cd(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # once per loss
        _, second = cd(x)
    assert torch.equal(first, second)        # what the warning is about
    quiet = ContrastiveDivergence(energy, _sampler(energy), k_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a generator: no warning, fresh noise
        _, a = quiet(x)
        _, b = quiet(x)
    assert not torch.equal(a, b)


def test_cd_returns_loss_and_detached_negatives_from_k_steps_at_the_data():
    energy = DoubleWellEnergy(trainable=True)
    x = _data()
    cd = ContrastiveDivergence(model=energy, sampler=_sampler(energy), k_steps=4)
    loss, neg = cd(x)
    assert loss.shape == () and neg.shape == x.shape and not neg.requires_grad
    assert cd.model is energy and cd.energy is energy
    # the same sampler from the same start gives the same negatives (CD-k starts at data)
    again = _sampler(energy).sample(x=x, n_steps=4, progress=False)
    assert torch.equal(neg, again)


def test_pcd_buffer_fifo_stratified_and_warnings():
    energy = DoubleWellEnergy()
    x = _data(b=5)
    pcd = PersistentContrastiveDivergence(energy, _sampler(energy), buffer_size=20,
                                          new_sample_ratio=0.0)
    assert pcd.replay_buffer is None and not pcd.buffer_initialized
    _, neg = pcd(x)
    assert pcd.replay_buffer.shape == (20, 3) and int(pcd.buffer_ptr) == 5
    assert torch.equal(pcd.replay_buffer[:5], neg)
    for _ in range(4):
        pcd(x)
    assert int(pcd.buffer_ptr) == 5          # 25 writes into 20 slots wrap around
    with torch.no_grad():
        pcd.replay_buffer[:, 0] = torch.arange(20, dtype=D)
    starts = pcd.get_start_points(x)
    idx = starts[:, 0].long()
    assert len(set(idx.tolist())) == 5       # stratified: one chain per stretch of 4
    assert torch.equal(idx // 4, torch.arange(5))
    small = PersistentContrastiveDivergence(energy, _sampler(energy), buffer_size=3)
    with pytest.warns(UserWarning, match="smaller than batch size"):
        small(x)


def test_cd_nonfinite_loss_warns_and_falls_back():
    energy = DoubleWellEnergy()
    cd = ContrastiveDivergence(energy, _sampler(energy))
    x = _data()
    with pytest.warns(RuntimeWarning, match="not finite"):
        loss = cd.compute_loss(x, torch.full_like(x, float("inf")))
    assert float(loss) == pytest.approx(0.1)
    raw = ContrastiveDivergence(energy, _sampler(energy), nonfinite_fallback=None)
    assert not torch.isfinite(raw.compute_loss(x, torch.full_like(x, float("inf"))))


def test_cd_under_vmap_needs_no_fallback_and_gives_each_member_its_gradient():
    """An ensemble of parameter sets through torch.func (functional_call, grad, vmap):
    the fallback's branch on the loss value cannot be vmapped (a clear error naming
    the fix, not vmap's own .item() error); without it each member's gradient is the
    textbook one."""
    from torch.func import functional_call, grad, vmap
    energy, params, f = _cases()["gaussian"]
    x, neg = _data(b=5), _data(b=5, seed=9)
    base = {k: p.detach() for k, p in energy.named_parameters()}
    stacked = {"mean": torch.stack([base["mean"], base["mean"] + 0.5]),
               "cov": torch.stack([base["cov"], base["cov"] + torch.eye(3, dtype=D)])}

    def gradients(cd):
        def loss(p):
            return functional_call(cd, {f"energy.{k}": v for k, v in p.items()},
                                   (x, neg), strict=False)
        return vmap(grad(loss))(stacked)

    class Loss(ContrastiveDivergence):
        def forward(self, x, neg):                  # the loss of given negatives
            return self.compute_loss(x, neg)
    with pytest.raises(RuntimeError, match=r"vmap.*nonfinite_fallback=None"):
        gradients(Loss(energy, _sampler(energy), energy_reg_weight=0.0))
    got = gradients(Loss(energy, _sampler(energy), energy_reg_weight=0.0,
                         nonfinite_fallback=None))
    for i in range(2):
        ps = [stacked["mean"][i].clone().requires_grad_(True),
              stacked["cov"][i].clone().requires_grad_(True)]
        want = torch.autograd.grad(f(x, *ps).mean() - f(neg, *ps).mean(), ps)
        torch.testing.assert_close(got["mean"][i], want[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["cov"][i], want[1], rtol=1e-10, atol=1e-12)


def test_parallel_tempering_swaps_follow_metropolis():
    # a sampler that puts the T = 1 chains at 0 and the T = 2 chains at 1 isolates the
    # swap: E = x^2 gives E(0) = 0, E(1) = 1, so a swap is accepted with probability
    # min(1, exp((1/1 - 1/2) (0 - 1))) = exp(-1/2), after which the T = 1 chain is at 1
    class Placing:
        def __init__(self, energy):
            self.energy = energy

        def sample(self, x, n_steps):
            hot = getattr(self.energy, "temperature", 1.0) != 1.0
            return torch.full_like(x, 1.0 if hot else 0.0)

    energy = from_expression("sum(x**2)")
    pt = ParallelTemperingCD(energy, Placing(energy), temps=(2.0, 1.0), k_steps=1,
                             energy_reg_weight=0.0)
    assert pt.temps == [1.0, 2.0]
    x = torch.zeros(40000, 1, dtype=D)
    neg = pt.negative_samples(x, torch.Generator().manual_seed(0))
    want = math.exp(-0.5)
    assert abs(float(neg.mean()) - want) < 0.01          # 5 standard errors
    assert abs(pt.swap_acceptance[0] - want) < 0.01
    assert set(neg.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="include 1.0"):
        ParallelTemperingCD(energy, Placing(energy), temps=(0.5, 2.0))


def test_parallel_tempering_reaches_the_other_well():
    # a deep 1-D double well: Langevin at T = 1 from x = 1 stays in its well, the
    # tempered chains cross and swap their states down
    energy = from_expression("8*(x[0]**2 - 1)**2")
    x = torch.ones(400, 1, dtype=D)
    sampler = LangevinDynamics(energy, step_size=0.01,
                               generator=torch.Generator().manual_seed(1))
    plain = ContrastiveDivergence(energy, sampler, k_steps=200).negative_samples(x)
    pt = ParallelTemperingCD(energy, LangevinDynamics(
        energy, step_size=0.01, generator=torch.Generator().manual_seed(1)),
        temps=(1.0, 4.0, 16.0), k_steps=200)
    neg = pt.negative_samples(x, torch.Generator().manual_seed(0))
    assert float((plain < 0).double().mean()) < 0.02
    assert float((neg < 0).double().mean()) > 0.2
    assert all(0 < a <= 1 for a in pt.swap_acceptance)


# -- argument checks ---------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors():
    energy = DoubleWellEnergy()
    # an unknown projection type: TorchEBM's contract, a warning and Rademacher vectors
    with pytest.warns(UserWarning, match="Invalid projection_type 'invalid_type'"):
        ssm = SlicedScoreMatching(energy, projection_type="invalid_type")
    assert ssm.projection_type == "rademacher"
    v = ssm._get_random_projections(torch.randn(6, 3))
    assert v.shape == (6, 3) and bool((v.abs() == 1).all())
    ssm.projection_type = "bogus"           # set later: refused when vectors are drawn
    with pytest.raises(ValueError, match="projection_type must be one of"):
        ssm(torch.randn(6, 3))
    with pytest.raises(ValueError, match="both energy= and model="):
        SlicedScoreMatching(energy, model=energy)
    with pytest.raises(ValueError, match="noise_scale must be > 0"):
        DenoisingScoreMatching(energy, noise_scale=0.0)
    with pytest.raises(ValueError, match="sampler"):
        ContrastiveDivergence(energy, None)
    with pytest.raises(ValueError, match="k_steps"):
        ContrastiveDivergence(energy, _sampler(energy), k_steps=0)
    with pytest.raises(ValueError, match="projections have shape"):
        SlicedScoreMatching(energy, n_projections=2)(_data(), projections=torch.ones(3, 17, 3))


def test_losses_train_a_model():
    # five hundred steps of sliced and denoising score matching move a Gaussian's
    # mean to the data's (the data mean is (1, -2))
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(512, 2, generator=gen, dtype=D) + torch.tensor([1.0, -2.0], dtype=D)
    for make in (lambda e: SlicedScoreMatching(e, n_projections=2),
                 lambda e: DenoisingScoreMatching(e, noise_scale=0.05)):
        model = from_expression("0.5*sum((x - mu)**2)", mu=torch.zeros(2), trainable=True)
        loss_fn = make(model)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(500):
            opt.zero_grad()
            loss_fn(data, generator=gen).backward()
            opt.step()
        assert torch.allclose(model.mu.detach(), data.mean(0), atol=0.1)


def test_multi_dimensional_inputs_for_denoising():
    class Quadratic(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * x.reshape(x.shape[0], -1).square().sum(-1)

    x = torch.randn(8, 3, 4, 4, dtype=D)
    eps = torch.randn_like(x)
    sigma = 0.2
    loss = DenoisingScoreMatching(Quadratic(), noise_scale=sigma)(x, noise=eps)
    # g(x~) = x~ = x + sigma eps, so the residual eps/sigma - x - sigma eps
    want = 0.5 * ((eps / sigma - x - sigma * eps)**2).reshape(8, -1).sum(-1).mean()
    assert torch.allclose(loss, want, rtol=1e-12)
    assert math.isfinite(float(loss.detach()))


def test_replay_buffer_starts_as_scaled_noise_then_warm_up_steps():
    energy = from_expression("0.5*sum(x**2)")

    class Halving:                     # a "sampler" whose every call halves the states
        def sample(self, x, n_steps):
            return x * 0.5**n_steps

    pcd = PersistentContrastiveDivergence(energy, Halving(), buffer_size=20000, init_steps=0,
                                          init_noise=0.5)
    buf = pcd.initialize_buffer((2,), generator=torch.Generator().manual_seed(0),
                                like=torch.empty(0, dtype=D))
    assert buf.shape == (20000, 2) and buf.dtype == D
    assert abs(float(buf.std()) - 0.5) < 0.01
    warm = PersistentContrastiveDivergence(energy, Halving(), buffer_size=20000, init_steps=2,
                                           init_noise=0.5)
    buf2 = warm.initialize_buffer((2,), generator=torch.Generator().manual_seed(0),
                                  like=torch.empty(0, dtype=D))
    assert torch.allclose(buf2, buf * 0.25)      # the same noise, then 2 halving steps
