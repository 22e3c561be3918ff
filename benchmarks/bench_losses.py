"""One training step (loss + backward into the parameters) per loss: compiled vs autograd.

usage: python benchmarks/bench_losses.py [--full] [--batch B] [--dim N] [--projections P]
                                         [--threads 1] [--repeat R] [--only cd] [--rounds K]

For DoubleWell, Rastrigin and the Gaussian with trainable parameters, each
loss of torchebm.losses is computed on the compiled energy (closed-form
gradient and Hessian-vector product, graph only in the parameters) and on the
same formula written by hand as a BaseEnergyFunction (the losses then use
autograd: double backward for the sliced loss, as TorchEBM does). Times are
the median of ``--repeat`` steps, float32. Contrastive divergence is timed
without its sampler (``compute_loss`` on fixed negatives): the sampler's cost
is in bench_samplers.py. Then contrastive divergence's parameter gradient alone, in
CPU time (closed form eager and fused by ``energy.compile()``, against autograd of
the hand-written formula eager and through ``torch.compile``; ``--only cd`` runs
just this table, ``--rounds`` times) and per-sample ``parameter_gradient``
(closed form vs torch.func). The default run is 1024 x 16 (about 15 s); ``--full``
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
    ap.add_argument("--only", choices=["cd"], help="only contrastive divergence's "
                    "parameter-gradient table")
    ap.add_argument("--rounds", type=int, default=2,
                    help="times the parameter-gradient table is repeated (compiled once)")
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
    if args.only == "cd":
        cd_parameter_gradient(x, neg, n, 3 * args.repeat, args.rounds)
        return
    print(f"{'energy':11s} {'loss':24s} {'compiled':>9s} {'autograd':>9s} {'speed-up':>9s}")
    for name, compiled, hand in energies(n):
        for (loss_name, fc), (_, fa) in zip(losses(compiled), losses(hand)):
            tc, ta = step_times(compiled, fc, hand, fa, (x, neg, v, eps), args.repeat)
            print(f"{name:11s} {loss_name:24s} {tc * 1e3:9.1f} {ta * 1e3:9.1f} {ta / tc:9.2f}",
                  flush=True)
    cd_parameter_gradient(x, neg, n, 3 * args.repeat, args.rounds)
    per_sample(x, n, b)


def _grad_step(energy, loss_fn):
    def run():
        energy.zero_grad(set_to_none=True)
        loss_fn().backward()
    return run


def _median_ms(fns, repeat, clock=time.perf_counter):
    """Median milliseconds of each of ``fns``, interleaved (a shared machine drifts)."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for k, f in enumerate(fns):
            t = clock()
            f()
            times[k].append(clock() - t)
    return [statistics.median(t) * 1e3 for t in times]


def cd_parameter_gradient(x, neg, n, repeat, rounds=1):
    """CD's parameter gradient ``mean dE/dtheta(x) - mean dE/dtheta(neg)`` with its loss
    (loss + backward into the parameters), in CPU time (``time.process_time``; one
    thread): the closed form (ContrastiveDivergence on a compiled energy: one generated
    pass per batch, no graph) in eager mode and fused (``energy.compile()``: one Inductor
    kernel per batch), against autograd of the hand-written formula (TorchEBM's way) in
    eager mode and through ``torch.compile`` of its forward (AOTAutograd compiles the
    forward and the backward). ``rounds`` repeats the whole table (compiled once)."""
    print(f"\ncontrastive divergence's parameter gradient (loss + backward, no sampler), "
          f"CPU ms, median of {repeat} interleaved steps; speed-ups over autograd")
    print(f"{'energy':11s} {'closed':>8s} {'fused':>8s} {'autograd':>9s} {'autograd':>9s}   "
          f"{'fused vs':>9s} {'fused vs':>9s} {'closed vs':>9s}")
    print(f"{'':11s} {'eager':>8s} {'':>8s} {'eager':>9s} {'compiled':>9s}   "
          f"{'eager':>9s} {'compiled':>9s} {'eager':>9s}")
    rows = []
    for (name, eager, hand), (_, fused, hand2) in zip(energies(n), energies(n)):
        fused.compile()
        hand_compiled = torch.compile(hand2)
        cd_eager = ContrastiveDivergence(eager, _NoSampler(), k_steps=1, energy_reg_weight=0.0)
        cd_fused = ContrastiveDivergence(fused, _NoSampler(), k_steps=1, energy_reg_weight=0.0)
        rows.append((name, [
            _grad_step(eager, lambda cd=cd_eager: cd.compute_loss(x, neg)),
            _grad_step(fused, lambda cd=cd_fused: cd.compute_loss(x, neg)),
            _grad_step(hand, lambda e=hand: e(x).mean() - e(neg).mean()),
            _grad_step(hand2, lambda e=hand_compiled: e(x).mean() - e(neg).mean())]))
    for _ in range(rounds):
        for name, fns in rows:
            tc, tf, ta, tt = _median_ms(fns, repeat, time.process_time)
            print(f"{name:11s} {tc:8.2f} {tf:8.2f} {ta:9.2f} {tt:9.2f}   "
                  f"{ta / tf:9.2f} {tt / tf:9.2f} {ta / tc:9.2f}", flush=True)


def per_sample(x, n, b):
    """Per-sample ``dE/dtheta``: the closed form (``parameter_gradient``), torch.func's
    vmap(grad) of the compiled energy's forward, and one backward per sample."""
    from torchebm.core import BaseEnergyFunction
    m = min(b, 256)
    xs = x[:m]
    print(f"\nper-sample dE/dtheta, {m} samples, ms: closed form, torch.func vmap(grad), "
          f"a backward per sample")
    print(f"{'energy':11s} {'closed':>9s} {'vmap':>9s} {'loop':>9s} {'vs vmap':>9s}")
    for name, compiled, hand in energies(n):
        BaseEnergyFunction.parameter_gradient(compiled, xs[:2])   # torch.func sets up
        tc, tv = _median_ms([lambda: compiled.parameter_gradient(xs),
                             lambda: BaseEnergyFunction.parameter_gradient(compiled, xs)], 5)
        t = time.perf_counter()
        for i in range(m):
            torch.autograd.grad(hand(xs[i:i + 1]).sum(), list(hand.parameters()))
        tl = (time.perf_counter() - t) * 1e3
        print(f"{name:11s} {tc:9.2f} {tv:9.2f} {tl:9.2f} {tv / tc:9.2f}", flush=True)


if __name__ == "__main__":
    main()
