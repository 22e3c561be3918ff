"""The counter-based Philox stream of ``torchebm.samplers.philox`` and samplers using it.

Philox4x32-10 is checked against the known-answer vectors published with
Random123 (Salmon et al. 2011) and against a pure-Python transcription written
here (Python ints, ``math``) of the construction the module documents. The
normals and uniforms are checked for their moments, the Kolmogorov-Smirnov
distance to their law and correlations across draws, elements and keys.

Note on randomized tests: every stream is keyed from a seeded generator, so each
test is deterministic; tolerances are 5 standard errors (or a KS critical value
at level 1e-4), so a correct stream fails with negligible probability.
"""

import math

import pytest
import torch

from torchebm.core import DoubleWellEnergy, GaussianEnergy
from torchebm.samplers import MALA, HamiltonianMonteCarlo, LangevinDynamics, effective_sample_size
from torchebm.samplers.philox import (CounterRNG, counter_normal, counter_uniform,
                                      philox4x32)

T = torch.float64

# Random123's kat_vectors: philox4x32 10 <counter x4> <key x2> -> <output x4>
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def py_philox(c, k):
    """Philox4x32-10 on Python ints, from the paper's round function."""
    c, k = list(c), list(k)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1],
             p0 & 0xFFFFFFFF]
        k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
    return c


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_matches_random123_known_answers(counter, key, want):
    args = [torch.tensor(v, dtype=torch.int64) for v in (*counter, *key)]
    assert [int(w) for w in philox4x32(*args)] == list(want)
    assert py_philox(counter, key) == list(want)


def test_philox_vectorised_over_counters_equals_one_at_a_time():
    j = torch.arange(7, dtype=torch.int64)
    key = [torch.tensor(v, dtype=torch.int64) for v in (0x12345678, 0x9ABCDEF0)]
    words = philox4x32(j, torch.tensor(5), torch.tensor(0), torch.tensor(0), *key)
    for i in range(7):
        assert [int(w[i]) for w in words] == py_philox((i, 5, 0, 0), (0x12345678, 0x9ABCDEF0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normals_follow_the_documented_construction(dtype):
    """Element e of draw d (count numbers, B = ceil(count / per) blocks): number
    k = e // B of block j = e % B; Box-Muller on the block's uniforms in pairs."""
    key = torch.tensor([0xDEADBEEF, 0x01234567], dtype=torch.int64)
    draw = 2**32 + 3                       # a draw number above 32 bits: both counter words
    z = counter_normal(key, torch.tensor(draw), (3, 5), dtype, "cpu").reshape(-1)
    u = counter_uniform(key, torch.tensor(draw), (15,), dtype, "cpu")
    per = 2 if dtype == torch.float64 else 4
    blocks = -(-15 // per)                 # 4 in float32 (16 numbers), 8 in float64
    per_block_u, per_block_z = [], []
    for j in range(blocks):
        w = py_philox((j, draw & 0xFFFFFFFF, draw >> 32, 0), (0xDEADBEEF, 0x01234567))
        if dtype == torch.float64:
            us = [(w[0] * 2**32 + w[1] + 0.5) * 2.0**-64, (w[2] * 2**32 + w[3] + 0.5) * 2.0**-64]
        else:
            us = [(w[i] + 0.5) * 2.0**-32 for i in range(4)]
        zs = []
        for a, b in zip(us[0::2], us[1::2]):
            r = math.sqrt(-2 * math.log(a))
            zs += [r * math.cos(2 * math.pi * b), r * math.sin(2 * math.pi * b)]
        per_block_u.append(us)
        per_block_z.append(zs)
    uniforms = [per_block_u[e % blocks][e // blocks] for e in range(15)]
    want_z = [per_block_z[e % blocks][e // blocks] for e in range(15)]
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(u.double(), torch.tensor(uniforms, dtype=T), rtol=tol,
                               atol=tol)
    torch.testing.assert_close(z.double(), torch.tensor(want_z, dtype=T), rtol=tol,
                               atol=tol)


def _normal_cdf(t):
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def _ks(sample, cdf):
    s, _ = torch.sort(sample.double())
    n = s.numel()
    f = cdf(s)
    i = torch.arange(1, n + 1, dtype=T)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normal_moments_and_law(dtype):
    rng = CounterRNG.from_generator(torch.Generator().manual_seed(3), "cpu")
    n = 2**20
    z = rng.normal((n,), dtype, "cpu").double()
    assert z.dtype == T and torch.isfinite(z).all()
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15) * se                # skewness
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96) * se             # kurtosis
    assert _ks(z[:2**17], _normal_cdf) < 2.23 / math.sqrt(2**17)              # level 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uniform_moments_and_law(dtype):
    rng = CounterRNG.from_generator(torch.Generator().manual_seed(4), "cpu")
    n = 2**20
    u = rng.uniform((n,), dtype, "cpu").double()
    assert float(u.min()) > 0 and float(u.max()) <= 1
    se = 1 / math.sqrt(n)
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12) * se
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180) * se
    assert _ks(u[:2**17], lambda t: t) < 2.23 / math.sqrt(2**17)


def test_draws_elements_and_keys_are_uncorrelated():
    """Correlations between consecutive draws, neighbouring elements (within a block
    and across blocks) and two keys: all within 5 standard errors of 0."""
    n = 2**18
    a = CounterRNG.from_generator(torch.Generator().manual_seed(5), "cpu")
    b = CounterRNG.from_generator(torch.Generator().manual_seed(6), "cpu")
    z0, z1 = a.normal((n,), T, "cpu"), a.normal((n,), T, "cpu")
    w0 = b.normal((n,), T, "cpu")
    limit = 5 / math.sqrt(n)

    def corr(p, q):
        return float(torch.corrcoef(torch.stack([p, q]))[0, 1])

    assert abs(corr(z0, z1)) < limit                       # step d and step d + 1
    assert abs(corr(z0, w0)) < limit                       # two keys
    for lag in (1, 2, 3, 4, 5):                            # neighbouring blocks
        assert abs(corr(z0[:-lag], z0[lag:])) < limit
    # float64: 2 numbers per block, block j gives elements j and j + n/2 (one Box-Muller
    # pair); its two normals share a radius, yet are uncorrelated, squares included
    half = n // 2
    assert abs(corr(z0[:half], z0[half:])) < math.sqrt(2) * limit
    assert abs(corr(z0[:half] ** 2, z0[half:] ** 2)) < math.sqrt(2) * limit


def test_stream_is_reproducible_from_a_generator_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = CounterRNG.from_generator(torch.Generator().manual_seed(7), "cpu")
    b = CounterRNG.from_generator(torch.Generator().manual_seed(7), "cpu")
    c = CounterRNG.from_generator(torch.Generator().manual_seed(8), "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    za, zb, zc = (r.normal((4, 3), T, "cpu") for r in (a, b, c))
    assert torch.equal(za, zb) and not torch.allclose(za, zc)
    assert int(a.index) == 1
    assert not torch.allclose(a.normal((4, 3), T, "cpu"), za)     # the next draw differs


def test_eager_sampler_with_philox_is_reproducible_and_draws_its_key_from_the_generator():
    x0 = torch.zeros(8, 2, dtype=T)
    run = (lambda seed: MALA(DoubleWellEnergy(), step_size=0.1).sample(
        x=x0, n_steps=10, rng="philox", generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))
    torch_run = MALA(DoubleWellEnergy(), step_size=0.1).sample(
        x=x0, n_steps=10, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(run(1), torch_run)                   # another stream


def test_rng_must_be_torch_or_philox():
    with pytest.raises(ValueError, match="rng must be 'torch'.*'philox'"):
        LangevinDynamics(DoubleWellEnergy(), seed=0).sample(dim=2, n_steps=2, rng="numpy")


def test_mala_with_philox_recovers_a_gaussian():
    mean = torch.tensor([1.0, -2.0], dtype=T)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=T)
    traj = MALA(GaussianEnergy(mean, cov), step_size=0.4, seed=0).sample(
        x=torch.zeros(1000, 2, dtype=T), n_steps=300, return_trajectory=True, rng="philox")
    post = traj[:, 100:]
    ess = float(effective_sample_size(post).min())
    assert ess > 1000
    flat = post.reshape(-1, 2)
    assert ((flat.mean(0) - mean).abs() <= 5 * torch.sqrt(torch.diagonal(cov) / ess)).all()
    cov_se = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / ess)
    assert ((torch.cov(flat.T) - cov).abs() <= 5 * cov_se).all()


@pytest.mark.parametrize("sampler", ["langevin", "hmc"])
def test_philox_and_torch_streams_give_the_same_law(sampler):
    """Final states of 4000 chains after 15 steps from one start: Philox and torch.randn
    runs pass a two-sample Kolmogorov-Smirnov test per coordinate (level 1e-4 each)."""
    make = {"langevin": lambda: LangevinDynamics(DoubleWellEnergy(), step_size=0.05, seed=9),
            "hmc": lambda: HamiltonianMonteCarlo(DoubleWellEnergy(), step_size=0.1,
                                                 n_leapfrog_steps=3, seed=9)}[sampler]
    x0 = torch.full((4000, 2), 0.3, dtype=T)
    a = make().sample(x=x0, n_steps=15, rng="philox")
    b = make().sample(x=x0, n_steps=15, rng="torch")
    n = x0.shape[0]
    for k in range(2):
        both = torch.cat([a[:, k], b[:, k]])
        order = torch.argsort(both)
        steps = torch.where(order < n, 1.0 / n, -1.0 / n)
        distance = float(torch.cumsum(steps, 0).abs().max())
        assert distance < math.sqrt(-0.5 * math.log(1e-4 / 2)) * math.sqrt(2 / n)
    assert not torch.allclose(a, b)
