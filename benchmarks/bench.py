"""Speed of generated energies against autograd and the memory floor, in one run.

usage: python benchmarks/bench.py [--quick] [--threads 1] [--fused] [--filter NAME]
       python benchmarks/bench.py --second-order [--filter NAME]
       python benchmarks/bench.py --hand [--filter NAME]     (hand-written, per call)
       python benchmarks/bench.py --per-call
       python benchmarks/bench.py --jax [--jax-python /path/to/venv/bin/python]

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

``--hand`` times, side by side in one run, the ``gradient`` of every built-in
against the gradient an expert writes by hand in eager torch (written out in
:func:`hand_written`, each checked against ours before it is timed), at 4096 x 64
float32 (the 2-D built-ins at 4096 x 2, Lennard-Jones at 4096 x 63), and prints
ours/hand (the goal is at most 1.2x); then the per-call figure.

``--per-call`` times ``HarmonicEnergy().gradient(x)`` on ``x [4, 2]`` float32
against one torch elementwise op on the same batch (``k * x``, ``k`` a 0-d
tensor), with its parts: the generated ``_gradient`` alone, the runtime's checks
(``_inputs``), and the same call on a class whose generated gradient is the one
op ``der["2*(0.5*k)"] * x`` (parameter-only arithmetic in ``_derive``). The goal
is at most 3x. Fastest of interleaved rounds (other jobs only add time).

``--jax`` times ``jax.jit(jax.grad(sum of energies))`` of the same formulas
(written in jax.numpy in :data:`JAX_FORMULAS`) beside our eager and fused
(``energy.compile()``) gradient at 64 x 2, 1000 x 64 and 4096 x 64 float32 on one
CPU thread; JAX runs in a separate process pinned to one core (this interpreter
if jax imports here, else ``--jax-python``) and its gradient is compared with
ours before a row is printed. JAX is never a dependency.
"""

from __future__ import annotations

import argparse
import copy
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


# -- side by side with an expert's hand-written closed forms ------------------------------------
def hand_written(n, dtype):
    """``{name: (energy, gradient function)}``: every built-in at its default parameters
    and the gradient an expert writes by hand in eager torch for that formula
    (constants folded into Python floats, parameter-only algebra done once, shared
    subexpressions reused). Pair energies read ``x`` as ``[B, n // d, d]`` particles."""
    import math as m
    from torchebm.core import (BoothEnergy, HimmelblauEnergy, LennardJonesEnergy,
                               ManyWellEnergy, MultiDoubleWellEnergy, StyblinskiTangEnergy)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, dtype=torch.float64, generator=g)
    cov = a @ a.T / n + torch.eye(n, dtype=torch.float64)
    mean64 = torch.randn(n, dtype=torch.float64, generator=g)
    precision = torch.linalg.inv(cov).to(dtype)
    precision = 0.5 * (precision + precision.T)
    mean = mean64.to(dtype)

    def gaussian(x):                               # E = 0.5 (x - m) P (x - m)
        return (x - mean) @ precision

    def harmonic(x):                               # E = 0.5 k sum(x^2), k = 1
        return 1.0 * x

    def double_well(x):                            # E = 2 sum((x^2 - 1)^2)
        return 8.0 * x * (x * x - 1.0)

    def rosenbrock(x):                             # sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2
        x0, x1 = x[..., :-1], x[..., 1:]
        t = x1 - x0 * x0
        grad = torch.zeros_like(x)
        grad[..., :-1] = -400.0 * x0 * t - 2.0 * (1.0 - x0)
        grad[..., 1:] += 200.0 * t
        return grad

    def rastrigin(x):                              # 10 n + sum(x^2 - 10 cos(2 pi x))
        return 2.0 * x + (20.0 * m.pi) * torch.sin((2.0 * m.pi) * x)

    def ackley(x):          # -20 exp(-0.2 sqrt(mean x^2)) - exp(mean cos(2 pi x)) + 20 + e
        k = x.shape[-1]
        c = 2.0 * m.pi
        r = x.square().mean(-1, keepdim=True).sqrt()
        cx = c * x
        s = torch.cos(cx).mean(-1, keepdim=True)
        return (4.0 / k) * torch.exp(-0.2 * r) / r * x + (c / k) * torch.exp(s) * torch.sin(cx)

    def styblinski_tang(x):                        # 0.5 sum(x^4 - 16 x^2 + 5 x)
        return x * (2.0 * x * x - 16.0) + 2.5

    def booth(x):            # (x0 + 2 x1 - 7)^2 + (2 x0 + x1 - 5)^2
        x0, x1 = x[..., 0], x[..., 1]
        u, v = x0 + 2.0 * x1 - 7.0, 2.0 * x0 + x1 - 5.0
        return torch.stack([2.0 * u + 4.0 * v, 4.0 * u + 2.0 * v], -1)

    def himmelblau(x):       # (x0^2 + x1 - 11)^2 + (x0 + x1^2 - 7)^2
        x0, x1 = x[..., 0], x[..., 1]
        u, v = x0 * x0 + x1 - 11.0, x0 + x1 * x1 - 7.0
        return torch.stack([4.0 * x0 * u + 2.0 * v, 2.0 * u + 4.0 * x1 * v], -1)

    def many_well(x):        # per pair (y, z): y^4 - 6 y^2 - 0.5 y + 0.5 z^2
        p = x.unflatten(-1, (-1, 2))
        y = p[..., 0]
        return torch.stack([y * (4.0 * y * y - 12.0) - 0.5, p[..., 1]], -1).flatten(-2)

    def pair_terms(x, d):
        p = x.unflatten(-1, (-1, d))
        diff = p.unsqueeze(-2) - p.unsqueeze(-3)              # [B, N, N, d]
        r = torch.linalg.vector_norm(diff, dim=-1)            # [B, N, N], 0 on the diagonal
        return p, diff, r

    def multi_double_well(x):   # sum over i < j of 0.9 (r - 4)^4 - 4 (r - 4)^2
        _, diff, r = pair_terms(x, 2)
        u = r - 4.0
        f = (3.6 * u * u - 8.0) * u / r                       # f'(r) / r
        f = f.masked_fill(r == 0, 0.0)
        return (f.unsqueeze(-1) * diff).sum(-2).flatten(-2)

    def lennard_jones(x):       # sum over i < j of (1/r)^6 ((1/r)^6 - 2) + 0.5 sum |x_i - c|^2
        p, diff, r = pair_terms(x, 3)
        s6 = r.pow(-6)
        f = 12.0 * s6 * (1.0 - s6) / (r * r)                  # u'(r) / r
        f = f.masked_fill(r == 0, 0.0)
        grad = (f.unsqueeze(-1) * diff).sum(-2) + (p - p.mean(-2, keepdim=True))
        return grad.flatten(-2)

    out = {
        "DoubleWell": (DoubleWellEnergy(), double_well),
        "Harmonic": (HarmonicEnergy(), harmonic),
        "Rosenbrock": (RosenbrockEnergy(), rosenbrock),
        "Rastrigin": (RastriginEnergy(), rastrigin),
        "Ackley": (AckleyEnergy(), ackley),
        "StyblinskiTang": (StyblinskiTangEnergy(), styblinski_tang),
        "Gaussian": (GaussianEnergy(mean64, cov), gaussian),
        "ManyWell": (ManyWellEnergy(dim=n), many_well) if n % 2 == 0 else None,
        "Booth": (BoothEnergy(), booth),
        "Himmelblau": (HimmelblauEnergy(), himmelblau),
        "MultiDoubleWell": (MultiDoubleWellEnergy(n_particles=n // 2), multi_double_well)
        if n % 2 == 0 and n >= 4 else None,
        "LennardJones": (LennardJonesEnergy(n_particles=n // 3), lennard_jones)
        if n % 3 == 0 else None,
    }
    return {k: v for k, v in out.items() if v is not None}


#: the size each built-in is measured at for ``(B, n)``: the 2-D ones take n = 2, and
#: Lennard-Jones the largest multiple of 3 (particles in 3-D)
def _size_for(name, n):
    return 2 if name in ("Booth", "Himmelblau") else 3 * (n // 3) if name == "LennardJones" \
        else n


def _check_same(name, ours, theirs):
    """The hand-written gradient agrees with ours (float32: relative to the row's size)."""
    scale = theirs.abs().amax(-1, keepdim=True).clamp_min(1.0)
    err = float(((ours - theirs).abs() / scale).max())
    if not err <= 1e-4:
        raise SystemExit(f"{name}: the hand-written gradient differs from ours by {err:.3g} "
                         f"(relative to each row's largest entry); fix the benchmark first")


def median_times(fns, rounds=11, budget=2e-3, fastest=False):
    """Median (or fastest) seconds per call of each function, in interleaved rounds; every
    other round runs them in reverse order, so that none always runs first (after the
    allocator and caches served another)."""
    inner = {}
    for k, fn in fns.items():
        fn()
        t = time.perf_counter()
        fn()
        once = time.perf_counter() - t
        inner[k] = min(2000, max(1, int(budget / max(once, 1e-7))))
    samples = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(rounds):
        for k, fn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            samples[k].append((time.perf_counter() - t) / inner[k])
    return {k: (min if fastest else statistics.median)(v) for k, v in samples.items()}


def hand_written_table(shape=(4096, 64), dtype=torch.float32, filter_=""):
    """Our ``gradient`` beside the hand-written closed form, in one run."""
    B, n = shape
    print(f"\ngradient beside an expert's hand-written eager closed form, {B} x n {dtype}, "
          f"threads = {torch.get_num_threads()}, fastest of 11 interleaved rounds; times in us")
    print(f"{'energy':16s} {'n':>4s} {'ours':>9s} {'hand':>9s} {'ours/hand':>9s}")
    ratios = []
    names = list(hand_written(n, dtype)) + ["LennardJones"] * (n % 3 != 0)
    for name in names:
        if filter_ and filter_.lower() not in name.lower():
            continue
        k = _size_for(name, n)
        energy, hand = hand_written(k, dtype)[name]
        scale = 2.0 if name == "LennardJones" else 1.0        # spread the particles apart
        x = scale * torch.randn(B, k, dtype=dtype, generator=torch.Generator().manual_seed(1))
        _check_same(name, energy.gradient(x), hand(x))
        med = median_times({"ours": lambda: energy.gradient(x), "hand": lambda: hand(x)},
                           fastest=True)
        ratios.append(med["ours"] / med["hand"])
        print(f"{name:16s} {k:4d} {med['ours'] * 1e6:9.1f} {med['hand'] * 1e6:9.1f} "
              f"{ratios[-1]:8.2f}x", flush=True)
    if ratios:
        print(f"ours/hand: best {min(ratios):.2f}x, worst {max(ratios):.2f}x "
              f"(goal: at most 1.2x everywhere)")


def per_call_table(rounds=300, calls=200):
    """What one call costs on a tiny batch: ``gradient`` on ``[4, 2]`` against one torch op."""
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    k = torch.tensor(1.0)
    energy = HarmonicEnergy()
    _, lay, der = energy._inputs(x)

    class OneOp(HarmonicEnergy):
        """Harmonic as generated code reads once ``0.5*k*2`` is a derived value: one op."""

        def _derive(self):
            return {"2*(0.5*k)": 2 * (0.5 * self.k)}

        def _gradient(self, x, lay, der):
            return der["2*(0.5*k)"] * x

    one_op = OneOp()

    def generated():          # as gradient runs it: grad mode off (toggled the same way)
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return energy._gradient(x, lay, der)
        finally:
            torch._C._set_grad_enabled(enabled)

    torch.testing.assert_close(one_op.gradient(x), k * x)
    fns = {"k * x": lambda: k * x,
           "gradient": lambda: energy.gradient(x),
           "gradient, one-op generated code": lambda: one_op.gradient(x),
           "generated _gradient": generated,
           "checks (_inputs)": lambda: energy._inputs(x),
           "forward": lambda: energy(x)}
    torch.testing.assert_close(energy.gradient(x), k * x)
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):                      # interleaved: the ratio is of one moment
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t) / calls)
    # the fastest round: on a shared machine the other jobs only ever add time (many short
    # rounds: some of them run undisturbed)
    med = {name: min(v) for name, v in samples.items()}
    op = med["k * x"]
    print(f"\nper call on x [4, 2] float32, threads = {torch.get_num_threads()}, fastest of "
          f"{rounds} interleaved rounds of {calls} calls")
    for name in fns:
        print(f"  {name:32s} {med[name] * 1e6:7.2f} us  {med[name] / op:5.2f}x one op")
    runtime = med["gradient"] - med["generated _gradient"]     # the runtime's share
    print(f"  {'runtime (checks, caches, grad)':32s} {runtime * 1e6:7.2f} us  "
          f"{runtime / op:5.2f}x one op")
    print(f"HarmonicEnergy().gradient(x) / (k * x): {med['gradient'] / op:.2f}x (goal: at most "
          f"3x); with one-op generated code: "
          f"{med['gradient, one-op generated code'] / op:.2f}x")


# -- JAX, only where it imports ----------------------------------------------------------------
JAX_FORMULAS = {   # the built-ins' formulas in jax.numpy, defaults of torchebm.core
    "DoubleWell": "2.0*jnp.sum((x**2 - 1.0)**2, -1)",
    "Harmonic": "0.5*jnp.sum(x**2, -1)",
    "Rosenbrock": "jnp.sum(100.0*(x[..., 1:] - x[..., :-1]**2)**2 + (1.0 - x[..., :-1])**2, -1)",
    "Rastrigin": "10.0*x.shape[-1] + jnp.sum(x**2 - 10.0*jnp.cos(2*jnp.pi*x), -1)",
    "Ackley": ("-20.0*jnp.exp(-0.2*jnp.sqrt(jnp.mean(x**2, -1))) "
               "- jnp.exp(jnp.mean(jnp.cos(2*jnp.pi*x), -1)) + 20.0 + jnp.e"),
    "StyblinskiTang": "0.5*jnp.sum(x**4 - 16.0*x**2 + 5.0*x, -1)",
    "Gaussian": "0.5*jnp.sum((x - mean) * ((x - mean) @ P), -1)",
}

JAX_SCRIPT = r"""
import json, os, statistics, sys, time
if hasattr(os, "sched_setaffinity"):          # one core, as torch's one thread
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import numpy as np
import jax, jax.numpy as jnp
job = json.load(open(sys.argv[1]))
out = {}
for shape_text, arrays in job["shapes"].items():
    shape = tuple(json.loads(shape_text))
    x = jnp.asarray(np.asarray(arrays["x"], dtype=np.float32))
    mean = jnp.asarray(np.asarray(arrays["mean"], dtype=np.float32))
    P = jnp.asarray(np.asarray(arrays["P"], dtype=np.float32))
    for name, src in job["formulas"].items():
        energy = eval("lambda x: " + src, {"jnp": jnp, "mean": mean, "P": P})
        g = jax.jit(jax.grad(lambda x: jnp.sum(energy(x))))
        r = g(x).block_until_ready()
        t = time.perf_counter()
        g(x).block_until_ready()
        inner = max(1, min(2000, int(2e-3 / max(time.perf_counter() - t, 1e-7))))
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(inner):
                r = g(x)
            r.block_until_ready()
            times.append((time.perf_counter() - t) / inner)
        out[f"{name} {shape_text}"] = {"us": min(times) * 1e6,
                                       "grad": np.asarray(r[:2]).tolist()}
print(json.dumps({"version": jax.__version__, "results": out}))
"""


def _jax_results(python, shapes, inputs, names):
    """Run :data:`JAX_SCRIPT` in ``python`` (this interpreter if jax imports here)."""
    import json
    import subprocess
    import tempfile
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      " --xla_cpu_multi_thread_eigen=false").strip(),
               JAX_PLATFORMS="cpu")
    job = {"formulas": {name: JAX_FORMULAS[name] for name in names},
           "shapes": {json.dumps(list(s)): {k: v.tolist() for k, v in inputs[s].items()}
                      for s in shapes}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        res = subprocess.run([python, "-c", JAX_SCRIPT, f.name], capture_output=True,
                             text=True, env=env, timeout=1800)
    finally:
        os.unlink(f.name)
    if res.returncode != 0:
        print(f"(JAX part skipped: {python} failed: {res.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def jax_table(jax_python=None, shapes=((64, 2), (1000, 64), (4096, 64)), filter_=""):
    """``jax.jit(jax.grad(...))`` of the same energies beside our eager and fused gradient."""
    python = jax_python
    if python is None:
        import importlib.util
        if importlib.util.find_spec("jax") is not None:
            python = sys.executable
        else:
            print("(no JAX part: jax does not import here; pass --jax-python PATH of an "
                  "interpreter that has it, e.g. a separate venv)")
            return
    inputs, ours = {}, {}
    for B, n in shapes:
        x = torch.randn(B, n, generator=torch.Generator().manual_seed(3))
        gauss, _ = hand_written(n, torch.float32)["Gaussian"]
        inputs[B, n] = {"x": x, "mean": gauss.mean.float(),
                        "P": torch.linalg.inv(gauss.cov).float()}
        builtins = {name: e for name, (e, _) in hand_written(n, torch.float32).items()
                    if name in JAX_FORMULAS and (not filter_ or filter_.lower() in name.lower())}
        for name, energy in builtins.items():
            fused = copy.deepcopy(energy).compile()
            t = time.perf_counter()
            fused.gradient(x)
            compile_s = time.perf_counter() - t
            med = median_times({"eager": lambda: energy.gradient(x),
                                "fused": lambda: fused.gradient(x)}, fastest=True)
            ours[name, (B, n)] = (med, compile_s, energy.gradient(x)[:2])
    jx = _jax_results(python, shapes, inputs, sorted({name for name, _ in ours}))
    if jx is None:
        return
    print(f"\ngradient, microseconds per call (fastest of 7-11 rounds), float32, one thread; jax "
          f"{jx['version']} jax.jit(jax.grad(sum of energies)) in a separate process on one "
          f"core; ours: eager closed form and fused (energy.compile())")
    print(f"{'energy':16s} {'B x n':>9s} {'eager':>9s} {'fused':>9s} {'jax':>9s} "
          f"{'eager/jax':>9s} {'fused/jax':>9s}")
    for (name, (B, n)), (med, compile_s, g) in ours.items():
        r = jx["results"].get(f"{name} [{B}, {n}]")
        if r is None:
            continue
        want = torch.tensor(r["grad"])
        if not torch.allclose(g, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-6):
            print(f"{name}: JAX's gradient differs from ours; the row is left out")
            continue
        e, f_ = med["eager"] * 1e6, med["fused"] * 1e6
        print(f"{name:16s} {f'{B}x{n}':>9s} {e:9.1f} {f_:9.1f} {r['us']:9.1f} "
              f"{e / r['us']:8.2f}x {f_ / r['us']:8.2f}x", flush=True)


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
    ap.add_argument("--hand", action="store_true",
                    help="only the gradient of every built-in beside a hand-written closed form "
                         "(4096 x 64 float32) and the per-call figure")
    ap.add_argument("--per-call", action="store_true",
                    help="only the per-call figure: gradient on [4, 2] against one torch op")
    ap.add_argument("--jax", action="store_true",
                    help="only jax.jit(jax.grad) beside our eager and fused gradient at 64 x 2, "
                         "1000 x 64 and 4096 x 64 (where jax imports, here or in --jax-python)")
    ap.add_argument("--jax-python", default=None,
                    help="a Python interpreter with jax installed, for --jax")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.hand or args.per_call or args.jax:
        print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}")
        if args.hand:
            hand_written_table(filter_=args.filter)
        if args.hand or args.per_call:
            per_call_table()
        if args.jax:
            jax_table(args.jax_python, filter_=args.filter)
        return
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
