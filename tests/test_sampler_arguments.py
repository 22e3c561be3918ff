"""Sampler arguments that contradict each other are refused, not silently ignored."""

import pytest
import torch

from torchebm.core import DoubleWellEnergy
from torchebm.samplers import LangevinDynamics


@pytest.fixture
def sampler():
    return LangevinDynamics(DoubleWellEnergy(), step_size=0.01)


@pytest.mark.parametrize("kwargs, what", [
    (dict(dim=3), "dim = 3 contradicts x"),
    (dict(dim=(2, 1)), "dim = (2, 1) contradicts x"),
    (dict(n_samples=5), "n_samples = 5 contradicts x"),
])
def test_contradicting_counts_are_refused(sampler, kwargs, what):
    with pytest.raises(ValueError, match=r"contradicts x") as info:
        sampler.sample(torch.zeros(4, 2), n_steps=1, **kwargs)
    assert what in str(info.value)


def test_agreeing_counts_are_accepted(sampler):
    out = sampler.sample(torch.zeros(4, 2), dim=2, n_samples=4, n_steps=2)
    assert out.shape == (4, 2)
    one = sampler.sample(torch.zeros(2), dim=2, n_steps=1)     # a 1-D x is one chain
    assert one.shape == (1, 2)


def test_one_element_tensor_step_size_is_a_number():
    s = LangevinDynamics(DoubleWellEnergy(), step_size=torch.tensor(0.25))
    assert s.get_scheduled_value("step_size") == 0.25


def test_per_chain_tensor_step_size_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"one positive number.*shape \[2\].*target_accept"):
        LangevinDynamics(DoubleWellEnergy(), step_size=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), torch.tensor(-0.5)])
def test_non_positive_step_size_is_refused(bad):
    with pytest.raises(ValueError, match="positive and finite"):
        LangevinDynamics(DoubleWellEnergy(), step_size=bad)


def test_contrastive_divergence_refuses_a_sampler_on_another_energy():
    from torchebm.losses import ContrastiveDivergence
    trained, other = DoubleWellEnergy(), DoubleWellEnergy()
    with pytest.raises(ValueError, match="not the energy being trained"):
        ContrastiveDivergence(trained, LangevinDynamics(other, step_size=0.01))
    loss = ContrastiveDivergence(trained, LangevinDynamics(trained, step_size=0.01), k_steps=1)
    value, negatives = loss(torch.zeros(3, 2))
    assert negatives.shape == (3, 2) and torch.isfinite(value)


@pytest.mark.parametrize("chains, limit, rule", [
    (2, 200, "100 per chain"), (50, 400, "with 4 or more chains")])
def test_low_ess_warning_states_the_rule(chains, limit, rule):
    from torchebm.samplers import Diagnostics
    ess = torch.tensor([150.0, 5000.0])
    text = Diagnostics({}, mean_energy=torch.zeros(3), ess=ess, rhat=torch.ones(2),
                       n_chains=chains).summary()
    assert f"1 of 2 dimensions have an effective sample size below {limit}, the minimum" in text
    assert rule in text and "(min 150)" in text


@pytest.mark.parametrize("sampler_cls", ["LangevinDynamics", "MALA", "HamiltonianMonteCarlo"])
def test_empty_batch_and_bad_dims_are_refused_clearly(sampler_cls):
    import torchebm.samplers as samplers
    s = getattr(samplers, sampler_cls)(DoubleWellEnergy(), step_size=0.01)
    with pytest.raises(ValueError, match=r"x holds no chains \(shape \[0, 3\]\)"):
        s.sample(torch.zeros(0, 3), n_steps=1)
    for dim in (3.0, True, 0, (2, 0), ()):
        with pytest.raises(ValueError, match="dim must be a positive int"):
            s.sample(dim=dim, n_steps=1)


def test_seeds_numpy_ints_and_range():
    import numpy as np
    a = LangevinDynamics(DoubleWellEnergy(), step_size=0.01, seed=np.int64(3))
    b = LangevinDynamics(DoubleWellEnergy(), step_size=0.01, seed=3)
    torch.testing.assert_close(a.sample(dim=2, n_steps=3), b.sample(dim=2, n_steps=3))
    for bad in (2**70, -1):
        with pytest.raises(ValueError, match=r"seed must be in 0 \.\. 2\*\*63 - 1"):
            LangevinDynamics(DoubleWellEnergy(), step_size=0.01, seed=bad)


def test_hostile_starts_and_batches_get_clear_errors():
    """A 0-d start, a chunked energy under compile=True, and empty or integer batches given
    to the losses raise torchebm's errors naming the fix (an attack pass found raw
    IndexError, reshape and 'normal_kernel_cpu' errors)."""
    from torchebm.core import ChunkedEnergy, HarmonicEnergy
    from torchebm.losses import (ContrastiveDivergence, DenoisingScoreMatching,
                                 PersistentContrastiveDivergence, ScoreMatching,
                                 SlicedScoreMatching)
    from torchebm.samplers import HamiltonianMonteCarlo, LangevinDynamics, MALA
    from torchebm.symbolic import from_expression
    E = HarmonicEnergy()
    for cls in (LangevinDynamics, MALA, HamiltonianMonteCarlo):
        with pytest.raises(ValueError, match="0-d tensor"):
            cls(E, step_size=0.1).sample(x=torch.tensor(0.0), n_steps=2)
    with pytest.raises(TypeError, match="complex"):
        MALA(E, step_size=0.1).sample(x=torch.zeros(4, 2, dtype=torch.complex64), n_steps=1)
    with pytest.raises(ValueError, match="runs the batch in chunks"):
        MALA(ChunkedEnergy(E, 64), step_size=0.1).sample(x=torch.zeros(4, 2), n_steps=1,
                                                          compile=True)
    model = from_expression("a*sum(x**2)", a=1.0, trainable=True)
    sampler = LangevinDynamics(model, step_size=0.01)
    losses = [ScoreMatching(model), SlicedScoreMatching(model), DenoisingScoreMatching(model),
              ContrastiveDivergence(model, sampler, k_steps=1),
              PersistentContrastiveDivergence(model, sampler, k_steps=1)]
    for loss in losses:
        with pytest.raises(ValueError, match="holds no samples"):
            loss(torch.zeros(0, 2))
        with pytest.raises(TypeError, match="floating-point"):
            loss(torch.ones(3, 2, dtype=torch.int64))


def test_diagnostics_of_no_chain_or_no_dimension_are_refused():
    from torchebm.samplers import effective_sample_size, split_rhat
    for shape in ((0, 5, 2), (3, 5, 0)):
        for fn in (effective_sample_size, split_rhat):
            with pytest.raises(ValueError, match="no chain or no dimension"):
                fn(torch.randn(shape))
