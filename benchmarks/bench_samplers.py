"""Sampler steps per second: closed-form energy_and_gradient vs autograd of the same energy.

usage: python benchmarks/bench_samplers.py [--threads 1] [--steps 50] [--no-adaptation]

For DoubleWell and Rastrigin, 10^4 chains in 2-D and 10^3 chains in 64-D,
float32, MALA (one energy_and_gradient per step). The autograd baseline wraps
the same generated forward in a hand-written BaseEnergyFunction, whose
gradient is autograd: what a TorchEBM energy costs.

Then step-size adaptation (a few seconds): MALA on a 100-D Gaussian with
variances log-spaced from 0.01 to 100 (float64, 32 chains, 1000 kept steps),
untuned (the largest step of a grid that keeps acceptance above 0.2) against
``target_accept=0.57`` with ``adapt_mass=True`` (1000 warm-up steps, whose
gradients are counted). "min ESS / grad" is the smallest effective sample
size over the 100 dimensions divided by all gradient evaluations.
"""

import argparse
import os
import sys
import time

import torch

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, RastriginEnergy
from torchebm.samplers import MALA, effective_sample_size


class ViaAutograd(BaseEnergyFunction):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def rate(energy, chains, dim, steps):
    sampler = MALA(energy, step_size=1e-3, seed=0)
    x = torch.randn(chains, dim)
    sampler.sample(x=x, n_steps=3)
    t = time.perf_counter()
    sampler.sample(x=x, n_steps=steps)
    return steps / (time.perf_counter() - t)


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
    rows.append((f"adapted h={float(d.step_size.mean()):.3g} + mass", float(d.acceptance_rate.mean()),
                 float(effective_sample_size(traj).min()), chains * (steps + warmup)))
    return [(label, acc, ess, grads, ess / grads) for label, acc, ess, grads in rows]


def main():
    if not os.environ.get("TORCHEBM_BENCH_CHILD") and sys.platform == "linux":
        env = dict(os.environ, TORCHEBM_BENCH_CHILD="1", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
                   MALLOC_TRIM_THRESHOLD_=str(1 << 31))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-adaptation", action="store_true", help="skip the adaptation table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, MALA, float32")
    print(f"{'energy':12s} {'chains x dim':>13s} {'closed steps/s':>15s} {'autograd steps/s':>17s}"
          f" {'speed-up':>9s}")
    for name, cls in (("DoubleWell", DoubleWellEnergy), ("Rastrigin", RastriginEnergy)):
        for chains, dim in ((10_000, 2), (1_000, 64)):
            closed = rate(cls(), chains, dim, args.steps)
            auto = rate(ViaAutograd(cls()), chains, dim, args.steps)
            print(f"{name:12s} {f'{chains} x {dim}':>13s} {closed:15.0f} {auto:17.0f} "
                  f"{closed / auto:9.2f}", flush=True)
    if args.no_adaptation:
        return
    print("\nMALA on a 100-D Gaussian, variances 0.01..100, float64, 32 chains x 1000 steps")
    print(f"{'sampler':28s} {'acceptance':>10s} {'min ESS':>8s} {'gradients':>9s} "
          f"{'min ESS / grad':>15s}")
    rows = adaptation()
    for label, acc, ess, grads, per in rows:
        print(f"{label:28s} {acc:10.3f} {ess:8.0f} {grads:9d} {per:15.5f}")
    print(f"adapted / untuned: {rows[1][4] / rows[0][4]:.0f}x")


if __name__ == "__main__":
    main()
