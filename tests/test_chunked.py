"""ChunkedEnergy: a compiled energy evaluated in chunks of its batch, so the widest
sum's temporaries stay under a bound. Values against independent references; the
bound by recording the batch each chunk call sees."""

import pytest
import torch

from torchebm.core import ChunkedEnergy, HarmonicEnergy, LennardJonesEnergy
from torchebm.errors import MemoryLimitError, ParameterError
from torchebm.samplers import MALA

D = torch.float64


def lj_reference(x, n_particles, dim=3):
    """LJ with the oscillator (eps = rm = scale = 1), pairs by broadcasting."""
    p = x.reshape(*x.shape[:-1], n_particles, dim)
    i, j = torch.triu_indices(n_particles, n_particles, 1)
    r = (p[..., i, :] - p[..., j, :]).norm(dim=-1)
    pair = (r**-12 - 2 * r**-6).sum(-1)
    centred = p - p.mean(-2, keepdim=True)
    return pair + 0.5 * (centred**2).sum((-2, -1))


def lattice(batch, seed):
    grid = torch.stack(torch.meshgrid(*[torch.arange(-1.0, 2.0, dtype=D)] * 3,
                                      indexing="ij"), -1).reshape(-1, 3)
    sites = grid[grid.norm(dim=-1).argsort()[:13]]
    g = torch.Generator().manual_seed(seed)
    return (sites + 0.05 * torch.randn(*batch, 13, 3, generator=g, dtype=D)).reshape(
        *batch, 39)


def test_chunked_values_equal_independent_references_for_every_method():
    lj = LennardJonesEnergy().double()
    chunked = ChunkedEnergy(lj, max_level_elements=78 * 4)       # 4 samples per chunk
    x = lattice((3, 5), seed=0)                                    # 15 samples, 4 chunks
    assert chunked.chunk_size(x) == 4
    xg = x.clone().requires_grad_(True)
    energy = lj_reference(xg, 13)
    grad, = torch.autograd.grad(energy.sum(), xg)
    torch.testing.assert_close(chunked(x), energy.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.gradient(x), grad, rtol=1e-11, atol=1e-11)
    e, g = chunked.energy_and_gradient(x)
    torch.testing.assert_close(e, energy.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, grad, rtol=1e-11, atol=1e-11)
    # second order on a few samples: torch.func Hessian of the reference
    few = x[0, :3]
    hess = torch.func.vmap(torch.func.hessian(lambda y: lj_reference(y, 13)))(few)
    v = torch.randn(3, 39, dtype=D, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(chunked.hessian_diagonal(few),
                               torch.diagonal(hess, dim1=-2, dim2=-1), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(chunked.laplacian(few),
                               torch.diagonal(hess, dim1=-2, dim2=-1).sum(-1),
                               rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(chunked.hessian_vector_product(few, v),
                               (hess @ v.unsqueeze(-1)).squeeze(-1), rtol=1e-9, atol=1e-8)
    g2, lap = chunked.gradient_and_laplacian(few)
    torch.testing.assert_close(lap, torch.diagonal(hess, dim1=-2, dim2=-1).sum(-1),
                               rtol=1e-9, atol=1e-8)


def test_each_chunk_stays_under_the_bound_where_one_call_is_refused():
    lj = LennardJonesEnergy().double()
    lj.max_level_elements = 78 * 6                  # the energy alone refuses 20 samples
    x = lattice((20,), seed=2)
    with pytest.raises(MemoryLimitError):
        lj.gradient(x)
    seen = []
    original = lj.gradient

    def recording(xc, create_graph=False):
        seen.append(xc.shape[0])
        return original(xc, create_graph=create_graph)
    lj.gradient = recording                          # instance attribute: a spy
    chunked = ChunkedEnergy(lj, max_level_elements=78 * 6)
    g = chunked.gradient(x)
    assert seen == [6, 6, 6, 2] and max(seen) * 78 <= 78 * 6
    xg = x.clone().requires_grad_(True)
    want, = torch.autograd.grad(lj_reference(xg, 13).sum(), xg)
    torch.testing.assert_close(g, want, rtol=1e-11, atol=1e-11)
    # a bound above the energy's own guard is capped by it
    assert ChunkedEnergy(lj, max_level_elements=10**9).chunk_size(x) == 6


def test_create_graph_through_chunks_reaches_the_parameters():
    lj = LennardJonesEnergy(trainable=["eps"]).double()
    chunked = ChunkedEnergy(lj, max_level_elements=78 * 2)
    x = lattice((5,), seed=3)
    loss = chunked.gradient(x, create_graph=True).square().sum()
    loss.backward()
    want = lj.eps.grad.clone()
    lj.eps.grad = None
    lj.gradient(x, create_graph=True).square().sum().backward()
    torch.testing.assert_close(want, lj.eps.grad, rtol=1e-12, atol=0)


def test_errors_name_the_fix():
    with pytest.raises(TypeError, match="compiled energy"):
        ChunkedEnergy(torch.nn.Linear(2, 1))
    with pytest.raises(ParameterError, match="positive integer"):
        ChunkedEnergy(HarmonicEnergy(), 0)
    with pytest.raises(MemoryLimitError, match="not one sample's sum"):
        ChunkedEnergy(LennardJonesEnergy(), 77).gradient(torch.randn(2, 39))


def test_samplers_take_a_chunked_energy():
    chunked = ChunkedEnergy(HarmonicEnergy(), max_level_elements=8)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    out = MALA(chunked, step_size=0.1, seed=0).sample(x=x0, n_steps=5, progress=False)
    want = MALA(HarmonicEnergy(), step_size=0.1, seed=0).sample(x=x0, n_steps=5,
                                                                 progress=False)
    torch.testing.assert_close(out, want)
