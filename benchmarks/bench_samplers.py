"""Sampler steps per second: eager, fused (``compile=True``), autograd, the memory floor;
chains across gloo processes; the fused gradient beside JAX's ``jit(grad)``.

usage: python benchmarks/bench_samplers.py [--threads 1] [--quick] [--only steps,gloo,jax,adapt]
       [--device cuda] [--clock wall|cpu]
       [--samplers langevin,mala,hmc] [--energies DoubleWell,Rastrigin,Gaussian]
       [--sizes 64x2,10000x2,1000x64,65536x16] [--jax-python /path/to/venv/bin/python]

steps: Langevin, MALA and HMC (5 leapfrog steps) on DoubleWell, Rastrigin and the
    Gaussian (a random SPD covariance) at each chains x dim, float32, final states
    only. Columns, in steps per second (fastest of 3 interleaved rounds after a
    warm-up run that compiles): ``eager`` (the samplers as they run by default, closed-form
    gradient), ``fused`` (``sample(..., compile=True)``), ``autograd`` (the same
    energy's generated forward in a hand-written ``BaseEnergyFunction``: a TorchEBM
    energy, gradient by autograd, eager), and ``floor``: one read and one write of
    the state per step (``y.copy_(x)``), the least any step can cost. ``noise`` is
    the cost of the step's ``torch.randn`` alone, in the same unit. Eager steps draw
    with ``torch.randn`` (``rng="torch"``), fused steps compute Philox noise in the
    graph (``rng="philox"``, the default with ``compile=True``).
gloo: MALA on DoubleWell over 1, 2 and 4 processes (``torch.multiprocessing``, gloo,
    one thread each): strong scaling (the same 16384 x 16 chains split over the
    ranks) and weak scaling (16384 x 16 chains per rank), gathered at the end.
jax: ``gradient`` of the compiled energy (``energy.compile()``, fused closed form) and
    ``jax.jit(jax.grad(sum of energies))`` of the same formula written in jax.numpy,
    4096 x 64 float32, microseconds per call: the fastest of interleaved rounds (JAX runs
    in a worker process pinned to one core, timed between torch's rounds, which run
    pinned to the same core, so that the machine's load hits both alike). ``hand`` is ``torch.compile`` of the gradient
    written by hand, to separate Inductor's code from the call path. JAX is not a
    dependency: the column is printed when ``import jax`` works, here or in the
    interpreter given by ``--jax-python`` (e.g. a separate venv with jax installed).
adapt: step-size adaptation: MALA on a 100-D Gaussian with variances log-spaced
    from 0.01 to 100 (float64, 32 chains, 1000 kept steps), untuned (the largest
    step of a grid that keeps acceptance above 0.2) against ``target_accept=0.57``
    with ``adapt_mass=True`` (1000 warm-up steps, whose gradients are counted);
    "min ESS / grad" is the smallest ESS over the dimensions per gradient evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from torchebm.core import (AckleyEnergy, BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy,
                           HarmonicEnergy, RastriginEnergy, RosenbrockEnergy)
from torchebm.samplers import MALA, HamiltonianMonteCarlo, LangevinDynamics, effective_sample_size

import bench as _bench     # a sibling script: benchmarks/ is sys.path[0]


class ViaAutograd(BaseEnergyFunction):
    """A generated forward behind a hand-written energy: its gradient is autograd."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def make_energy(name, dim):
    if name == "DoubleWell":
        return DoubleWellEnergy()
    if name == "Rastrigin":
        return RastriginEnergy()
    if name == "Gaussian":
        a = torch.randn(dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return GaussianEnergy(torch.zeros(dim, dtype=torch.float64), a @ a.T / dim + torch.eye(dim))
    raise ValueError(f"unknown energy {name!r}; choose DoubleWell, Rastrigin or Gaussian")


SAMPLERS = {
    "langevin": lambda e: LangevinDynamics(e, step_size=1e-3, seed=0),
    "mala": lambda e: MALA(e, step_size=1e-3, seed=0),
    "hmc": lambda e: HamiltonianMonteCarlo(e, step_size=1e-2, n_leapfrog_steps=5, seed=0),
}


#: the clock of the steps and jax tables (``--clock``): wall time, or this process's CPU
#: time, which on a shared machine leaves out the time other jobs hold the core
CLOCK = time.perf_counter


def _sync(x):
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return x


def _fastest_rate(run, steps, repeats=3):
    run(steps)                                 # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t = CLOCK()
        run(steps)
        times.append(CLOCK() - t)
    return steps / min(times)


def steps_table(args):
    print(f"\nsteps per second, float32, final states only (fastest of 3 interleaved rounds); floor = one "
          f"read + one write of the state; noise = torch.randn of the state alone")
    print(f"{'sampler':9s} {'energy':10s} {'chains x dim':>13s} {'eager':>9s} {'fused':>9s} "
          f"{'autograd':>9s} {'floor':>9s} {'noise':>9s} {'fused/eager':>11s} "
          f"{'floor/fused':>11s} {'eager/autograd':>14s}")
    for size in args.sizes.split(","):
        chains, dim = (int(v) for v in size.split("x"))
        budget = 2e6 if args.quick else 8e6        # chain-dimensions per timed run
        steps = int(max(8, min(400, budget / (chains * dim)))) // 8 * 8
        x = torch.randn(chains, dim, generator=torch.Generator().manual_seed(1)).to(args.device)
        y = torch.empty_like(x)
        floor = _fastest_rate(lambda k: ([y.copy_(x) for _ in range(k)], _sync(x)), steps)
        noise = _fastest_rate(lambda k: ([torch.randn(x.shape, device=x.device)
                                         for _ in range(k)], _sync(x)), steps)
        for sname in args.samplers.split(","):
            for ename in args.energies.split(","):
                energy = make_energy(ename, dim).to(args.device)
                runs = {}
                for mode in ("eager", "fused", "autograd"):
                    e = ViaAutograd(energy) if mode == "autograd" else energy
                    sampler = SAMPLERS[sname](e)
                    runs[mode] = (lambda s, m: lambda k: _sync(s.sample(
                        x=x, n_steps=k, compile=m == "fused", progress=False)))(sampler, mode)
                    runs[mode](steps)                          # warm-up (and compilation)
                times = {mode: [] for mode in runs}
                for _ in range(3):                             # interleaved rounds
                    for mode, run in runs.items():
                        t = CLOCK()
                        run(steps)
                        times[mode].append(CLOCK() - t)
                rates = {mode: steps / min(t) for mode, t in times.items()}
                print(f"{sname:9s} {ename:10s} {size:>13s} {rates['eager']:9.0f} "
                      f"{rates['fused']:9.0f} {rates['autograd']:9.0f} {floor:9.0f} "
                      f"{noise:9.0f} {rates['fused'] / rates['eager']:11.2f} "
                      f"{floor / rates['fused']:11.1f} "
                      f"{rates['eager'] / rates['autograd']:14.2f}", flush=True)


def _gloo_worker(rank, world, folder, per_rank, steps, dim):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=world)
    sampler = MALA(DoubleWellEnergy(), step_size=1e-3, seed=0)
    total = per_rank * world
    sampler.sample(None, dim, 2, total, distributed=True, progress=False)
    dist.barrier()
    t = time.perf_counter()
    sampler.sample(None, dim, steps, total, distributed=True, progress=False)
    dist.barrier()
    if rank == 0:
        with open(os.path.join(folder, "time"), "w") as f:
            f.write(str(time.perf_counter() - t))
    dist.destroy_process_group()


def gloo_table(args):
    import torch.multiprocessing as mp
    chains, dim, steps = 16384, 16, 20 if args.quick else 50
    print(f"\nMALA on DoubleWell over gloo processes (one thread each; this machine has "
          f"{os.cpu_count()} cores), {steps} steps, final states gathered on every rank")
    print(f"{'scaling':8s} {'processes':>9s} {'chains':>15s} {'steps/s':>9s} "
          f"{'chain-steps/s':>14s} {'speed-up':>9s}")
    for kind in ("strong", "weak"):
        base = None
        for world in (1, 2, 4):
            per_rank = chains // world if kind == "strong" else chains
            with tempfile.TemporaryDirectory() as folder:
                mp.spawn(_gloo_worker, args=(world, folder, per_rank, steps, dim), nprocs=world)
                with open(os.path.join(folder, "time")) as f:
                    seconds = float(f.read())
            rate = steps / seconds
            work = rate * per_rank * world
            base = base or work
            print(f"{kind:8s} {world:9d} {f'{per_rank * world} x {dim}':>15s} {rate:9.1f} "
                  f"{work:14.3g} {work / base:9.2f}", flush=True)


# the built-ins' formulas in jax.numpy, shared with bench.py (this directory is on sys.path
# when a benchmark runs as a script); the parameter-free ones, which the JAX job defines alone
JAX_FORMULAS = {name: _bench.JAX_FORMULAS[name]
                for name in ("DoubleWell", "Harmonic", "Rosenbrock", "Rastrigin", "Ackley")}

JAX_SCRIPT = r"""
import json, os, sys, time
if hasattr(os, "sched_setaffinity"):          # one core, as torch's one thread
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import jax, jax.numpy as jnp
formulas, shape = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
clock = getattr(time, sys.argv[3])
x = jax.random.normal(jax.random.PRNGKey(0), shape, dtype=jnp.float32)
grads = {}
for name, src in formulas.items():
    energy = eval("lambda x: " + src)
    grads[name] = jax.jit(jax.grad(lambda x, energy=energy: jnp.sum(energy(x))))
    grads[name](x).block_until_ready()
print(json.dumps({"version": jax.__version__}), flush=True)
for line in sys.stdin:                        # "name calls": seconds per call of one round
    name, calls = line.split()
    g = grads[name]
    t = clock()
    for _ in range(int(calls)):
        r = g(x)
    r.block_until_ready()
    print(json.dumps((clock() - t) / int(calls)), flush=True)
"""


class _JaxWorker:
    """A JAX interpreter kept running, timing ``jit(grad)`` rounds on request, so that its
    rounds interleave with torch's in one run (the machine's load then hits both)."""

    def __init__(self, python, shape):
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                          " --xla_cpu_multi_thread_eigen=false").strip())
        self.proc = subprocess.Popen([python, "-c", JAX_SCRIPT, json.dumps(JAX_FORMULAS),
                                      json.dumps(list(shape)), CLOCK.__name__],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.version = json.loads(self.proc.stdout.readline())["version"]

    def time(self, name, calls):
        self.proc.stdin.write(f"{name} {calls}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _jax_worker(args, shape):
    python = args.jax_python
    if python is None:
        try:
            import jax  # noqa: F401
            python = sys.executable
        except ImportError:
            return None
    try:
        return _JaxWorker(python, shape)
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        print(f"(JAX column skipped: {python} could not run it: {err})")
        return None


def jax_table(args):
    shape = (4096, 64)
    rounds, calls = (7, 20) if args.quick else (15, 50)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    cls = {"DoubleWell": DoubleWellEnergy, "Harmonic": HarmonicEnergy,
           "Rosenbrock": RosenbrockEnergy, "Rastrigin": RastriginEnergy, "Ackley": AckleyEnergy}
    jax_worker = _jax_worker(args, shape)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if cores:                                  # torch on the core JAX is pinned to
        os.sched_setaffinity(0, {min(cores)})
    try:
        _jax_rows(args, x, cls, jax_worker, rounds, calls)
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
        if jax_worker is not None:
            jax_worker.close()


def _jax_rows(args, x, cls, jax_worker, rounds, calls):
    head = "jax jit(grad)" if jax_worker is None else f"jax {jax_worker.version} jit(grad)"
    print(f"\ngradient at {x.shape[0]} x {x.shape[1]} float32, microseconds per call (fastest of "
          f"{rounds} interleaved rounds of {calls} calls); hand = torch.compile of the "
          f"gradient written by hand (DoubleWell, Harmonic)")
    print(f"{'energy':11s} {'closed form':>12s} {'fused':>9s} {'hand':>9s} {'autograd':>9s} "
          f"{head:>22s} {'fused/jax':>9s}")
    hand = {"DoubleWell": torch.compile(lambda x: 8.0 * x * (x * x - 1.0), fullgraph=True),
            "Harmonic": torch.compile(lambda x: 1.0 * x, fullgraph=True)}
    for name, c in cls.items():
        eager, fused = c(), c().compile()
        xg = x.clone().requires_grad_(True)

        def autograd():
            torch.autograd.grad(eager(xg).sum(), xg)

        fns = {"closed": lambda: eager.gradient(x), "fused": lambda: fused.gradient(x),
               "autograd": autograd}
        if name in hand:
            fns["hand"] = (lambda h: lambda: h(x))(hand[name])
        if jax_worker is not None:
            jax_worker.time(name, 2)
        for fn in fns.values():
            fn()
        times = {label: [] for label in fns}
        times["jax"] = []
        for _ in range(rounds):
            for label, fn in fns.items():
                t = CLOCK()
                for _ in range(calls):
                    fn()
                times[label].append((CLOCK() - t) / calls)
            if jax_worker is not None:
                times["jax"].append(jax_worker.time(name, calls))
        row = {label: min(t) * 1e6 if t else None for label, t in times.items()}
        jx = row["jax"]
        jax_text = "-" if jx is None else f"{jx:.1f}"
        ratio = "-" if jx is None else f"{row['fused'] / jx:.2f}"
        hand_text = "-" if row.get("hand") is None else f"{row['hand']:.1f}"
        print(f"{name:11s} {row['closed']:12.1f} {row['fused']:9.1f} {hand_text:>9s} "
              f"{row['autograd']:9.1f} {jax_text:>22s} {ratio:>9s}", flush=True)
    if jax_worker is None:
        print("(no JAX column: jax does not import here; pass --jax-python PATH of an "
              "interpreter that has it)")


def adaptation(chains=32, steps=1000, warmup=1000):
    """Rows ``(label, acceptance, min ESS, gradients, min ESS per gradient)``."""
    from torchebm.symbolic import from_expression
    v = torch.logspace(-2, 2, 100, dtype=torch.float64)
    energy = from_expression("sum(0.5*x**2/v)", v=v)
    x0 = torch.randn(chains, 100, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1)) * v.sqrt()
    rows, best = [], None
    for h in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2):
        traj, d = MALA(energy, step_size=h, seed=0).sample(
            x=x0, n_steps=steps, return_trajectory=True, return_diagnostics=True)
        acc = float(d.acceptance_rate.mean())
        if acc > 0.2:
            best = (f"untuned h={h:g}", acc, float(effective_sample_size(traj).min()),
                    chains * steps)
    rows.append(best)
    sampler = MALA(energy, step_size=1e-3, seed=0, target_accept=0.57, n_warmup=warmup,
                   adapt_mass=True)
    traj, d = sampler.sample(x=x0, n_steps=steps, return_trajectory=True,
                             return_diagnostics=True)
    rows.append((f"adapted h={float(d.step_size.mean()):.3g} + mass",
                 float(d.acceptance_rate.mean()), float(effective_sample_size(traj).min()),
                 chains * (steps + warmup)))
    return [(label, acc, ess, grads, ess / grads) for label, acc, ess, grads in rows]


def adapt_table(args):
    print("\nMALA on a 100-D Gaussian, variances 0.01..100, float64, 32 chains x 1000 steps")
    print(f"{'sampler':28s} {'acceptance':>10s} {'min ESS':>8s} {'gradients':>9s} "
          f"{'min ESS / grad':>15s}")
    rows = adaptation()
    for label, acc, ess, grads, per in rows:
        print(f"{label:28s} {acc:10.3f} {ess:8.0f} {grads:9d} {per:15.5f}")
    print(f"adapted / untuned: {rows[1][4] / rows[0][4]:.0f}x")


def main():
    if not os.environ.get("TORCHEBM_BENCH_CHILD") and sys.platform == "linux":
        env = dict(os.environ, TORCHEBM_BENCH_CHILD="1", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
                   MALLOC_TRIM_THRESHOLD_=str(1 << 31))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer steps per timed run")
    ap.add_argument("--only", default="steps,gloo,jax,adapt")
    ap.add_argument("--samplers", default="langevin,mala,hmc")
    ap.add_argument("--energies", default="DoubleWell,Rastrigin,Gaussian")
    ap.add_argument("--sizes", default="64x2,10000x2,1000x64,65536x16")
    ap.add_argument("--device", default="cpu", help="device of the chains (steps table)")
    ap.add_argument("--jax-python", default=None,
                    help="a Python interpreter with jax installed, for the JAX column")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="steps and jax tables: wall time, or the process's CPU time "
                         "(time.process_time; JAX's worker times its own), which leaves out "
                         "the time other jobs hold a shared core (CPU devices only)")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "cpu":
        if args.device != "cpu":
            ap.error("--clock cpu times CPU work; a GPU's kernels run asynchronously, use wall")
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    print(f"clock: {'wall time' if args.clock == 'wall' else 'process CPU time'}")
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}")
    tables = {"steps": steps_table, "gloo": gloo_table, "jax": jax_table, "adapt": adapt_table}
    for name in args.only.split(","):
        tables[name](args)


if __name__ == "__main__":
    main()
