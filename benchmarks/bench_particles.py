"""Particle-system built-ins (DW-4, LJ-13, LJ-55): closed forms vs autograd of plain torch.

usage: python benchmarks/bench_particles.py [--batch 1024] [--repeat 7] [--threads T]
                                            [--device cpu|cuda] [--systems dw4,lj13,lj55]

For each system, the built-in (MultiDoubleWellEnergy, LennardJonesEnergy) is
timed against a reference written here in plain torch the usual way
(``x.view(B, N, d)``, pair differences by broadcasting, the pairs i < j
picked with ``triu_indices``):

* gradient: closed form vs ``torch.autograd.grad`` of the reference;
* energy_and_gradient: one closed-form pass vs forward + backward;
* Laplacian: closed form vs the fastest of three autograd routes, each timed:
  ``n`` double-backward passes (one per coordinate), ``torch.func``'s
  ``vmap(hessian)`` then the trace, and ``vmap`` over the ``n`` unit vectors of
  a forward-over-reverse Hessian-vector product (``jvp`` of ``grad``).

Times are medians of ``--repeat`` calls in float32 after two warm-up calls
(a route whose first call takes over 20 s is timed once more, after that call);
the Laplacian routes of autograd are skipped (marked ``-``) when one call would
need more than about 4 GB. Before timing, every closed form is checked against
its autograd counterpart (relative 1e-3 in float32), so a fast wrong answer
fails the run.
"""

import argparse
import statistics
import sys
import time

import torch

from torchebm.core import LennardJonesEnergy, MultiDoubleWellEnergy


def pair_distances(x, n_particles, dim):
    """Distances of the pairs i < j: x [B, N*d] -> [B, N (N - 1) / 2]."""
    p = x.view(x.shape[0], n_particles, dim)
    i, j = torch.triu_indices(n_particles, n_particles, 1, device=x.device)
    return (p[:, i] - p[:, j]).pow(2).sum(-1).sqrt()


def dw_reference(n_particles, dim, a=0.9, b=-4.0, c=0.0, offset=4.0):
    def energy(x):
        d = pair_distances(x, n_particles, dim) - offset
        return (a * d**4 + b * d**2 + c).sum(-1)
    return energy


def lj_reference(n_particles, dim, eps=1.0, rm=1.0, oscillator_scale=1.0):
    def energy(x):
        s = rm / pair_distances(x, n_particles, dim)
        p = x.view(x.shape[0], n_particles, dim)
        centred = p - p.mean(1, keepdim=True)
        return (eps * (s**12 - 2 * s**6)).sum(-1) + 0.5 * oscillator_scale * centred.pow(2).sum((1, 2))
    return energy


SYSTEMS = {
    "dw4": ("DW-4", lambda: MultiDoubleWellEnergy(), dw_reference(4, 2), 4, 2, 2.5),
    "lj13": ("LJ-13", lambda: LennardJonesEnergy(), lj_reference(13, 3), 13, 3, 1.0),
    "lj55": ("LJ-55", lambda: LennardJonesEnergy(n_particles=55), lj_reference(55, 3), 55, 3, 1.0),
}


def configurations(batch, n_particles, dim, spacing, device, gen):
    """Particles on a jittered grid ``spacing`` apart: no pair closer than spacing/2."""
    side = int(round(n_particles ** (1 / dim) + 0.5))
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * dim, indexing="ij"), -1)
    grid = grid.reshape(-1, dim)[:n_particles].to(torch.float64) * spacing
    x = grid + 0.1 * spacing * torch.randn(batch, n_particles, dim, generator=gen, dtype=torch.float64)
    return x.reshape(batch, -1).to(device=device, dtype=torch.float32)


def timed(fn, repeat, device):
    t = time.perf_counter()
    fn()
    if time.perf_counter() - t > 20:      # one call of a slow autograd route is enough
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def autograd_gradient(ref, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(ref(x).sum(), x)[0]


def autograd_energy_and_gradient(ref, x):
    x = x.detach().requires_grad_(True)
    e = ref(x)
    return e.detach(), torch.autograd.grad(e.sum(), x)[0]


def laplacian_double_backward(ref, x):
    x = x.detach().requires_grad_(True)
    g = torch.autograd.grad(ref(x).sum(), x, create_graph=True)[0]
    lap = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k in range(x.shape[1]):
        lap = lap + torch.autograd.grad(g[:, k].sum(), x, retain_graph=True)[0][:, k]
    return lap


def laplacian_func_hessian(ref, x):
    one = lambda v: ref(v[None])[0]
    return torch.func.vmap(torch.func.hessian(one))(x).diagonal(dim1=-2, dim2=-1).sum(-1)


def laplacian_func_hvp(ref, x):
    one = lambda v: ref(v[None])[0]
    grad = torch.func.grad(one)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def lap(v):
        hvps = torch.func.vmap(lambda u: torch.func.jvp(grad, (v,), (u,))[1])(eye)
        return hvps.diagonal().sum()
    return torch.func.vmap(lap)(x)


def check(name, got, want, rtol=1e-3):
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    if not err <= rtol:
        sys.exit(f"{name}: closed form and autograd differ (relative {err:.2e}); not timing")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--systems", default="dw4,lj13,lj55")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    print(f"batch {args.batch}, float32, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeat}")
    print(f"{'system':7} {'n':>4} {'pairs':>5}  {'what':19} {'closed form':>12} "
          f"{'autograd':>12} {'speed-up':>9}")
    for key in args.systems.split(","):
        label, make, ref, n_particles, dim, spacing = SYSTEMS[key]
        energy = make().to(device)
        x = configurations(args.batch, n_particles, dim, spacing, device, gen)
        n, pairs = x.shape[1], n_particles * (n_particles - 1) // 2
        check(f"{label} gradient", energy.gradient(x), autograd_gradient(ref, x))
        small = x[:8]
        check(f"{label} Laplacian", energy.laplacian(small), laplacian_double_backward(ref, small))
        rows = [("gradient", lambda: energy.gradient(x), {"autograd": lambda: autograd_gradient(ref, x)}),
                ("energy_and_gradient", lambda: energy.energy_and_gradient(x),
                 {"autograd": lambda: autograd_energy_and_gradient(ref, x)})]
        lap_routes = {"double backward": lambda: laplacian_double_backward(ref, x)}
        # vmap(hessian) and vmap(jvp(grad)) hold [B, n, pairs, d]-sized temporaries
        if args.batch * n * pairs * dim * 4 * 8 < 4e9:
            lap_routes["vmap(hessian)"] = lambda: laplacian_func_hessian(ref, x)
            lap_routes["vmap(jvp(grad))"] = lambda: laplacian_func_hvp(ref, x)
        rows.append(("laplacian", lambda: energy.laplacian(x), lap_routes))
        for what, closed, routes in rows:
            t_closed = timed(closed, args.repeat, device)
            best, best_name = None, None
            for rname, route in routes.items():
                t = timed(route, max(1, args.repeat // 2) if what == "laplacian" else args.repeat,
                          device)
                if what == "laplacian":
                    print(f"{'':7} {'':>4} {'':>5}  {'  autograd: ' + rname:31} {t * 1e3:10.2f}ms")
                if best is None or t < best:
                    best, best_name = t, rname
            print(f"{label:7} {n:4d} {pairs:5d}  {what:19} {t_closed * 1e3:10.2f}ms "
                  f"{best * 1e3:10.2f}ms {best / t_closed:8.1f}x"
                  + (f"  (fastest: {best_name})" if what == "laplacian" else ""))


if __name__ == "__main__":
    main()
