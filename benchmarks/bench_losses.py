"""One training step (loss + backward into the parameters) per loss: compiled vs autograd.

usage: python benchmarks/bench_losses.py [--full] [--batch B] [--dim N] [--projections P]
                                         [--threads 1] [--repeat R]

For DoubleWell, Rastrigin and the Gaussian with trainable parameters, each
loss of torchebm.losses is computed on the compiled energy (closed-form
gradient and Hessian-vector product, graph only in the parameters) and on the
same formula written by hand as a BaseEnergyFunction (the losses then use
autograd: double backward for the sliced loss, as TorchEBM does). Times are
the median of ``--repeat`` steps, float32. Contrastive divergence is timed
without its sampler (``compute_loss`` on fixed negatives): the sampler's cost
is in bench_samplers.py. The default run is 1024 x 16 (about 15 s); ``--full``
is 4096 x 64 (about a minute, most of it autograd's exact score matching).
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

from torchebm.core import BaseEnergyFunction, DoubleWellEnergy, GaussianEnergy, RastriginEnergy
from torchebm.losses import (ContrastiveDivergence, DenoisingScoreMatching, ScoreMatching,
                             SlicedScoreMatching)


class HandDoubleWell(BaseEnergyFunction):
    def __init__(self):
        super().__init__()
        self.barrier_height = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.barrier_height * ((x**2 - self.b**2)**2).sum(-1)


class HandRastrigin(BaseEnergyFunction):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.a * x.shape[-1] + (x**2 - self.a * torch.cos(2 * math.pi * x)).sum(-1)


class HandGaussian(BaseEnergyFunction):
    def __init__(self, mean, cov):
        super().__init__()
        self.mean = nn.Parameter(mean.clone())
        self.cov = nn.Parameter(cov.clone())

    def forward(self, x):
        d = x - self.mean
        return 0.5 * ((d @ torch.linalg.inv(self.cov)) * d).sum(-1)


class _NoSampler:
    def sample(self, x, n_steps):
        return x


def energies(dim):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(dim, dim, generator=g)
    cov = a @ a.T / dim + torch.eye(dim)
    mean = torch.randn(dim, generator=g)
    return [("DoubleWell", DoubleWellEnergy(trainable=True), HandDoubleWell()),
            ("Rastrigin", RastriginEnergy(trainable=True), HandRastrigin()),
            ("Gaussian", GaussianEnergy(mean, cov, trainable=True), HandGaussian(mean, cov))]


def losses(energy):
    cd = ContrastiveDivergence(energy, _NoSampler(), k_steps=1, energy_reg_weight=0.0)
    return [("ContrastiveDivergence", lambda x, neg, v, eps: cd.compute_loss(x, neg)),
            ("SlicedScoreMatching", lambda x, neg, v, eps: SlicedScoreMatching(
                energy, n_projections=v.shape[0])(x, projections=v)),
            ("DenoisingScoreMatching", lambda x, neg, v, eps: DenoisingScoreMatching(
                energy, noise_scale=0.1)(x, noise=eps)),
            ("ScoreMatching (exact)", lambda x, neg, v, eps: ScoreMatching(energy)(x))]


def _once(energy, fn, args):
    energy.zero_grad(set_to_none=True)
    t = time.perf_counter()
    fn(*args).backward()
    return time.perf_counter() - t


def step_times(compiled, fc, hand, fa, args, repeat):
    """Median seconds per step of each, the two interleaved (a shared machine drifts)."""
    _once(compiled, fc, args)
    _once(hand, fa, args)
    tc, ta = [], []
    for _ in range(repeat):
        tc.append(_once(compiled, fc, args))
        ta.append(_once(hand, fa, args))
    return statistics.median(tc), statistics.median(ta)


def main():
    if not os.environ.get("TORCHEBM_BENCH_CHILD") and sys.platform == "linux":
        env = dict(os.environ, TORCHEBM_BENCH_CHILD="1", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
                   MALLOC_TRIM_THRESHOLD_=str(1 << 31))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--projections", type=int, default=5,
                    help="sliced score matching's n_projections (TorchEBM's default 5)")
    ap.add_argument("--full", action="store_true", help="4096 x 64, 7 repeats")
    args = ap.parse_args()
    if args.full:
        args.batch, args.dim, args.repeat = 4096, 64, 7
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    b, n = args.batch, args.dim
    x = torch.randn(b, n, generator=g)
    neg = torch.randn(b, n, generator=g)
    v = torch.where(torch.rand(args.projections, b, n, generator=g) < 0.5, -1.0, 1.0)
    eps = torch.randn(b, n, generator=g)
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, float32, "
          f"{b} x {n}, sliced: {args.projections} projection(s); ms per step (loss + backward)")
    print(f"{'energy':11s} {'loss':24s} {'compiled':>9s} {'autograd':>9s} {'speed-up':>9s}")
    for name, compiled, hand in energies(n):
        for (loss_name, fc), (_, fa) in zip(losses(compiled), losses(hand)):
            tc, ta = step_times(compiled, fc, hand, fa, (x, neg, v, eps), args.repeat)
            print(f"{name:11s} {loss_name:24s} {tc * 1e3:9.1f} {ta * 1e3:9.1f} {ta / tc:9.2f}",
                  flush=True)
    # per-sample parameter gradients: one vmap'd pass vs one backward per sample
    print(f"\nper-sample dE/dtheta, {min(b, 256)} samples (parameter_gradient vs a backward "
          f"per sample)")
    for name, compiled, hand in energies(n):
        xs = x[:min(b, 256)]
        compiled.parameter_gradient(xs[:2])       # the first torch.func call sets up (seconds)
        t = time.perf_counter()
        compiled.parameter_gradient(xs)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(xs.shape[0]):
            torch.autograd.grad(hand(xs[i:i + 1]).sum(), list(hand.parameters()))
        ta = time.perf_counter() - t
        print(f"{name:11s} {tc * 1e3:9.1f} ms {ta * 1e3:9.1f} ms {ta / tc:9.2f}", flush=True)


if __name__ == "__main__":
    main()
