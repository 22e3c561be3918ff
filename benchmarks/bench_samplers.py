"""Sampler steps per second: closed-form energy_and_gradient vs autograd of the same energy.

usage: python benchmarks/bench_samplers.py [--threads 1] [--steps 50]

For DoubleWell and Rastrigin, 10^4 chains in 2-D and 10^3 chains in 64-D,
float32, MALA (one energy_and_gradient per step). The autograd baseline wraps
the same generated forward in a hand-written BaseEnergyFunction, whose
gradient is autograd: what a TorchEBM energy costs.
"""

import argparse
import os
import sys
import time

import torch

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, RastriginEnergy
from torchebm.samplers import MALA


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


def main():
    if not os.environ.get("TORCHEBM_BENCH_CHILD") and sys.platform == "linux":
        env = dict(os.environ, TORCHEBM_BENCH_CHILD="1", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
                   MALLOC_TRIM_THRESHOLD_=str(1 << 31))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
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


if __name__ == "__main__":
    main()
