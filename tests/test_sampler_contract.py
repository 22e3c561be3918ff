"""TorchEBM's sampler and score-matching contract, the honest diagnostics, step-size adaptation.

Each test of issue 15's items uses its reproducer as input. Expected values are
derived independently: from the update rule written out here in plain torch,
from states in the returned trajectory, or by hand. Randomized runs are seeded
(``seed=``, ``generator=`` or ``torch.manual_seed``).
"""

import inspect
import math
import warnings

import pytest
import torch

from torchebm.core import (BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy, HarmonicEnergy,
                           LennardJonesEnergy, MultiDoubleWellEnergy)
from torchebm.losses import ScoreMatching, score_matching_loss
from torchebm.samplers import (MALA, ConstantScheduler, CosineScheduler, Diagnostics,
                               ExponentialDecayScheduler, HamiltonianMonteCarlo,
                               LangevinDynamics, LinearScheduler, MultiStepScheduler,
                               WarmupScheduler, effective_sample_size, split_rhat)

T = torch.float64


class Quadratic(BaseEnergyFunction):
    """0.5 |x|^2 over every non-batch dimension: maps [B, ...] to [B]."""

    def forward(self, x):
        return 0.5 * x.reshape(x.shape[0], -1).square().sum(1)


class ZeroGradient(BaseEnergyFunction):
    """A hand-written gradient that overrides autograd (TorchEBM's documented way)."""

    def forward(self, x):
        return 0.5 * (x**2).sum(-1)

    def gradient(self, x):                      # no create_graph parameter, as in TorchEBM
        return torch.zeros_like(x)


def gaussian2():
    return GaussianEnergy(torch.zeros(2), torch.eye(2))


# -- 1, 2: model=, device=, dtype= -------------------------------------------------------------

def test_model_keyword_and_attribute_and_energy_keyword():
    e = gaussian2()
    for sampler in (LangevinDynamics(model=e), MALA(model=e), HamiltonianMonteCarlo(model=e),
                    LangevinDynamics(energy=e), LangevinDynamics(e)):
        assert sampler.model is e and sampler.energy is e
    assert ScoreMatching(model=e).model is e
    with pytest.raises(TypeError, match="not both"):
        LangevinDynamics(model=e, energy=gaussian2())
    with pytest.raises(TypeError, match="needs an energy"):
        MALA()


def test_dtype_and_device_on_samplers_and_losses():
    s = LangevinDynamics(model=gaussian2(), dtype=T, device="cpu", step_size=0.1)
    assert s.dtype == T and s.device == torch.device("cpu")
    out = s.sample(dim=2, n_samples=3, n_steps=2)
    assert out.dtype == T and out.device == torch.device("cpu")
    # an explicit dtype also converts a given x
    assert s.sample(x=torch.zeros(3, 2, dtype=torch.float32), n_steps=1).dtype == T
    assert LangevinDynamics(gaussian2(), dtype=torch.float32).sample(dim=2, n_steps=1).dtype \
        == torch.float32
    loss = ScoreMatching(model=Quadratic(), dtype=T, device="cpu")
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    value = loss(x)
    x64 = x.to(T)
    assert value.dtype == T
    torch.testing.assert_close(value, (0.5 * x64.square().sum(1) - 3).mean())
    with pytest.raises(TypeError, match="dtype"):
        MALA(gaussian2(), dtype=torch.int64)


# -- 3, 4: positional order and return shapes ----------------------------------------------------

SAMPLE_ORDER = ["x", "dim", "n_steps", "n_samples", "thin", "return_trajectory",
                "return_diagnostics", "reset_schedulers"]


@pytest.mark.parametrize("cls", [LangevinDynamics, MALA, HamiltonianMonteCarlo])
def test_sample_positional_order_is_torchebms(cls):
    names = list(inspect.signature(cls.sample).parameters)[1:1 + len(SAMPLE_ORDER)]
    assert names == SAMPLE_ORDER
    # the reproducer: sample(None, 2, 7) is ONE chain of 7 steps
    traj = cls(gaussian2(), seed=0).sample(None, 2, 7, 1, 1, True)
    assert traj.shape == (1, 7, 2)


def test_trajectory_shape_and_diagnostics_dict_values():
    energy = gaussian2()
    traj, diag = MALA(energy, step_size=0.5, seed=3).sample(
        dim=2, n_samples=6, n_steps=7, thin=3, return_trajectory=True, return_diagnostics=True)
    assert traj.shape == (6, 7 // 3, 2)
    assert isinstance(diag, dict) and set(diag) == {"mean", "var", "energy", "acceptance_rate"}
    torch.testing.assert_close(diag["mean"], traj.mean(0))
    torch.testing.assert_close(diag["var"], traj.var(0))
    energies = 0.5 * (traj ** 2).sum(-1)               # N(0, I): E = |x|^2 / 2, by hand
    torch.testing.assert_close(diag["energy"], energies.mean(0))
    assert diag["acceptance_rate"].shape == (2,)
    final, d2 = HamiltonianMonteCarlo(energy, seed=1).sample(dim=2, n_steps=5,
                                                            return_diagnostics=True)
    assert final.shape == (1, 2) and d2["energy"].shape == (5,)
    lang = LangevinDynamics(energy, seed=0).sample(dim=2, n_samples=2, n_steps=4,
                                                   return_diagnostics=True)[1]
    assert set(lang) == {"mean", "var", "energy"}


def test_acceptance_rate_counts_moved_chains():
    """A MALA proposal is continuous, so a chain moved exactly when it accepted."""
    traj, diag = MALA(DoubleWellEnergy(), step_size=0.6, seed=4).sample(
        x=torch.zeros(200, 2, dtype=T), n_steps=6, return_trajectory=True,
        return_diagnostics=True)
    moved = (traj[:, 1:] != traj[:, :-1]).any(-1).to(T).mean(0)
    torch.testing.assert_close(diag["acceptance_rate"][1:], moved)
    assert 0.05 < float(moved.mean()) < 0.95          # both outcomes occurred


# -- 5: global RNG by default --------------------------------------------------------------------

@pytest.mark.parametrize("cls", [LangevinDynamics, MALA, HamiltonianMonteCarlo])
def test_global_rng_makes_runs_reproducible(cls):
    s = cls(gaussian2(), step_size=0.1)
    torch.manual_seed(42)
    a = s.sample(dim=2, n_samples=3, n_steps=5)
    torch.manual_seed(42)
    b = s.sample(dim=2, n_samples=3, n_steps=5)
    torch.manual_seed(43)
    c = s.sample(dim=2, n_samples=3, n_steps=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_private_streams_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    MALA(gaussian2(), seed=5).sample(dim=2, n_steps=3)
    LangevinDynamics(gaussian2()).sample(dim=2, n_steps=3,
                                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)


# -- 6: tuple dim and dim from the energy ----------------------------------------------------------

def test_tuple_dim_and_dim_from_the_energy():
    assert LangevinDynamics(gaussian2(), seed=0).sample(dim=(2,), n_samples=3,
                                                       n_steps=2).shape == (3, 2)
    assert HamiltonianMonteCarlo(gaussian2(), seed=0).sample(n_steps=3).shape == (1, 2)
    assert MALA(gaussian2(), seed=0).sample(n_samples=4, n_steps=3).shape == (4, 2)
    with pytest.raises(ValueError, match="dim must be provided"):
        HamiltonianMonteCarlo(DoubleWellEnergy()).sample(n_steps=3)
    with pytest.raises(ValueError, match="dim must be provided"):
        LangevinDynamics(gaussian2()).sample(n_steps=3)      # as TorchEBM: Langevin needs dim
    # a particle system's dim is the particles' dimension (bgflow's convention): the state
    # is n_particles * dim (DW-4: 4 x 2 = 8, LJ-13: 13 x 3 = 39), not dim
    assert MALA(MultiDoubleWellEnergy(), step_size=0.01, seed=0).sample(
        n_samples=4, n_steps=2).shape == (4, 8)
    assert HamiltonianMonteCarlo(LennardJonesEnergy(), step_size=1e-4, seed=0).sample(
        x=None, n_samples=2, n_steps=1).shape == (2, 39)


def test_image_shaped_states_sample_the_right_law():
    """HMC on [chains, 3, 4] states of a per-sample quadratic: N(0, I) in 12 dimensions."""
    sampler = HamiltonianMonteCarlo(Quadratic(), step_size=0.5, n_leapfrog_steps=3, seed=0)
    assert sampler.sample(dim=(3, 4), n_samples=5, n_steps=2).shape == (5, 3, 4)
    final = sampler.sample(x=torch.zeros(2000, 3, 4, dtype=T), n_steps=30)   # from a point
    assert final.shape == (2000, 3, 4)
    var = final.reshape(-1).var()                  # 24000 independent N(0, 1) entries
    assert abs(float(var) - 1.0) < 5 * math.sqrt(2 / final.numel())


# -- 7: clamp and argument validation ----------------------------------------------------------------

def test_clamp_keeps_states_inside_and_bad_arguments_are_refused():
    x0 = torch.linspace(-3, 3, 16).unsqueeze(-1).repeat(1, 2)
    out = LangevinDynamics(HarmonicEnergy(), step_size=0.1, noise_scale=5.0,
                           clamp=(-0.5, 0.5), seed=0).sample(x=x0, n_steps=20)
    assert float(out.min()) >= -0.5 and float(out.max()) <= 0.5
    e = gaussian2()
    with pytest.raises(ValueError, match="clamp"):
        LangevinDynamics(e, clamp=(1.0, -1.0))
    for bad in (-1.0, float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="noise_scale must be positive"):
            LangevinDynamics(e, noise_scale=bad)
        with pytest.raises(ValueError, match="step_size must be positive"):
            MALA(e, step_size=bad)
    with pytest.raises(ValueError, match="n_leapfrog_steps must be positive"):
        HamiltonianMonteCarlo(e, n_leapfrog_steps=0)
    with pytest.raises(ValueError, match="mass has 3 entries"):
        HamiltonianMonteCarlo(e, mass=torch.ones(3))           # the Gaussian fixes n = 2
    with pytest.raises(ValueError, match="mass has 3 entries"):
        HamiltonianMonteCarlo(DoubleWellEnergy(), mass=torch.ones(3)).sample(dim=2, n_steps=1)
    with pytest.raises(ValueError, match="mass"):
        HamiltonianMonteCarlo(e, mass=-1.0)
    with pytest.raises(ValueError, match="thin"):
        MALA(e).sample(dim=2, thin=0)
    with pytest.raises(ValueError, match="model_kwargs"):
        MALA(e).sample(dim=2, model_kwargs={"y": 1})
    with pytest.raises(ValueError, match="integrator"):
        HamiltonianMonteCarlo(e, integrator="yoshida")


def test_hmc_mass_matches_a_rescaled_target():
    """HMC with mass m on E(x) = sum x^2 / (2 s^2) keeps the target: variance s^2."""
    s2 = torch.tensor([0.25, 4.0], dtype=T)
    energy = GaussianEnergy(torch.zeros(2), torch.diag(s2))
    final = HamiltonianMonteCarlo(energy, step_size=0.3, n_leapfrog_steps=5, mass=1 / s2,
                                  seed=2).sample(x=torch.zeros(4000, 2, dtype=T), n_steps=40)
    torch.testing.assert_close(final.var(0), s2, rtol=0.1, atol=0)


# -- 8: a hand-written gradient is used -----------------------------------------------------------

def test_hand_written_gradient_is_what_the_sampler_follows():
    h = 0.1
    x0 = torch.ones(4, 2, dtype=T)
    out = LangevinDynamics(ZeroGradient(), step_size=h, generator=torch.Generator()
                           .manual_seed(9)).sample(x=x0, n_steps=3)
    g = torch.Generator().manual_seed(9)
    want = x0.clone()
    for _ in range(3):                            # gradient 0: pure noise, x + sqrt(2h) xi
        want = want + math.sqrt(2 * h) * torch.randn(want.shape, dtype=T, generator=g)
    torch.testing.assert_close(out, want)


def test_score_matching_with_a_gradient_override_without_create_graph():
    class Analytic(BaseEnergyFunction):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=T))

        def forward(self, x):
            return 0.5 * self.a * (x**2).sum(-1)

        def gradient(self, x):
            return self.a * x

    x = torch.randn(8, 3, dtype=T, generator=torch.Generator().manual_seed(0))
    energy = Analytic()
    loss = score_matching_loss(energy, x)
    # |a x|^2 / 2 - 3 a, by hand; d/da = mean(a |x|^2) - 3
    torch.testing.assert_close(loss, (0.5 * 4.0 * (x**2).sum(-1) - 6.0).mean())
    loss.backward()
    torch.testing.assert_close(energy.a.grad, (2.0 * (x**2).sum(-1)).mean() - 3.0)


# -- 9: score matching: dim 0 is the batch ------------------------------------------------------------

@pytest.mark.parametrize("method", ["exact", "approx"])
def test_score_matching_on_image_shaped_data(method):
    x = torch.randn(64, 3, 8, 8, dtype=T, generator=torch.Generator().manual_seed(2))
    got = ScoreMatching(Quadratic(), hessian_method=method)(x)
    # per sample 0.5 |x|^2 - 192 (the Laplacian of 0.5 |x|^2 is n = 192; Hutchinson's
    # v^T I v = n exactly for Rademacher v); expected value -96 for N(0, I) data
    want = (0.5 * x.reshape(64, -1).square().sum(1) - 192).mean()
    torch.testing.assert_close(got, want)
    assert abs(float(got.detach()) + 96) < 10


def test_score_matching_flattens_for_compiled_energies():
    from torchebm.symbolic import from_expression
    energy = from_expression("sum(0.5*x**2 + 0.25*x**4)")
    x = torch.randn(5, 2, 3, dtype=T, generator=torch.Generator().manual_seed(1))
    xf = x.reshape(5, 6)
    want = (0.5 * (xf + xf**3).square().sum(1) - (1 + 3 * xf**2).sum(1))
    torch.testing.assert_close(score_matching_loss(energy, x, "none"), want)


def test_score_matching_refuses_what_it_cannot_compute():
    with pytest.raises(TypeError, match="not a function"):
        ScoreMatching(lambda x: (x**2).sum(-1))
    with pytest.raises(TypeError, match="not a function"):
        score_matching_loss(lambda x: (x**2).sum(-1), torch.zeros(2, 2))

    class KeepsDim(BaseEnergyFunction):
        def forward(self, x):
            return (x**2).sum(-1, keepdim=True)

    with pytest.raises(ValueError, match=r"maps x \[B, \.\.\.\] to \[B\]"):
        ScoreMatching(KeepsDim())(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="hessian_method"):
        ScoreMatching(Quadratic(), hessian_method="hutchinson")


# -- 10: ESS and R-hat are NaN where undefined ---------------------------------------------------------

def test_ess_and_rhat_are_nan_for_nan_or_constant_chains():
    nan = torch.full((4, 10, 1), float("nan"))
    assert torch.isnan(effective_sample_size(nan)).all() and torch.isnan(split_rhat(nan)).all()
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(50, 25, 2, generator=g, dtype=T)
    draws[7, :, 0] = float("nan")                        # one NaN chain among 50
    ess, rhat = effective_sample_size(draws), split_rhat(draws)
    assert torch.isnan(ess[0]) and torch.isnan(rhat[0])
    assert 0.5 * 1250 < float(ess[1]) < 1.5 * 1250       # the other dimension is iid
    const = torch.ones(3, 10, 2)
    assert torch.isnan(effective_sample_size(const)).all() and torch.isnan(split_rhat(const)).all()
    summary = Diagnostics({}, mean_energy=torch.zeros(3), ess=ess, rhat=rhat,
                          n_chains=50).summary()
    assert "1 of 2 dimensions have undefined ESS" in summary
    assert "min 3871" not in summary


# -- 11: the summary flags what misleads ---------------------------------------------------------------

def test_summary_flags_chains_that_disagree():
    """Chains stuck in the two wells of a high barrier: R-hat far above 1.01."""
    x0 = torch.cat([torch.full((5, 1), -1.0), torch.full((5, 1), 1.0)]).to(T)
    _, diag = MALA(DoubleWellEnergy(barrier_height=20.0), step_size=0.01, seed=0).sample(
        x=x0, n_steps=200, return_diagnostics=True)
    assert float(diag.rhat.max()) > 1.5
    text = diag.summary()
    assert "1 of 1 dimensions have split R-hat above 1.01" in text
    assert "effective sample size below 400" in text


def test_langevin_reports_chains_that_became_non_finite():
    class LogBarrier(BaseEnergyFunction):
        def forward(self, x):
            return (0.5 * x**2 - torch.log(x)).sum(-1)

    x0 = torch.full((50, 1), 0.3, dtype=T)
    with pytest.warns(RuntimeWarning, match="chains became non-finite"):
        traj, diag = LangevinDynamics(LogBarrier(), step_size=0.5, seed=1).sample(
            x=x0, n_steps=20, return_trajectory=True, return_diagnostics=True)
    crossed = int((traj <= 0).any(-1).any(-1).sum())       # log of x <= 0 is NaN or -inf
    assert 0 < crossed < 50
    assert diag.nonfinite_chains == crossed
    assert f"{crossed} of 50 chains became non-finite" in diag.summary()


def test_chains_started_where_the_energy_is_nan_are_refused():
    class LogBarrier(BaseEnergyFunction):
        def forward(self, x):
            return (-torch.log(x)).sum(-1)

    x0 = torch.ones(10, 2)
    x0[:3, 0] = -1.0
    for sampler in (LangevinDynamics(LogBarrier()), MALA(LogBarrier()),
                    HamiltonianMonteCarlo(LogBarrier())):
        with pytest.raises(ValueError, match="3 of 10 chains start where the energy is not finite"):
            sampler.sample(x=x0, n_steps=2)


def test_no_warning_for_a_healthy_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, diag = MALA(gaussian2(), step_size=0.5, seed=0).sample(
            x=torch.zeros(8, 2, dtype=T), n_steps=3000, return_diagnostics=True)
    assert "warning" not in diag.summary()


# -- schedules ---------------------------------------------------------------------------------------

def test_schedule_values_follow_their_formulas():
    def run(s, k):
        return [s.get_value()] + [s.step() for _ in range(k)]

    assert run(ConstantScheduler(0.5), 2) == [0.5, 0.5, 0.5]
    assert run(ExponentialDecayScheduler(1.0, 0.5, min_value=0.2), 3) == [1.0, 0.5, 0.25, 0.2]
    assert run(LinearScheduler(1.0, 0.0, n_steps=4), 5) == pytest.approx(
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert run(CosineScheduler(1.0, 0.0, n_steps=2), 3) == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert run(MultiStepScheduler(1.0, [1, 3], gamma=0.1), 3) == pytest.approx(
        [1.0, 0.1, 0.1, 0.01])
    warm = WarmupScheduler(LinearScheduler(1.0, 0.0, n_steps=2), warmup_steps=2,
                           warmup_init_factor=0.1)
    assert run(warm, 4) == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0])
    warm.reset()
    assert warm.get_value() == pytest.approx(0.1)


def test_samplers_follow_their_schedules():
    """Langevin with a step schedule equals the update written out with those step sizes."""
    x0 = torch.ones(3, 2, dtype=T)
    sched = LinearScheduler(0.2, 0.1, n_steps=2)
    s = LangevinDynamics(HarmonicEnergy(), step_size=sched, noise_scale=ExponentialDecayScheduler(
        1.0, 0.5), generator=torch.Generator().manual_seed(3))
    out = s.sample(x=x0, n_steps=3)
    g = torch.Generator().manual_seed(3)
    want = x0.clone()
    for h, sigma in ((0.2, 1.0), (0.15, 0.5), (0.1, 0.25)):   # E = |x|^2/2: gradient x
        want = want - h * want + sigma * math.sqrt(2 * h) * torch.randn(
            want.shape, dtype=T, generator=g)
    torch.testing.assert_close(out, want)
    assert s.get_scheduled_value("step_size") == pytest.approx(0.1)
    s.sample(x=x0, n_steps=0)                    # reset_schedulers=True restarts them
    assert s.get_scheduled_value("step_size") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule and target_accept"):
        MALA(gaussian2(), step_size=sched, target_accept=0.57)


# -- 5 (build): step-size adaptation ---------------------------------------------------------------

def _ill_conditioned(n):
    from torchebm.symbolic import from_expression
    v = torch.logspace(-2, 2, n, dtype=T)
    return from_expression("sum(0.5*x**2/v)", v=v), v


@pytest.mark.parametrize("cls, target", [(MALA, 0.57), (HamiltonianMonteCarlo, 0.65)])
def test_adaptation_reaches_the_target_acceptance(cls, target):
    energy, v = _ill_conditioned(10)
    x0 = torch.randn(16, 10, dtype=T, generator=torch.Generator().manual_seed(0)) * v.sqrt()
    kw = {"n_leapfrog_steps": 5} if cls is HamiltonianMonteCarlo else {}
    sampler = cls(energy, step_size=1e-3, seed=0, target_accept=target, n_warmup=400,
                  adapt_mass=True, **kw)
    _, diag = sampler.sample(x=x0, n_steps=400, return_diagnostics=True)
    assert abs(float(diag.acceptance_rate.mean()) - target) < 0.05
    assert diag.step_size.shape == (1,) and sampler.adapted_step_size is diag.step_size
    # the adapted inverse mass estimates the variances (pooled over 16 chains)
    ratio = diag.inverse_mass / v
    assert float(ratio.min()) > 0.5 and float(ratio.max()) < 2.0
    assert "adapted step size" in diag.summary()


def test_adaptation_beats_the_untuned_step_in_ess_per_gradient():
    energy, v = _ill_conditioned(10)
    x0 = torch.randn(16, 10, dtype=T, generator=torch.Generator().manual_seed(1)) * v.sqrt()
    best = None
    for h in (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2):
        traj, d = MALA(energy, step_size=h, seed=0).sample(
            x=x0, n_steps=300, return_trajectory=True, return_diagnostics=True)
        if float(d.acceptance_rate.mean()) > 0.2:
            best = float(effective_sample_size(traj).min()) / (16 * 300)
    adapted = MALA(energy, step_size=1e-3, seed=0, target_accept=0.57, n_warmup=300,
                   adapt_mass=True)
    traj = adapted.sample(x=x0, n_steps=300, return_trajectory=True)
    per_grad = float(effective_sample_size(traj).min()) / (16 * 600)   # warm-up counted
    assert per_grad > 5 * best


def test_per_chain_adaptation_gives_one_step_size_per_chain():
    energy, v = _ill_conditioned(4)
    sampler = MALA(energy, step_size=1e-3, seed=0, target_accept=0.57, n_warmup=200,
                   adapt_per_chain=True)
    _, diag = sampler.sample(x=torch.zeros(6, 4, dtype=T), n_steps=5, return_diagnostics=True)
    assert diag.step_size.shape == (6,)
    # without mass adaptation the step is limited by the smallest variance, 0.01
    assert float(diag.step_size.max()) < 0.05
    with pytest.raises(ValueError, match="target_accept"):
        MALA(energy, target_accept=1.5)


def test_score_matching_uses_a_hand_written_laplacian():
    class Analytic(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * (x**2).sum(-1)

        def gradient_and_laplacian(self, x):          # deliberately scaled: proves it is used
            return 2 * x, torch.full(x.shape[:1], 10.0, dtype=x.dtype)

    x = torch.randn(6, 3, dtype=T, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(score_matching_loss(Analytic(), x, "none"),
                               0.5 * (2 * x).square().sum(-1) - 10.0)


def test_a_later_call_can_reuse_the_adaptation():
    energy, v = _ill_conditioned(4)
    sampler = MALA(energy, step_size=1e-3, seed=0, target_accept=0.57, n_warmup=200,
                   adapt_mass=True)
    x = sampler.sample(x=torch.zeros(8, 4, dtype=T), n_steps=5)
    h, inv = sampler.adapted_step_size, sampler.adapted_inverse_mass
    sampler.n_warmup = 0
    _, diag = sampler.sample(x=x, n_steps=5, return_diagnostics=True)
    assert torch.equal(diag.step_size, h) and torch.equal(diag.inverse_mass, inv)
    fresh = MALA(energy, target_accept=0.57, n_warmup=0)
    with pytest.raises(ValueError, match="n_warmup=0 reuses"):
        fresh.sample(x=x, n_steps=1)


def test_mass_adaptation_alone_keeps_the_step_size():
    energy, v = _ill_conditioned(3)
    sampler = HamiltonianMonteCarlo(energy, step_size=0.2, n_leapfrog_steps=3, seed=0,
                                    adapt_mass=True, n_warmup=300)
    _, diag = sampler.sample(x=torch.zeros(32, 3, dtype=T), n_steps=3, return_diagnostics=True)
    assert diag.step_size is None and sampler.step_size == 0.2
    ratio = diag.inverse_mass / v
    assert float(ratio.min()) > 0.5 and float(ratio.max()) < 2.0


def test_acceptance_attribute_is_per_step_and_dict_entry_per_kept_step():
    """d.acceptance_rate holds every step, d["acceptance_rate"] every thin-th one (its last
    step of each block of thin), and a fixed step size is not reported as adapted."""
    energy = HarmonicEnergy(k=1.0)
    x = torch.randn(64, 2, dtype=T, generator=torch.Generator().manual_seed(0))
    _, d = MALA(energy, step_size=0.05, seed=0).sample(
        x=x, n_steps=200, thin=10, return_trajectory=True, return_diagnostics=True,
        progress=False)
    assert d.acceptance_rate.shape == (200,) and d["acceptance_rate"].shape == (20,)
    torch.testing.assert_close(d["acceptance_rate"], d.acceptance_rate[9::10].to(T))
    # the per-step rate over all steps is the mean of the per-chain rates (both count the
    # same accept decisions)
    torch.testing.assert_close(d.acceptance_rate.mean(), d.chain_acceptance.mean())
    assert d.step_size is None
