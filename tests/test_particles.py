"""Particle systems: ``particles=d``, local definitions with index arguments, and the
built-ins MultiDoubleWellEnergy (DW-4), LennardJonesEnergy (LJ-13, LJ-55), ManyWellEnergy.

Every value is compared with a reference written here in plain torch (pair
differences by broadcasting, autograd gradients, ``torch.func.hessian``
diagonals), in float64, to 1e-12 relative.
"""

import math
import pickle
import warnings

import pytest
import torch

from torchebm.core import LennardJonesEnergy, ManyWellEnergy, MultiDoubleWellEnergy
from torchebm.errors import EnergySyntaxError, ParameterError, ShapeError
from torchebm.symbolic import from_expression

F64 = torch.float64


# -- independent references --------------------------------------------------------------
def pair_distances(x, n_particles, dim, skip=0):
    """Distances of the pairs i < j, [..., N*d] -> [..., N(N-1)/2], by broadcasting;
    ``skip`` leaves out the first pairs (in the order (0, 1), (0, 2), ...)."""
    p = x.reshape(*x.shape[:-1], n_particles, dim)
    diff = p[..., :, None, :] - p[..., None, :, :]                  # [..., N, N, d]
    i, j = torch.triu_indices(n_particles, n_particles, 1)
    return diff[..., i[skip:], j[skip:], :].pow(2).sum(-1).sqrt()


def dw_ref(x, n_particles=4, dim=2, a=0.9, b=-4.0, c=0.0, offset=4.0):
    d = pair_distances(x, n_particles, dim)
    return (a * (d - offset)**4 + b * (d - offset)**2 + c).sum(-1)


def lj_ref(x, n_particles=13, dim=3, eps=1.0, rm=1.0, oscillator_scale=1.0):
    d = pair_distances(x, n_particles, dim)
    lj = eps * ((rm / d)**12 - 2 * (rm / d)**6)
    p = x.reshape(*x.shape[:-1], n_particles, dim)
    centred = p - p.mean(-2, keepdim=True)
    return lj.sum(-1) + oscillator_scale / 2 * centred.pow(2).sum((-2, -1))


def many_well_ref(x):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return (x1**4 - 6 * x1**2 - 0.5 * x1 + 0.5 * x2**2).sum(-1)


def ref_gradient(ref, x):
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(ref(x).sum(), x)[0]


def ref_hessian_diagonal(ref, x):
    return torch.stack([torch.func.hessian(ref)(row).diagonal() for row in x])


def close(got, want, rtol=1e-12):
    """Relative error, elementwise against the larger of |want| and 1e-3 of the row's scale."""
    scale = torch.maximum(want.abs(), 1e-3 * want.abs().amax(-1, keepdim=True).clamp_min(1e-300))
    err = ((got - want).abs() / scale).max().item()
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


def jittered_grid(batch, n_particles, dim, spacing, seed=0):
    """Particles near the points of a grid `spacing` apart (no pair closer than spacing/2)."""
    gen = torch.Generator().manual_seed(seed)
    side = math.ceil(n_particles ** (1 / dim))
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * dim, indexing="ij"), -1)
    grid = grid.reshape(-1, dim)[:n_particles].to(F64) * spacing
    x = grid + 0.15 * spacing * torch.randn(batch, n_particles, dim, generator=gen, dtype=F64)
    return x.reshape(batch, -1)


def check_against(energy, ref, x, rtol=1e-12):
    close(energy(x), ref(x), rtol)
    close(energy.gradient(x), ref_gradient(ref, x), rtol)
    e, g = energy.energy_and_gradient(x)
    close(e, ref(x), rtol)
    close(g, ref_gradient(ref, x), rtol)
    hd = ref_hessian_diagonal(ref, x)
    close(energy.hessian_diagonal(x), hd, rtol)
    close(energy.laplacian(x), hd.sum(-1), rtol)


# -- the built-ins -----------------------------------------------------------------------
def test_multi_double_well_matches_reference_at_random_configurations():
    E = MultiDoubleWellEnergy()
    x = torch.randn(6, 8, dtype=F64, generator=torch.Generator().manual_seed(1)) * 3
    check_against(E, dw_ref, x)
    check_against(E, dw_ref, jittered_grid(4, 4, 2, 4.0))


def test_multi_double_well_other_constants_and_sizes():
    E = MultiDoubleWellEnergy(n_particles=5, a=1.3, b=-2.0, c=0.25, offset=3.0)
    x = torch.randn(4, 10, dtype=F64, generator=torch.Generator().manual_seed(2)) * 2
    check_against(E, lambda v: dw_ref(v, 5, 2, 1.3, -2.0, 0.25, 3.0), x)


def test_multi_double_well_pair_minimum_by_hand():
    # two particles at distance d: a (d - 4)^4 + b (d - 4)^2 is smallest at d = 4 +- sqrt(-b/(2a))
    E = MultiDoubleWellEnergy(n_particles=2)
    d_star = 4 + math.sqrt(4.0 / (2 * 0.9))
    x = torch.tensor([[0.0, 0.0, d_star, 0.0]], dtype=F64)
    assert E(x).item() == pytest.approx(-4.0**2 / (4 * 0.9), rel=1e-13)    # -b^2 / (4a)
    assert E.gradient(x).abs().max().item() < 1e-12


def test_lennard_jones_13_matches_reference():
    E = LennardJonesEnergy()
    check_against(E, lj_ref, jittered_grid(4, 13, 3, 1.1))
    x = torch.randn(3, 39, dtype=F64, generator=torch.Generator().manual_seed(3)) * 1.5
    check_against(E, lj_ref, x)


def test_lennard_jones_55_and_parameters_match_reference():
    E = LennardJonesEnergy(n_particles=55, eps=0.7, rm=1.2, oscillator_scale=2.5)
    ref = lambda v: lj_ref(v, 55, 3, 0.7, 1.2, 2.5)
    x = jittered_grid(2, 55, 3, 1.2, seed=4)
    close(E(x), ref(x))
    close(E.gradient(x), ref_gradient(ref, x))
    hd = ref_hessian_diagonal(ref, x)
    close(E.laplacian(x), hd.sum(-1))


def test_lennard_jones_pair_minimum_by_hand():
    # two particles at distance rm: the pair term is -eps; the oscillator adds
    # oscillator_scale/2 * 2 * (rm/2)^2
    E = LennardJonesEnergy(n_particles=2, eps=1.5, rm=1.3, oscillator_scale=0.5)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.3, 0.0, 0.0]], dtype=F64)
    assert E(x).item() == pytest.approx(-1.5 + 0.25 * 2 * 0.65**2, rel=1e-13)


def test_many_well_matches_reference_and_constants():
    E = ManyWellEnergy()
    x = torch.randn(5, 32, dtype=F64, generator=torch.Generator().manual_seed(5)) * 2
    check_against(E, many_well_ref, x)
    # one copy by hand: x1 = 1, x2 = 2 -> 1 - 6 - 0.5 + 2
    one = ManyWellEnergy(dim=2)
    assert one(torch.tensor([[1.0, 2.0]], dtype=F64)).item() == pytest.approx(-3.5, rel=1e-15)


@pytest.mark.parametrize("make, ref, n_particles, dim", [
    (MultiDoubleWellEnergy, dw_ref, 4, 2),
    (LennardJonesEnergy, lj_ref, 13, 3),
])
def test_near_collision_is_finite_and_matches(make, ref, n_particles, dim):
    E = make()
    x = jittered_grid(3, n_particles, dim, 1.5 if dim == 3 else 4.0, seed=6)
    p = x.view(3, n_particles, dim)
    direction = torch.randn(3, dim, dtype=F64, generator=torch.Generator().manual_seed(7))
    p[:, 1] = p[:, 0] + 1e-3 * direction / direction.norm(dim=-1, keepdim=True)
    assert torch.allclose(pair_distances(x, n_particles, dim)[:, 0],
                          torch.full((3,), 1e-3, dtype=F64), rtol=1e-12)
    for value in (E(x), E.gradient(x), E.laplacian(x), E.hessian_diagonal(x)):
        assert torch.isfinite(value).all()
    check_against(E, ref, x)


def test_lennard_jones_collision_convention():
    """At d_ij = 0: energy +inf; the colliding pair adds 0 to the gradient and the
    Hessian diagonal (documented in LennardJonesEnergy), never NaN."""
    E = LennardJonesEnergy(n_particles=4)
    x = jittered_grid(2, 4, 3, 1.3, seed=8)
    x[0, 3:6] = x[0, 0:3]                    # particles 0 and 1 of sample 0 collide
    energy = E(x)
    assert energy[0].item() == math.inf and torch.isfinite(energy[1])
    grad, hdiag = E.gradient(x), E.hessian_diagonal(x)
    assert not grad.isnan().any() and not hdiag.isnan().any()

    def without_pair_01(v):                   # the reference over every pair but (0, 1)
        d = pair_distances(v, 4, 3, skip=1)
        p = v.reshape(*v.shape[:-1], 4, 3)
        return (d**-12 - 2 * d**-6).sum(-1) + 0.5 * (p - p.mean(-2, keepdim=True)).pow(2).sum((-2, -1))
    close(grad[:1], ref_gradient(without_pair_01, x[:1]))
    close(hdiag[:1], ref_hessian_diagonal(without_pair_01, x[:1]))
    close(E.laplacian(x)[:1], ref_hessian_diagonal(without_pair_01, x[:1]).sum(-1))
    close(grad[1:], ref_gradient(lambda v: lj_ref(v, 4), x[1:]))
    e2, g2 = E.energy_and_gradient(x)
    assert e2[0].item() == math.inf and torch.equal(g2, grad)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(11))
    hvp = (torch.func.hessian(without_pair_01)(x[0]) @ v[0])[None]
    close(E.hessian_vector_product(x, v)[:1], hvp)


def test_multi_double_well_collision_gradient_convention():
    # finite energy at d = 0; the distance's derivative is taken as 0 there
    E = MultiDoubleWellEnergy(n_particles=3)
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 3.0, 1.0]], dtype=F64)
    assert E(x).item() == pytest.approx(dw_ref(x, 3).item(), rel=1e-14)

    def other_pairs(v):
        d = pair_distances(v, 3, 2, skip=1)
        return (0.9 * (d - 4)**4 - 4 * (d - 4)**2).sum(-1)
    close(E.gradient(x), ref_gradient(other_pairs, x))
    assert torch.isfinite(E.laplacian(x)).all()


def test_unguarded_pair_energy_at_collision():
    """Without the where(r > 0, ..., inf) guard the energy is still +inf at a collision;
    the gradient there is inf * 0 (docs/language.md says to guard)."""
    E = from_expression("sum(1/norm(x[i] - x[j]) for i in range(N) for j in range(i + 1, N))",
                        particles=2)
    G = from_expression("sum(where(norm(x[i] - x[j]) > 0, 1/norm(x[i] - x[j]), inf) "
                        "for i in range(N) for j in range(i + 1, N))", particles=2)
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=F64)
    assert E(x).item() == math.inf and G(x).item() == math.inf
    g = G.gradient(x)
    # pairs (0, 2) and (1, 2) at distance 1: d/dx of 1/|x_a - x_2| = -(x_a - x_2)/|.|^3
    want = torch.tensor([[1.0, 0.0, 1.0, 0.0, -2.0, 0.0]], dtype=F64)
    assert torch.equal(g, want)


# -- from_expression(particles=) ------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs, ref, n", [
    (MultiDoubleWellEnergy, {"a": 0.9, "b": -4.0, "c": 0.0, "offset": 4.0}, dw_ref, 8),
    (LennardJonesEnergy, {"eps": 1.0, "rm": 1.0, "oscillator_scale": 1.0}, lj_ref, 39),
    (ManyWellEnergy, {}, many_well_ref, 32),
])
def test_from_expression_reproduces_builtins(cls, kwargs, ref, n):
    E = from_expression(cls.formula, particles=cls.particles, **kwargs)
    x = (jittered_grid(3, n // cls.particles, cls.particles, 1.2 if cls.particles == 3 else 4.0)
         if cls is not ManyWellEnergy else torch.randn(3, n, dtype=F64))
    builtin = cls()
    close(E(x), builtin(x))
    close(E.gradient(x), builtin.gradient(x))
    close(E.laplacian(x), builtin.laplacian(x))
    close(E(x), ref(x))


def test_particle_language():
    x = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(9))
    P = lambda v: v.reshape(*v.shape[:-1], 3, 2)
    cases = {
        "sum(dot(x[i], x[j])**2 for i in range(N) for j in range(i + 1, N))":
            lambda v: sum((P(v)[..., i, :] * P(v)[..., j, :]).sum(-1)**2
                          for i in range(3) for j in range(i + 1, 3)),
        "sum(sum((x[i] - mean_particle)**2) for i in range(N))":
            lambda v: (P(v) - P(v).mean(-2, keepdim=True)).pow(2).sum((-2, -1)),
        "x[0, 1] + x[-1][0]**2 + N": lambda v: P(v)[..., 0, 1] + P(v)[..., -1, 0]**2 + 3,
        "sum(x**2) + norm(x[1])": lambda v: v.pow(2).sum(-1) + P(v)[..., 1, :].norm(dim=-1),
        "mean(x[2]) + prod(x[0]) + logsumexp(x[1])":
            lambda v: (P(v)[..., 2, :].mean(-1) + P(v)[..., 0, :].prod(-1)
                       + torch.logsumexp(P(v)[..., 1, :], -1)),
    }
    for formula, ref in cases.items():
        E = from_expression(formula, particles=2)
        close(E(x), ref(x))
        close(E.gradient(x), ref_gradient(ref, x))
        close(E.laplacian(x), ref_hessian_diagonal(ref, x).sum(-1))


def test_pair_sum_is_one_level_of_pairs():
    E = MultiDoubleWellEnergy(n_particles=6)
    src = E.source
    assert src.count("j in range(i + 1, floor(n/2))") >= 1
    assert E.structured_hessian_diagonal
    # the generated energy works for any particle count it is given
    F = from_expression(MultiDoubleWellEnergy.formula, particles=2, a=0.9, b=-4.0, c=0.0,
                        offset=4.0)
    for N in (2, 3, 7):
        x = torch.randn(2, 2 * N, dtype=F64)
        close(F(x), dw_ref(x, N))


def test_n_not_multiple_of_d_is_a_clear_error():
    E = from_expression("sum(norm(x[i] - x[j]) for i in range(N) for j in range(i + 1, N))",
                        particles=3)
    with pytest.raises(ShapeError, match="not a multiple of the particle dimension 3"):
        E(torch.randn(2, 10))
    assert E(torch.randn(2, 9)).shape == (2,)


def test_particles_argument_errors():
    for bad in (0, -1, 2.0, True, 100):
        with pytest.raises(EnergySyntaxError, match="particles must be"):
            from_expression("sum(x**2)", particles=bad)
    with pytest.raises(EnergySyntaxError, match="slices of x"):
        from_expression("sum(x[1:])", particles=2)
    with pytest.raises(EnergySyntaxError, match="reserved"):
        from_expression("N = 3\nsum(x**2)", particles=2)
    # without particles, N is an ordinary parameter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert from_expression("N*sum(x**2)", N=2.0)(torch.ones(1, 3)).item() == 6.0


def test_local_definitions_with_index_arguments():
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(10))
    E = from_expression("f(i) = (x[i + 1] - x[i])**2\nsum(f(i) for i in range(n - 1))")
    close(E(x), (x[:, 1:] - x[:, :-1]).pow(2).sum(-1))
    swapped = from_expression("g(i, j) = x[i] - 2*x[j]\nsum(g(j, i)**2 for i in range(n) "
                              "for j in range(i + 1, n))")
    want = sum((x[:, j] - 2 * x[:, i])**2 for i in range(5) for j in range(i + 1, 5))
    close(swapped(x), want)
    vec = from_expression("u(i, j) = x[i] - x[j]\nsum(dot(u(i, j), u(i, j)) for i in range(N) "
                          "for j in range(i + 1, N))", particles=1)
    close(vec(x), sum((x[:, i] - x[:, j])**2 for i in range(5) for j in range(i + 1, 5)))
    with pytest.raises(EnergySyntaxError, match="takes 2 index arguments, got 1"):
        from_expression("r(i, j) = x[i]*x[j]\nsum(r(i) for i in range(n))")
    with pytest.raises(EnergySyntaxError, match="takes index arguments"):
        from_expression("r(i) = x[i]\nsum(r)")
    with pytest.raises(EnergySyntaxError, match="must be index names"):
        from_expression("r(1) = x[0]\nr(1)")
    with pytest.raises(EnergySyntaxError, match="are indices"):
        from_expression("r(i) = x[i]\nr(x[0])")


def test_builtin_constructors():
    E = LennardJonesEnergy(n_particles=5)
    assert (E.n_particles, E.dim) == (5, 3) and "n_particles=5, dim=3" in repr(E)
    with pytest.raises(ShapeError, match=r"takes x of shape \[\.\.\., 15\], got \[\.\.\., 39\]"):
        E(torch.randn(2, 39))
    with pytest.raises(ParameterError, match="generated for particles in 3-D"):
        LennardJonesEnergy(dim=2)
    with pytest.raises(ParameterError, match="positive integer"):
        MultiDoubleWellEnergy(n_particles=0)
    with pytest.raises(ParameterError, match="multiple of 2"):
        ManyWellEnergy(dim=5)
    assert ManyWellEnergy(dim=4)(torch.zeros(2, 4)).tolist() == [0.0, 0.0]
    with pytest.raises(ShapeError, match=r"ManyWellEnergy\(dim=4\)"):
        ManyWellEnergy(dim=4)(torch.zeros(2, 6))


def test_particle_energy_pickles():
    E = from_expression("sum(a*norm(x[i] - x[j]) for i in range(N) for j in range(i + 1, N))",
                        particles=2, a=2.0)
    F = pickle.loads(pickle.dumps(E))
    x = torch.randn(3, 8, dtype=F64)
    assert torch.equal(E(x), F(x)) and type(F).particles == 2
    L = pickle.loads(pickle.dumps(LennardJonesEnergy(n_particles=4)))
    assert L.n_particles == 4 and L(torch.randn(1, 12, dtype=F64)).shape == (1,)
