"""Fused sampler steps (``sample(..., compile=True)``) against the eager samplers.

With ``rng="philox"`` (the default of ``compile=True``) the fused step computes its
random numbers in the graph from the counter-based stream, the same pure function
that eager mode runs with ``rng="philox"``; with ``rng="torch"`` it takes them from
torch's generator, drawn outside the graph in eager mode's order. Either way the
fused and eager runs must give the same chains up to floating-point rounding: here
in float64, on few chains and steps, where rounding cannot flip an accept decision.
(That Philox and torch streams give the same law is tested in test_philox.py.) Eager mode itself is checked
against hand-written update rules and known laws in test_sampler_contract.py
and test_samplers.py. torch.compile takes seconds per graph: these tests are
marked slow and kept few.
"""

import pytest
import torch

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, HarmonicEnergy
from torchebm.samplers import MALA, HamiltonianMonteCarlo, LangevinDynamics, LinearScheduler

T = torch.float64


def _x0():
    return torch.randn(6, 3, dtype=T, generator=torch.Generator().manual_seed(5))


CASES = {
    # a step-size schedule (a new step size every step, passed into the graph) and 19 steps:
    # two compiled calls of 8 steps, then 3 eager steps
    "langevin": (lambda: LangevinDynamics(DoubleWellEnergy(), seed=11,
                                          step_size=LinearScheduler(0.02, 0.005, 19),
                                          noise_scale=0.8), dict(n_steps=19)),
    # kept states every 2 steps: compiled calls of 2 steps, the trajectory written per call
    "mala": (lambda: MALA(DoubleWellEnergy(), step_size=0.05, seed=12),
             dict(n_steps=12, thin=2, return_trajectory=True)),
    # adapted step size (a [1] tensor for every step) after an eager warm-up, diagonal mass
    "hmc": (lambda: HamiltonianMonteCarlo(DoubleWellEnergy(), step_size=0.1, n_leapfrog_steps=3,
                                          mass=torch.tensor([1.0, 2.0, 0.5]), seed=13,
                                          target_accept=0.7, n_warmup=20),
            dict(n_steps=6, return_trajectory=True)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case,rng", [("langevin", "philox"), ("mala", "philox"),
                                      ("hmc", "philox"), ("mala", "torch")])
def test_fused_chains_equal_eager_chains(case, rng):
    make, kwargs = CASES[case]
    eager, d_eager = make().sample(x=_x0(), return_diagnostics=True, rng=rng, **kwargs)
    fused, d_fused = make().sample(x=_x0(), return_diagnostics=True, compile=True,
                                   rng=None if rng == "philox" else rng, **kwargs)
    torch.testing.assert_close(fused, eager, rtol=1e-10, atol=1e-10)
    final = eager if eager.dim() == 2 else eager[:, -1]
    assert not torch.allclose(final, _x0())                       # the chains moved
    torch.testing.assert_close(d_fused.mean_energy, d_eager.mean_energy, rtol=1e-10, atol=1e-10)
    for key in d_eager:
        torch.testing.assert_close(d_fused[key], d_eager[key], rtol=1e-10, atol=1e-10)
    if d_eager.acceptance_rate is not None:
        assert torch.equal(d_fused.acceptance_rate, d_eager.acceptance_rate)
        assert torch.equal(d_fused.chain_acceptance, d_eager.chain_acceptance)
        assert 0 < float(d_eager.acceptance_rate.mean()) < 1      # both branches ran


@pytest.mark.slow
def test_compiled_step_is_reused_and_draws_follow_the_generator():
    """A second call with the same shapes compiles nothing; the same seed gives the same
    chains, another seed other chains; the global RNG is left alone. The steps run as an
    Inductor graph called directly (no Dynamo frame per call). (Noise from the generator,
    ``rng="torch"``: the graph is quick to build; the Philox stream's draws are checked
    against eager mode's in test_fused_chains_equal_eager_chains.)"""
    from torch._dynamo.utils import counters

    from torchebm.samplers import mcmc
    sampler = LangevinDynamics(HarmonicEnergy(), step_size=0.1)
    x = torch.zeros(4, 2, dtype=T)
    direct = set(mcmc._DIRECT)
    a = sampler.sample(x=x, n_steps=4, thin=2, return_trajectory=True,
                       compile=True, rng="torch", generator=torch.Generator().manual_seed(1))
    new = [mcmc._DIRECT[k] for k in set(mcmc._DIRECT) - direct]
    assert len(new) == 1 and new[0] is not False                  # compiled, called directly
    graphs, direct = counters["stats"]["unique_graphs"], set(mcmc._DIRECT)
    state = torch.get_rng_state()
    b = sampler.sample(x=x, n_steps=4, thin=2, return_trajectory=True,
                       compile=True, rng="torch", generator=torch.Generator().manual_seed(1))
    c = sampler.sample(x=x, n_steps=4, thin=2, return_trajectory=True,
                       compile=True, rng="torch", generator=torch.Generator().manual_seed(2))
    assert counters["stats"]["unique_graphs"] == graphs and set(mcmc._DIRECT) == direct
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_compile_refuses_hand_written_energies():
    class Quadratic(BaseEnergyFunction):
        def forward(self, x):
            return 0.5 * (x**2).sum(-1)

    with pytest.raises(ValueError, match="hand-written.*compile=False"):
        MALA(Quadratic(), seed=0).sample(x=torch.zeros(2, 2), n_steps=3, compile=True)


def test_the_direct_graph_signature_holds_the_samplers_plain_settings():
    """A traced step bakes in plain attributes (HMC's leapfrog count, Langevin's clamp):
    they are part of the compiled graph's signature, so changing one compiles anew."""
    from torchebm.samplers.mcmc import _plain_config
    hmc = HamiltonianMonteCarlo(DoubleWellEnergy(), step_size=0.1, n_leapfrog_steps=3)
    before = _plain_config(hmc)
    assert ("n_leapfrog_steps", 3) in before
    hmc.n_leapfrog_steps = 4
    assert _plain_config(hmc) != before
    langevin = LangevinDynamics(DoubleWellEnergy(), clamp=(-2, 2))
    assert ("clamp", (-2.0, 2.0)) in _plain_config(langevin)
    # the seed is read outside the step: samplers that differ only there share a graph
    assert _plain_config(LangevinDynamics(DoubleWellEnergy(), clamp=(-2, 2), seed=5)) == \
        _plain_config(langevin)
