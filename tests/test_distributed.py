"""Chains across processes (``sample(..., distributed=True)``) and losses under
DistributedDataParallel: two gloo processes on the CPU, spawned by
``torch.multiprocessing``.

Each rank saves what it got; the parent process checks it against computations
made here, in one process: split R-hat and ESS of the gathered chains (the same
functions on the same chains), the law of the samples (a standard Gaussian,
tolerances of 5 standard errors from the measured ESS), and for training a
single-process run of the same loss on the whole batch (DDP averages the ranks'
gradients of equal halves, which is the gradient of the whole batch's mean).
"""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchebm.core import HarmonicEnergy
from torchebm.samplers import MALA, effective_sample_size, split_rhat

CHAINS, STEPS, THIN, WORLD = 65, 400, 2, 2       # 65: shares of 33 and 32 chains
T = torch.float64


def _energy():
    from torchebm.symbolic import from_expression
    return from_expression("sum(0.5*((x - mu)*exp(-log_s))**2)", mu=torch.zeros(2),
                           log_s=torch.zeros(2), trainable=True)


def _data():
    return 1.0 + 2.0 * torch.randn(64, 2, dtype=T, generator=torch.Generator().manual_seed(7))


def _train(model_loss, data, steps=5):
    """SGD on ``model_loss(batch)``; returns the parameters after ``steps`` updates."""
    opt = torch.optim.SGD(model_loss.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model_loss(data).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model_loss.named_parameters()}


class _LossModule(torch.nn.Module):
    """The loss as a module's forward, so that DDP sees the forward pass."""

    def __init__(self, energy):
        super().__init__()
        from torchebm.losses import ScoreMatching
        self.energy = energy
        self.loss = ScoreMatching(energy)

    def forward(self, x):
        return self.loss(x)


def _worker(rank, world, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=world)
    try:
        sampler = MALA(HarmonicEnergy(), step_size=0.8, seed=3)
        traj, diag = sampler.sample(None, 2, STEPS, CHAINS, THIN, True, True, distributed=True)
        own = sampler.sample(None, 2, STEPS, CHAINS, THIN, True, distributed=True, gather=False)
        final = sampler.sample(None, 2, STEPS, CHAINS, THIN, distributed=True)
        from torch.nn.parallel import DistributedDataParallel
        torch.manual_seed(0)
        ddp = DistributedDataParallel(_LossModule(_energy()))
        half = _data().chunk(world)[rank]
        params = _train(ddp, half)
        torch.save({"traj": traj, "own": own, "final": final, "rhat": diag.rhat, "ess": diag.ess,
                    "mean": diag["mean"], "var": diag["var"], "n_chains": diag.n_chains,
                    "acceptance_rate": diag.acceptance_rate,
                    "chain_acceptance": diag.chain_acceptance,
                    "params": {k.removeprefix("module."): v for k, v in params.items()}},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(WORLD, str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
def test_gathered_chains_have_every_rank_in_rank_order(ranks):
    r0, r1 = ranks
    assert r0["traj"].shape == (CHAINS, STEPS // THIN, 2) and r0["n_chains"] == CHAINS
    assert r0["final"].shape == (CHAINS, 2)
    torch.testing.assert_close(r0["traj"], r1["traj"], rtol=0, atol=0)   # same on every rank
    assert r0["own"].shape[0] == 33 and r1["own"].shape[0] == 32
    # each rank's own share (same seed: the same chains) sits at its place in the gathered set
    torch.testing.assert_close(torch.cat([r0["own"], r1["own"]]), r0["traj"], rtol=0, atol=0)
    torch.testing.assert_close(r0["final"], r0["traj"][:, -1], rtol=0, atol=0)
    # independent streams: the ranks' chains are not copies of each other
    assert not torch.allclose(r0["own"][:32], r1["own"])


@pytest.mark.slow
def test_diagnostics_are_over_all_chains(ranks):
    r0 = ranks[0]
    traj = r0["traj"]
    kept = traj[:, traj.shape[1] // 2:]
    torch.testing.assert_close(r0["rhat"], split_rhat(kept))
    torch.testing.assert_close(r0["ess"], effective_sample_size(kept))
    torch.testing.assert_close(r0["mean"], traj.mean(0))
    torch.testing.assert_close(r0["var"], traj.var(0))
    torch.testing.assert_close(r0["acceptance_rate"].mean(), r0["chain_acceptance"].mean())
    assert r0["chain_acceptance"].shape == (CHAINS,)


@pytest.mark.slow
def test_gathered_samples_follow_the_target_law(ranks):
    """HarmonicEnergy (k = 1) is N(0, I): the checks of the single-process tests."""
    kept = ranks[0]["traj"][:, 50:]
    ess = float(effective_sample_size(kept).min())
    assert ess > 1000
    flat = kept.reshape(-1, 2)
    assert (flat.mean(0).abs() <= 5 * math.sqrt(1 / ess)).all()
    assert ((flat.var(0) - 1).abs() <= 5 * math.sqrt(2 / ess)).all()
    assert float(split_rhat(kept).max()) < 1.05


@pytest.mark.slow
def test_ddp_training_matches_one_process_on_the_whole_batch(ranks):
    torch.manual_seed(0)
    single = _train(_LossModule(_energy()), _data())
    assert set(single) == set(ranks[0]["params"]) and single
    for name, value in single.items():
        torch.testing.assert_close(ranks[0]["params"][name], ranks[1]["params"][name],
                                   rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-12, atol=1e-12)
    # the parameters moved towards the data's mean 1 and log-scale log 2
    assert float(single["energy.mu"].mean()) > 0.1


def test_distributed_without_a_process_group_is_refused():
    with pytest.raises(RuntimeError, match="init_process_group"):
        MALA(HarmonicEnergy(), seed=0).sample(None, 2, 3, 4, distributed=True)
