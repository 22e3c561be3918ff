"""Speed of generated energies against autograd and the memory floor, in one run.

usage: python benchmarks/bench.py [--quick] [--threads 1] [--fused] [--filter NAME]
       python benchmarks/bench.py --second-order [--filter NAME]

For each energy and (B, n) and dtype it times, interleaved and repeated
(median of rounds): the closed-form ``gradient``, autograd of the generated
``forward`` (what a hand-written TorchEBM energy costs), ``energy_and_gradient``,
``forward``, the fused ``compile()`` mode (with ``--fused``) and its one-off
compile time, and a floor: one elementwise memory pass over x
(``torch.mul(x, 2.0, out=buf)``); for the Gaussian also one ``x @ P`` matmul.
It prints times and the ratios autograd/gradient, gradient/floor and
energy_and_gradient/gradient.

``--second-order`` times, at (4096, 64) float32, the closed-form
``laplacian`` against the autograd Laplacian (the faster of n backward passes
through the gradient's graph and the trace of ``torch.func.hessian``), the
closed-form ``hessian_vector_product`` against a double-backward HVP, and the
closed-form ``hessian`` against ``torch.func.hessian``. The autograd baselines
differentiate the generated ``_energy`` directly (no input checks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from torchebm.core import (AckleyEnergy, DoubleWellEnergy, GaussianEnergy, HarmonicEnergy,
                           RastriginEnergy, RosenbrockEnergy)
from torchebm.symbolic import from_expression


def energies(n, dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, dtype=torch.float64, generator=g)
    cov = a @ a.T / n + torch.eye(n, dtype=torch.float64)
    out = {
        "DoubleWell": DoubleWellEnergy(),
        "Rosenbrock": RosenbrockEnergy() if n >= 2 else None,
        "Rastrigin": RastriginEnergy(),
        "Ackley": AckleyEnergy(),
        "Harmonic": HarmonicEnergy(),
        "Gaussian": GaussianEnergy(torch.zeros(n, dtype=torch.float64), cov),
        "pairs(LJ-like)": from_expression(
            "sum(eps*(1/(1 + (x[j] - x[i])**2)) for i in range(n) for j in range(i+1, n))",
            eps=1.0) if n <= 256 else None,
        "gmm(K=8)": from_expression(
            "-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2) for k in range(len(w)))",
            w=torch.full((8,), 1 / 8), M=torch.randn(8, n, generator=g)),
    }
    return {k: v for k, v in out.items() if v is not None}


def timer(fn, rounds, inner):
    def run():
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t) / inner
    return run


def bench(name, energy, x, rounds, inner, fused):
    def autograd():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(energy(xg).sum(), xg)

    buf = torch.empty_like(x)
    fns = {
        "gradient": lambda: energy.gradient(x),
        "autograd": autograd,
        "e&g": lambda: energy.energy_and_gradient(x),
        "forward": lambda: energy(x),
        "floor": lambda: torch.mul(x, 2.0, out=buf),
    }
    if name == "Gaussian":
        p = torch.randn(x.shape[-1], x.shape[-1], dtype=x.dtype)
        fns["matmul"] = lambda: x @ p
    compile_time = None
    if fused:
        t = time.perf_counter()
        fast = energy.compile()
        fast.gradient(x)
        compile_time = time.perf_counter() - t
        fns["fused"] = lambda: fast.gradient(x)
    runners = {k: timer(f, rounds, inner) for k, f in fns.items()}
    for r in runners.values():
        r()                                   # warm-up (layouts, caches)
    samples = {k: [] for k in runners}
    for _ in range(rounds):                   # interleaved rounds
        for k, r in runners.items():
            samples[k].append(r())
    med = {k: statistics.median(v) for k, v in samples.items()}
    return med, compile_time


LEVELS_OF_N_SQUARED_POINTS = ("pairs(LJ-like)", "gmm(K=8)")


def second_order(name, energy, x, rounds):
    """Median times (s) of closed-form second derivatives and their autograd baselines."""
    lay, der = energy._inputs(x)[1:]
    n = x.shape[-1]
    v = torch.randn_like(x)

    def f(z):
        return energy._energy(z, lay, der)

    def laplacian_backward():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg).sum(), xg, create_graph=True)
        return sum(torch.autograd.grad(g[..., i].sum(), xg, retain_graph=True)[0][..., i]
                   for i in range(n))

    hess = torch.vmap(torch.func.hessian(lambda z: f(z.unsqueeze(0)).squeeze(0)))

    def laplacian_func():
        return torch.diagonal(hess(x), dim1=-2, dim2=-1).sum(-1)

    def hvp_double_backward():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg).sum(), xg, create_graph=True)
        return torch.autograd.grad(g, xg, v)[0]

    fns = {"laplacian": lambda: energy.laplacian(x), "lap-backward": laplacian_backward,
           "hvp": lambda: energy.hessian_vector_product(x, v),
           "hvp-double-backward": hvp_double_backward}
    if name not in LEVELS_OF_N_SQUARED_POINTS:
        # full Hessians of pair and mixture energies are [B, n, n] per point of their
        # levels: tens of GB at this size, for torch.func as for us
        fns.update({"lap-func": laplacian_func, "hessian-func": lambda: hess(x),
                    "hessian": lambda: energy.hessian(x, max_elements=2**30)})
    samples = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t)
    return {k: statistics.median(t) for k, t in samples.items()}


def second_order_table(shape, filter_, rounds=5):
    B, n = shape
    x = torch.randn(B, n, generator=torch.Generator().manual_seed(1))
    print(f"second derivatives at {B}x{n} float32, median of {rounds}; times in ms")
    print(f"{'energy':16s} {'laplacian':>9s} {'autograd':>9s} {'speed-up':>8s} {'hvp':>8s} "
          f"{'2x bwd':>8s} {'speed-up':>8s} {'hessian':>8s} {'func':>8s} {'speed-up':>8s}  "
          f"diagonal")
    for name, energy in energies(n, torch.float32).items():
        if filter_ and filter_.lower() not in name.lower():
            continue
        m = {k: v * 1e3 for k, v in second_order(name, energy, x, rounds).items()}
        auto = min(m["lap-backward"], m.get("lap-func", float("inf")))
        if "hessian" in m:
            full = (f"{m['hessian']:8.2f} {m['hessian-func']:8.2f} "
                    f"{m['hessian-func'] / m['hessian']:7.1f}x")
        else:
            full = f"{'-':>8s} {'-':>8s} {'-':>8s}"
        which = "closed form" if energy.structured_hessian_diagonal else "from HVPs"
        print(f"{name:16s} {m['laplacian']:9.2f} {auto:9.2f} {auto / m['laplacian']:7.1f}x "
              f"{m['hvp']:8.2f} {m['hvp-double-backward']:8.2f} "
              f"{m['hvp-double-backward'] / m['hvp']:7.1f}x {full}  {which}", flush=True)


def peak_extra_memory(fn):
    """Peak bytes allocated by ``fn`` beyond its inputs, from torch's CPU profiler."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    current = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        if ev.cpu_parent is None:          # top-level ops: their children are included
            current += ev.cpu_memory_usage
            peak = max(peak, current)
    return peak


def _stable_allocator():
    """Re-run this script with glibc keeping freed memory (no page faults per call).

    Large tensors are otherwise mmap'ed and unmapped on every call, and the page
    faults dominate and randomise eager timings; a sampler that runs for long
    sees the kept-memory regime, for autograd and closed form alike.
    """
    if os.environ.get("TORCHEBM_BENCH_CHILD") or sys.platform != "linux":
        return
    env = dict(os.environ, TORCHEBM_BENCH_CHILD="1", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
               MALLOC_TRIM_THRESHOLD_=str(1 << 31))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def compile_times(rounds=5):
    """Cold compile (our cache and SymPy's emptied) per built-in formula, a cache hit, and
    the import cost of torchebm.core over torch (in a fresh interpreter)."""
    import subprocess

    import sympy

    from torchebm.symbolic import api
    from torchebm.symbolic.build import DEFINITIONS
    from torchebm.symbolic.definitions import load_definition
    print("compile times (median of %d, caches emptied before each):" % rounds)
    for path in sorted(DEFINITIONS.glob("*.toml")):
        spec = load_definition(path)
        ranks = {p.name: p.rank for p in spec.params}
        times = []
        for _ in range(rounds):
            api._cache.clear()
            sympy.core.cache.clear_cache()
            t = time.perf_counter()
            api.compile_class(spec.formula, ranks, None)
            times.append(time.perf_counter() - t)
        print(f"  {spec.class_name:22s} {statistics.median(times) * 1e3:7.1f} ms")
    api.compile_class("sum(x**2)", {}, None)
    t = time.perf_counter()
    for _ in range(10000):
        from_expression("sum(a*x**2)", a=1.0)
    print(f"  from_expression cache hit (class + new instance): "
          f"{(time.perf_counter() - t) / 10000 * 1e6:.1f} us")
    code = ("import time; t = time.perf_counter(); import torch; t1 = time.perf_counter(); "
            "import torchebm.core, sys; t2 = time.perf_counter(); "
            "print(f'{t1 - t:.3f} {t2 - t1:.3f} {\"sympy\" in sys.modules}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    torch_s, extra_s, sympy_loaded = out.split()
    print(f"  import torch {torch_s} s; import torchebm.core adds {extra_s} s "
          f"(SymPy imported: {sympy_loaded})")


def main():
    _stable_allocator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one shape, float32 only (< 60 s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fused", action="store_true", help="also time energy.compile()")
    ap.add_argument("--filter", default="")
    ap.add_argument("--compile-time", action="store_true",
                    help="only measure compile, cache-hit and import times")
    ap.add_argument("--memory", action="store_true",
                    help="also report peak extra memory of gradient / size of x")
    ap.add_argument("--second-order", action="store_true",
                    help="only time laplacian, hessian_vector_product and hessian")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile_time:
        compile_times()
        return
    if args.second_order:
        second_order_table((4096, 64), args.filter)
        return
    shapes = [(4096, 64)] if args.quick else [(4096, 2), (4096, 64), (65536, 16), (512, 1024)]
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.float64]
    rounds = 7
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, "
          f"median of {rounds} interleaved rounds; times in microseconds")
    header = (f"{'energy':16s} {'B x n':>11s} {'dtype':>7s} {'gradient':>9s} {'autograd':>9s} "
              f"{'e&g':>9s} {'forward':>9s} {'floor':>8s} {'auto/grad':>9s} {'grad/floor':>10s} "
              f"{'e&g/grad':>8s}")
    if args.fused:
        header += f" {'fused':>8s} {'fused/floor':>11s} {'compile s':>9s}"
    print(header)
    for (B, n) in shapes:
        for dtype in dtypes:
            x = torch.randn(B, n, dtype=dtype, generator=torch.Generator().manual_seed(1))
            for name, energy in energies(n, dtype).items():
                if args.filter and args.filter.lower() not in name.lower():
                    continue
                t = time.perf_counter()
                energy.gradient(x)
                energy.gradient(x)
                once = (time.perf_counter() - t) / 2
                inner = min(200, max(1, int(2e-3 / max(once, 1e-7))))   # ~2 ms per timing
                med, ct = bench(name, energy, x, rounds, inner, args.fused)
                us = {k: v * 1e6 for k, v in med.items()}
                line = (f"{name:16s} {f'{B}x{n}':>11s} {str(dtype)[6:]:>7s} {us['gradient']:9.1f} "
                        f"{us['autograd']:9.1f} {us['e&g']:9.1f} {us['forward']:9.1f} "
                        f"{us['floor']:8.1f} {med['autograd'] / med['gradient']:9.2f} "
                        f"{med['gradient'] / med['floor']:10.1f} {med['e&g'] / med['gradient']:8.2f}")
                if args.fused:
                    line += (f" {us['fused']:8.1f} {med['fused'] / med['floor']:11.1f} "
                             f"{ct:9.2f}")
                if args.memory:
                    ratio = peak_extra_memory(lambda: energy.gradient(x)) / (x.numel() * x.element_size())
                    line += f"  mem {ratio:.1f}x"
                if "matmul" in us:
                    line += f"   (one x@P matmul: {us['matmul']:.1f})"
                print(line, flush=True)


if __name__ == "__main__":
    main()
