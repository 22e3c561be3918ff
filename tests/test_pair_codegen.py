"""Pair levels of particle formulas: one masked per-pair weight under ``where``, shared
partials of the two endpoints, gathers by ``index_select``.

Values are compared in float64 (1e-12 relative) with references written here in
plain torch: pair differences by broadcasting, autograd gradients,
``torch.func.hessian`` diagonals and Hessian-vector products. Sizes include
N = 2 (a single pair) and N = 3, for particles of 2 and 3 coordinates, random
configurations, near-collisions (d = 1e-3) and exact collisions.
"""

import math

import pytest
import sympy as sp
import torch

from torchebm.core import LennardJonesEnergy, MultiDoubleWellEnergy
from torchebm.symbolic import from_expression
from torchebm.symbolic import functions as F
from torchebm.symbolic.derivatives import masked_factors_out

F64 = torch.float64


# -- the rewrite itself, on SymPy expressions ---------------------------------------------
a, b, w = sp.symbols("a b w", real=True)
COND = a > b


def test_masked_factor_is_pulled_out_only_when_finite():
    inner = sp.Piecewise((3 * w * (a + b) ** 2 / (a - b) ** 7, COND), (0, True))
    out = masked_factors_out(inner, {a, b})
    # (a + b)**2 is finite for finite a, b: it leaves the where; 1/(a - b)**7 stays inside
    pw = [f for f in sp.Mul.make_args(out) if isinstance(f, sp.Piecewise)]
    assert len(pw) == 1 and (a + b) ** 2 in sp.Mul.make_args(out)
    # equal values where the condition holds and where it does not (there the kept
    # factor 1/(a - b)**7 is infinite at a = b, yet the result is exactly 0)
    for at in ({a: 2.0, b: 0.5, w: 1.25}, {a: 0.5, b: 2.0, w: -1.0}, {a: 1.0, b: 1.0, w: 2.0}):
        want = 3 * at[w] * (at[a] + at[b]) ** 2 / (at[a] - at[b]) ** 7 if at[a] > at[b] else 0.0
        assert float(out.subs(at)) == pytest.approx(want, rel=1e-15, abs=0)


def test_masked_factor_keeps_a_sign_outside_and_leaves_unknown_symbols_inside():
    neg = masked_factors_out(sp.Piecewise((-2 * w * a, COND), (0, True)), {a})
    pos = masked_factors_out(sp.Piecewise((2 * w * a, COND), (0, True)), {a})
    assert sp.simplify(neg + pos) == 0                 # one shared where, opposite signs
    assert sp.Mul.make_args(neg)[0] == -1
    # w is not known finite (it may be a nested result that is inf): it stays inside
    only_w = masked_factors_out(sp.Piecewise((w * 5, COND), (0, True)), {a})
    assert only_w == sp.Piecewise((w * 5, COND), (0, True))
    # a guarded load is finite when the load is
    g = masked_factors_out(sp.Piecewise((w * F.Guard(a, COND), COND), (0, True)), {a})
    assert F.Guard(a, COND) in sp.Mul.make_args(g)
    # not a where(c, ., 0): unchanged
    two = sp.Piecewise((w * a, COND), (1, True))
    assert masked_factors_out(two, {a}) is two


# -- generated code --------------------------------------------------------------------
def _method(energy, name):
    src = energy.source
    start = src.index(f"    def {name}(")
    end = src.find("\n    def ", start + 1)
    return src[start:end if end > 0 else None]


def test_lennard_jones_gradient_masks_one_weight_per_pair():
    body = _method(LennardJonesEnergy(n_particles=5), "_gradient")
    assert body.count("torch.where") == 1          # was one per coordinate and endpoint
    assert "index_select(-1" in body and "x[..., lay" not in body


def test_endpoints_share_one_partial():
    # d E/d x_i = -d E/d x_j per coordinate: d partials per pair, not 2 d
    body = _method(MultiDoubleWellEnergy(n_particles=4), "_gradient")
    pair = body[body.index("level 2" if "level 2" in body else "level 0"):]
    assert pair.count("index_add") == 4 and pair.count("torch.where") <= 1


# -- values against independent references -------------------------------------------
def pair_diff(x, n_particles, dim):
    p = x.reshape(*x.shape[:-1], n_particles, dim)
    i, j = torch.triu_indices(n_particles, n_particles, 1)
    return p[..., i, :] - p[..., j, :]


def ref_soft(x, n_particles, dim, s=0.7):
    """sum over i < j of s^6 / d^6 - 1/d (+inf at d = 0), by broadcasting."""
    d = pair_diff(x, n_particles, dim).pow(2).sum(-1).sqrt()
    return (s**6 / d**6 - 1 / d).sum(-1)


def ref_soft_without_first_pair(x, n_particles, dim, s=0.7):
    """ref_soft over every pair but (0, 1) (the first in i < j order)."""
    d = pair_diff(x, n_particles, dim)[..., 1:, :].pow(2).sum(-1).sqrt()
    return (s**6 / d**6 - 1 / d).sum(-1)


SOFT = ("r(i, j) = norm(x[i] - x[j])\n"
        "sum(where(r(i, j) > 0, s**6/r(i, j)**6 - 1/r(i, j), inf) "
        "for i in range(N) for j in range(i + 1, N))")


def grad_of(f, x):
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(f(x).sum(), x)[0]


def close(got, want, rtol=1e-12):
    scale = torch.maximum(want.abs(), 1e-3 * want.abs().amax(-1, keepdim=True).clamp_min(1e-300))
    err = ((got - want).abs() / scale).max().item()
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


def configurations(n_particles, dim, seed):
    """Three samples: spread out, and two with particles 0 and 1 at distance 1e-3."""
    gen = torch.Generator().manual_seed(seed)
    p = 1.5 * torch.arange(n_particles, dtype=F64)[:, None] * torch.ones(dim, dtype=F64)
    p = p + 0.2 * torch.randn(3, n_particles, dim, generator=gen, dtype=F64)
    u = torch.randn(2, dim, generator=gen, dtype=F64)
    p[1:, 1] = p[1:, 0] + 1e-3 * u / u.norm(dim=-1, keepdim=True)
    return p.reshape(3, -1)


# 2-D particles: compiling this formula with its second order takes seconds per particle
# dimension; the guarded 3-D pair code is checked on Lennard-Jones in test_particles.py
@pytest.mark.parametrize("dim", [2])
@pytest.mark.parametrize("n_particles", [2, 3, 6])
def test_guarded_pair_energy_matches_reference(dim, n_particles):
    E = from_expression(SOFT, particles=dim, s=0.7)
    x = configurations(n_particles, dim, seed=10 * n_particles + dim)
    ref = lambda v: ref_soft(v, n_particles, dim)
    close(E(x), ref(x))
    close(E.gradient(x), grad_of(ref, x))
    e, g = E.energy_and_gradient(x)
    close(e, ref(x))
    close(g, grad_of(ref, x))
    hd = torch.stack([torch.func.hessian(ref)(row).diagonal() for row in x])
    close(E.hessian_diagonal(x), hd)
    close(E.laplacian(x), hd.sum(-1))
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    H = torch.stack([torch.func.hessian(ref)(row) for row in x])
    hv = torch.einsum("bij,bj->bi", H, v)
    # H v cancels near a collision (entries ~1e18 summing to far less): its error is
    # measured against |H| |v|, the scale that rounding in any evaluation of H v sets
    scale = torch.einsum("bij,bj->bi", H.abs(), v.abs())
    err = ((E.hessian_vector_product(x, v) - hv).abs() / scale).max().item()
    assert err <= 1e-12, f"relative error {err:.3e} > 1e-12"


@pytest.mark.parametrize("dim", [2])
def test_guarded_pair_energy_at_collision(dim):
    """d_01 = 0: energy +inf; the pair adds 0 to the gradient, Hessian diagonal and HVP
    (no NaN); the other pairs match the reference without pair (0, 1)."""
    n_particles = 3
    E = from_expression(SOFT, particles=dim, s=0.7)
    x = configurations(n_particles, dim, seed=5)[:1]
    x[0, dim:2 * dim] = x[0, :dim]
    assert E(x).item() == math.inf
    rest = lambda v: ref_soft_without_first_pair(v, n_particles, dim)
    g, hd = E.gradient(x), E.hessian_diagonal(x)
    assert not g.isnan().any() and not hd.isnan().any()
    close(g, grad_of(rest, x))
    close(hd, torch.func.hessian(rest)(x[0]).diagonal()[None])
    # (not all ones: a translation-invariant energy has H 1 = 0)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    close(E.hessian_vector_product(x, v), (torch.func.hessian(rest)(x[0]) @ v[0])[None])


def test_gradient_under_torch_func_and_create_graph():
    """The rewritten partials keep autograd of the closed form exact (second derivatives
    of the gradient through torch.func and create_graph)."""
    E = from_expression(SOFT, particles=2, s=0.7)
    x = configurations(3, 2, seed=2)[:1]
    ref = lambda v: ref_soft(v, 3, 2)
    want = torch.func.hessian(ref)(x[0])
    got = torch.func.jacrev(lambda v: E.gradient(v[None])[0])(x[0])
    close(got, want)
    xr = x.clone().requires_grad_(True)
    g = E.gradient(xr, create_graph=True)
    row = torch.autograd.grad(g[0, 1], xr)[0]
    close(row[0], want[1])
