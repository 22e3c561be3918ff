"""Samplers recover known distributions, with tolerances from the effective sample size.

Note on randomized tests: every run is seeded (sampler ``seed=``), so results are
reproducible; tolerances are 5 standard errors computed from the measured
effective sample size, so a correct sampler fails with negligible probability.
"""

import math

import pytest
import torch

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy, HarmonicEnergy
from torchebm.samplers import (MALA, HamiltonianMonteCarlo, LangevinDynamics,
                               effective_sample_size, split_rhat)

T = torch.float64
MEAN = torch.tensor([1.0, -2.0], dtype=T)
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=T)


@pytest.mark.parametrize("sampler", [
    lambda e: MALA(e, step_size=0.4, seed=0),
    lambda e: HamiltonianMonteCarlo(e, step_size=0.3, n_leapfrog_steps=5, seed=0),
], ids=["MALA", "HMC"])
def test_recovers_gaussian_mean_and_covariance(sampler):
    energy = GaussianEnergy(MEAN, COV)
    x0 = torch.zeros(1000, 2, dtype=T)
    traj, diag = sampler(energy).sample(x=x0, n_steps=300, return_trajectory=True,
                                        return_diagnostics=True)
    post = traj[:, 100:]                              # after burn-in
    ess = float(effective_sample_size(post).min())
    assert ess > 1000
    flat = post.reshape(-1, 2)
    mean_se = torch.sqrt(torch.diagonal(COV) / ess)
    assert ((flat.mean(0) - MEAN).abs() <= 5 * mean_se).all()
    cov_se = torch.sqrt((torch.outer(torch.diagonal(COV), torch.diagonal(COV)) + COV**2) / ess)
    assert ((torch.cov(flat.T) - COV).abs() <= 5 * cov_se).all()
    assert 0.5 < float(diag.acceptance_rate.mean()) <= 1.0
    assert float(split_rhat(post).max()) < 1.1


@pytest.mark.parametrize("sampler", [
    lambda e: MALA(e, step_size=0.05, seed=1),
    lambda e: HamiltonianMonteCarlo(e, step_size=0.2, n_leapfrog_steps=5, seed=1),
], ids=["MALA", "HMC"])
def test_double_well_modes_get_half_the_mass_each(sampler):
    """All chains start in the right well; at equilibrium each well holds 1/2."""
    final = sampler(DoubleWellEnergy()).sample(x=torch.ones(2000, 1, dtype=T), n_steps=1000)
    frac = float((final > 0).to(T).mean())
    assert abs(frac - 0.5) <= 5 * math.sqrt(0.25 / 2000)


def test_langevin_bias_shrinks_with_the_step_size():
    """For E = x^2/2, unadjusted Langevin has stationary variance 2/(2 - h) (exact)."""
    biases = []
    for h in (0.5, 0.1):
        final = LangevinDynamics(HarmonicEnergy(), step_size=h, seed=2).sample(
            x=torch.zeros(20000, 1, dtype=T), n_steps=200)
        var = float(final.var())
        se = 2 / (2 - h) * math.sqrt(2 / 20000)
        assert abs(var - 2 / (2 - h)) <= 5 * se
        biases.append(var - 1)
    assert biases[1] < biases[0] / 3


def test_reproducible_with_a_seed_and_shapes():
    energy = DoubleWellEnergy()
    a = MALA(energy, step_size=0.1, seed=7).sample(dim=3, n_samples=5, n_steps=10)
    b = MALA(energy, step_size=0.1, seed=7).sample(dim=3, n_samples=5, n_steps=10)
    assert torch.equal(a, b) and a.shape == (5, 3)
    traj = LangevinDynamics(energy, seed=1).sample(dim=2, n_samples=4, n_steps=10, thin=5,
                                                   return_trajectory=True)
    assert traj.shape == (4, 2, 2)


def test_hand_written_energy_uses_autograd():
    class Quadratic(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * (x**2).sum(-1)

    final = HamiltonianMonteCarlo(Quadratic(), step_size=0.5, n_leapfrog_steps=3, seed=3).sample(
        x=torch.zeros(4000, 1, dtype=T), n_steps=50)
    assert abs(float(final.var()) - 1.0) < 5 * math.sqrt(2 / 4000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        MALA(HarmonicEnergy()).sample(n_steps=1)
    with pytest.raises(ValueError, match="step_size"):
        MALA(HarmonicEnergy(), step_size=0.0)
    with pytest.raises(TypeError, match="BaseEnergyFunction"):
        MALA(lambda x: x)


def test_diagnostics_on_known_chains():
    """iid draws: ESS close to the number of draws and R-hat close to 1."""
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(8, 500, 2, generator=g, dtype=T)
    ess = effective_sample_size(iid)
    assert ((ess > 0.8 * 4000) & (ess < 1.25 * 4000)).all()
    assert (split_rhat(iid) < 1.01).all()
    shifted = iid.clone()
    shifted[0] += 3.0                                # one chain elsewhere: not converged
    assert (split_rhat(shifted) > 1.1).all()


def test_command_line_sample_writes_a_picture(tmp_path, capsys):
    from torchebm.symbolic.cli import main
    out = tmp_path / "s.png"
    assert main(["sample", "sum((x**2 - 1)**2)", "--dim", "2", "--chains", "200", "--steps",
                 "100", "--sampler", "hmc", "--step-size", "0.1", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "acceptance rate" in text and "R-hat" in text


def test_plotting_functions_return_axes():
    from torchebm import plotting
    energy = DoubleWellEnergy()
    ax = plotting.plot_landscape(energy, samples=torch.randn(50, 2), density=True)
    assert ax.get_xlabel() == "x[0]"
    traj = torch.randn(3, 20, 2)
    assert plotting.plot_trace(traj, chains=(0, 1)).get_xlabel() == "kept step"
    gx, gy, e = plotting.energy_grid(energy, resolution=11)
    assert e.shape == (11, 11) and float(e[5, 5]) == pytest.approx(2 * 2 * 1.0)  # E(0,0) = 2*(1+1)


def test_plot_landscape_draws_2d_energies_only():
    import matplotlib.pyplot as plt
    from torchebm import plotting
    from torchebm.core import GaussianEnergy
    from torchebm.errors import ShapeError
    from torchebm.symbolic import from_expression
    for energy in (from_expression("x[0]**2 + x[1]**2 + x[2]**2"),
                   GaussianEnergy(mean=torch.zeros(3), cov=torch.eye(3))):
        with pytest.raises(ShapeError, match="2-D energies only"):
            plotting.plot_landscape(energy, resolution=5)
    with pytest.raises(ShapeError, match=r"samples must be 2-D points \[m, 2\].*got shape "
                                         r"\(10, 3\)"):
        plotting.plot_landscape(from_expression("sum(x**2)"), samples=torch.randn(10, 3))
    plt.close("all")


def test_energy_of_the_wrong_shape_is_a_clear_error():
    class KeepsDim(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * (x**2).sum(-1, keepdim=True)

    with pytest.raises(ValueError, match="squeeze"):
        MALA(KeepsDim(), seed=0).sample(dim=2, n_samples=10, n_steps=5)


def test_chains_follow_a_hand_written_energy_dtype_and_report_stuck_chains():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    class Net(BaseEnergyFunction):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).squeeze(-1) + 0.5 * (x**2).sum(-1)

    final = MALA(Net(), step_size=0.1, seed=0).sample(dim=2, n_samples=8, n_steps=5)
    assert final.dtype == torch.float64
    start = torch.tensor([[1.0, 1.0], [40.0, 1.0]], dtype=T)   # far out the steep walls
    _, diag = MALA(DoubleWellEnergy(), step_size=0.02, seed=0).sample(
        x=start, n_steps=20, return_diagnostics=True)
    assert float(diag.chain_acceptance[1]) == 0.0 and "never accepted" in diag.summary()
