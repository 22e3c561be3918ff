"""MCMC diagnostics over many chains: split R-hat and effective sample size.

Own implementation, in torch, of the standard estimators (ArviZ computes the
same quantities but pulls in xarray and pandas; these few lines avoid that
dependency for samplers whose chains already live in one tensor):

* split R-hat: Gelman et al., Bayesian Data Analysis (3rd ed., 2013), eq. 11.4,
  each chain split in halves;
* effective sample size: autocorrelations from all chains (FFT), summed over
  Geyer's initial monotone sequence of paired lags (Geyer 1992; the estimator
  of Stan's reference manual, "Effective sample size").

Shapes: ``samples`` is ``[chains, draws, dim]``; results are ``[dim]``.

Undefined cases are NaN, as in Stan (``stan::analyze::compute_effective_sample_size``
and ``compute_potential_scale_reduction``): a dimension where any chain has a
non-finite draw (NaN, inf), or where every chain is constant, has ESS and
R-hat NaN. Estimating them there would report the largest possible ESS for
chains that never moved or diverged.
"""

from __future__ import annotations

import torch

from ..errors import ArgumentError


def split_rhat(samples: torch.Tensor) -> torch.Tensor:
    """Split R-hat per dimension of ``samples [chains, draws, dim]`` -> ``[dim]``.

    Values near 1 (below about 1.01, Vehtari et al. 2021) mean the chains agree.
    NaN where any chain has a non-finite draw or every chain is constant.

    Raises:
        ValueError: not ``[chains, draws, dim]``, no chain or no dimension, or fewer
            than 4 draws per chain.
    """
    s = _as_float64(samples)
    draws = s.shape[1]
    if draws < 4:
        raise ArgumentError(f"split R-hat needs at least 4 draws per chain, got {draws}")
    half = draws // 2
    undefined = _undefined(s)
    s = torch.cat([s[:, :half], s[:, draws - half:]], dim=0)        # [2 chains, half, dim]
    n = s.shape[1]                                                   # draws per half
    chain_mean = s.mean(1)
    chain_var = s.var(1, unbiased=True)
    between = n * chain_mean.var(0, unbiased=True)
    within = chain_var.mean(0)
    var_plus = (n - 1) / n * within + between / n
    rhat = torch.sqrt(var_plus / within)
    return torch.where(undefined, torch.full_like(rhat, torch.nan), rhat)


def effective_sample_size(samples: torch.Tensor) -> torch.Tensor:
    """Effective sample size per dimension of ``samples [chains, draws, dim]`` -> ``[dim]``.

    NaN where any chain has a non-finite draw or every chain is constant.

    Raises:
        ValueError: not ``[chains, draws, dim]``, no chain or no dimension, or fewer
            than 4 draws per chain.
    """
    s = _as_float64(samples)
    m, n, _ = s.shape
    if n < 4:
        raise ArgumentError(f"the effective sample size needs at least 4 draws per chain, got {n}")
    undefined = _undefined(s)
    s = torch.where(undefined, torch.zeros_like(s), s)     # keep NaN out of the FFT
    centred = s - s.mean(1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=1)
    acov = torch.fft.irfft(f * f.conj(), n=size, dim=1)[:, :n] / n   # [chains, lag, dim]
    chain_var = acov[:, 0] * n / (n - 1)
    within = chain_var.mean(0)
    var_plus = within * (n - 1) / n
    if m > 1:
        var_plus = var_plus + s.mean(1).var(0, unbiased=True)
    rho = 1 - (within - acov.mean(0)) / var_plus                      # [lag, dim]
    rho[0] = 1.0
    # Geyer: sums of adjacent pairs, kept while positive, made monotone
    pairs = rho[: n - n % 2].reshape(-1, 2, rho.shape[-1]).sum(1)      # [lag/2, dim]
    positive = torch.cumprod((pairs > 0).to(pairs.dtype), dim=0)
    pairs = pairs * positive
    pairs = torch.cummin(torch.where(positive > 0, pairs, torch.full_like(pairs, torch.inf)),
                         dim=0).values
    pairs = torch.where(positive > 0, pairs, torch.zeros_like(pairs))
    tau = -1 + 2 * pairs.sum(0)
    ess = m * n / torch.clamp(tau, min=1.0 / torch.log10(torch.tensor(float(m * n))))
    return torch.where(undefined, torch.full_like(ess, torch.nan), ess)


def _undefined(s):
    """``[dim]`` True where any draw is non-finite or every chain is constant."""
    nonfinite = ~torch.isfinite(s).all(1).all(0)
    constant = (s == s[:, :1]).all(1).all(0)
    return nonfinite | constant


def _as_float64(samples):
    if samples.dim() != 3:
        raise ArgumentError(f"samples must be [chains, draws, dim], got shape {tuple(samples.shape)}")
    if samples.shape[0] == 0 or samples.shape[2] == 0:
        raise ArgumentError(f"samples [chains, draws, dim] of shape {tuple(samples.shape)} hold no "
                         f"chain or no dimension; give at least one of each")
    return samples.detach().to(torch.float64)
