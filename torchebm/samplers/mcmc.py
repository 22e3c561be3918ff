"""Langevin, MALA and HMC samplers on any ``BaseEnergyFunction``.

Each step evaluates the energy and its gradient once, through
``energy.energy_and_gradient`` (closed form and shared for compiled
energies, autograd for hand-written ones). All chains run together as one
batch ``[chains, dim]`` on the energy's device.

References:
    G. O. Roberts, R. L. Tweedie, Exponential convergence of Langevin
    distributions and their discrete approximations, Bernoulli 2 (1996).
    R. M. Neal, MCMC using Hamiltonian dynamics, Handbook of MCMC (2011).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from ..core.base import BaseEnergyFunction
from .diagnostics import effective_sample_size, split_rhat


@dataclass
class Diagnostics:
    """What a run measured. Shapes: per step ``[steps]``, per dimension ``[dim]``."""
    mean_energy: torch.Tensor                       # mean energy over chains, per step
    acceptance_rate: torch.Tensor | None = None     # fraction of chains accepted, per step
    ess: torch.Tensor | None = None                 # effective sample size per dimension
    rhat: torch.Tensor | None = None                # split R-hat per dimension
    chain_acceptance: torch.Tensor | None = None    # fraction of steps accepted, per chain
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        if len(self.mean_energy) == 0:
            return "no steps were run"
        lines = [f"mean energy: first {self.mean_energy[0]:.4g}, last {self.mean_energy[-1]:.4g}"]
        if self.acceptance_rate is not None:
            lines.append(f"acceptance rate: {float(self.acceptance_rate.mean()):.3f}")
        if self.chain_acceptance is not None:
            stuck = int((self.chain_acceptance == 0).sum())
            if stuck:
                lines.append(f"warning: {stuck} chains never accepted a move (step size too "
                             f"large where they started?); their states are their start")
        if self.ess is not None:
            lines.append(f"effective sample size per dimension: min {float(self.ess.min()):.0f},"
                         f" median {float(self.ess.quantile(0.5)):.0f}")
        if self.rhat is not None:
            lines.append(f"split R-hat: max {float(self.rhat.max()):.4f}")
        return "\n".join(lines)


class BaseSampler:
    """Common driver: initial state, thinning, trajectory, diagnostics, progress, seeds."""

    def __init__(self, energy: BaseEnergyFunction, *, seed: int | None = None,
                 generator: torch.Generator | None = None):
        if not isinstance(energy, BaseEnergyFunction):
            raise TypeError(f"energy must be a BaseEnergyFunction, not {type(energy).__name__}")
        self.energy = energy
        self.generator = generator
        self.seed = seed

    # -- one step; subclasses -------------------------------------------------------------
    def step(self, state, gen):
        """Advance ``state`` (x, energy, gradient) by one step; return (state, accepted)."""
        raise NotImplementedError

    # -- driver ----------------------------------------------------------------------------
    def _device_dtype(self, x):
        """Where new chains live: x's device and dtype; else the energy's device, and its
        dtype for a hand-written energy (a network's weights), or torch's default dtype
        for a compiled one (which computes in the dtype of x)."""
        if x is not None:
            return x.device, x.dtype
        from ..core.base import CompiledEnergy
        tensors = [t for t in list(self.energy.parameters()) + list(self.energy.buffers())
                   if t.is_floating_point()]
        device = tensors[0].device if tensors else torch.device("cpu")
        if tensors and not isinstance(self.energy, CompiledEnergy):
            return device, tensors[0].dtype
        return device, torch.get_default_dtype()

    def _first(self, x):
        """Energy and gradient of the initial states, with their shapes checked once."""
        e, g = self.energy.energy_and_gradient(x)
        if tuple(e.shape) != (x.shape[0],):
            raise ValueError(
                f"{type(self.energy).__name__} returned energies of shape {tuple(e.shape)} for "
                f"{x.shape[0]} chains; an energy maps x [chains, n] to [chains] (did forward "
                f"keep a trailing dimension, e.g. nn.Linear(h, 1) without .squeeze(-1), or "
                f"sum over the batch?)")
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"the gradient has shape {tuple(g.shape)}, expected "
                             f"{tuple(x.shape)}")
        return e, g

    def sample(self, x: torch.Tensor | None = None, dim: int | None = None,
               n_samples: int = 1, n_steps: int = 100, thin: int = 1,
               return_trajectory: bool = False, return_diagnostics: bool = False,
               progress: bool | None = None):
        """Run ``n_samples`` chains for ``n_steps`` steps.

        Args:
            x: initial states ``[n_samples, dim]``; default standard normal draws.
            dim: dimension n, when ``x`` is not given.
            n_samples: number of chains (ignored when ``x`` is given).
            n_steps: steps per chain.
            thin: keep every ``thin``-th state in the trajectory.
            return_trajectory: also return the kept states ``[chains, kept, dim]``.
            return_diagnostics: also return :class:`Diagnostics`; R-hat and ESS
                are computed from the second half of the kept trajectory (the
                first half counts as warm-up), which is kept in memory for it
                ([chains, n_steps / thin, dim]).
            progress: show a tqdm progress bar; default: only when stderr is a
                terminal.

        Returns:
            The final states ``[chains, dim]``; with the flags, a tuple
            ``(final, trajectory?, diagnostics?)`` in that order.

        Raises:
            ValueError: neither ``x`` nor ``dim`` given, or a non-positive count.
        """
        if x is None and dim is None:
            raise ValueError("give the initial states x [chains, dim] or the dimension dim")
        if n_steps < 0 or thin < 1 or n_samples < 1:
            raise ValueError("n_steps must be >= 0, thin >= 1 and n_samples >= 1")
        gen = self.generator
        device, dtype = self._device_dtype(x)
        if gen is None:
            gen = torch.Generator(device=device)
            if self.seed is not None:
                gen.manual_seed(self.seed)
            else:
                gen.seed()
        if x is None:
            x = torch.randn(n_samples, dim, device=device, dtype=dtype, generator=gen)
        else:
            x = x.detach().clone()
            if x.dim() == 1:
                x = x.unsqueeze(0)
        e, g = self._first(x)
        state = (x, e, g)
        keep = return_trajectory or return_diagnostics
        traj, mean_e, acc = [], [], []
        steps = range(n_steps)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=type(self).__name__, unit="step")
        with torch.no_grad():
            for k in steps:
                state, accepted = self.step(state, gen)
                mean_e.append(state[1].mean())
                if accepted is not None:
                    acc.append(accepted)
                if keep and (k + 1) % thin == 0:
                    traj.append(state[0].clone())
        final = state[0]
        out = [final]
        trajectory = torch.stack(traj, dim=1) if traj else final.new_zeros(
            final.shape[0], 0, final.shape[1])
        if return_trajectory:
            out.append(trajectory)
        if return_diagnostics:
            accepted = torch.stack(acc).to(torch.float64) if acc else None   # [steps, chains]
            diag = Diagnostics(torch.stack(mean_e) if mean_e else torch.zeros(0),
                               accepted.mean(1) if accepted is not None else None,
                               chain_acceptance=accepted.mean(0) if accepted is not None
                               else None)
            kept = trajectory[:, trajectory.shape[1] // 2:]      # the first half is warm-up
            if kept.shape[1] >= 4:
                diag.ess = effective_sample_size(kept)
                diag.rhat = split_rhat(kept)
            out.append(diag)
        return out[0] if len(out) == 1 else tuple(out)


class LangevinDynamics(BaseSampler):
    """Unadjusted Langevin: ``x <- x - h grad E(x) + noise_scale sqrt(2 h) xi``.

    Args:
        energy: any ``BaseEnergyFunction``.
        step_size: h > 0. The stationary law is biased by O(h); see MALA for an
            exact correction.
        noise_scale: scale of the injected noise (1 samples exp(-E)).
        seed / generator: reproducible runs.
    """

    def __init__(self, energy, step_size: float = 1e-2, noise_scale: float = 1.0, **kw):
        super().__init__(energy, **kw)
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size, self.noise_scale = float(step_size), float(noise_scale)

    def step(self, state, gen):
        x, _, g = state
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
        x = x - self.step_size * g + self.noise_scale * math.sqrt(2 * self.step_size) * noise
        e, g = self.energy.energy_and_gradient(x)
        return (x, e, g), None


class MALA(BaseSampler):
    """Metropolis-adjusted Langevin: a Langevin proposal with an accept/reject step.

    The chain leaves ``exp(-E)`` exactly invariant for any step size; the
    acceptance rate (about 0.57 is optimal in high dimension) is in the
    diagnostics.
    """

    def __init__(self, energy, step_size: float = 1e-2, **kw):
        super().__init__(energy, **kw)
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size = float(step_size)

    def step(self, state, gen):
        x, e, g = state
        h = self.step_size
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
        y = x - h * g + math.sqrt(2 * h) * noise
        ey, gy = self.energy.energy_and_gradient(y)
        log_q_forward = -((y - x + h * g) ** 2).sum(-1) / (4 * h)
        log_q_backward = -((x - y + h * gy) ** 2).sum(-1) / (4 * h)
        log_alpha = -ey + e + log_q_backward - log_q_forward
        u = torch.rand(log_alpha.shape, device=x.device, dtype=x.dtype, generator=gen)
        accept = torch.log(u) < torch.nan_to_num(log_alpha, nan=-torch.inf)
        x = torch.where(accept.unsqueeze(-1), y, x)
        e = torch.where(accept, ey, e)
        g = torch.where(accept.unsqueeze(-1), gy, g)
        return (x, e, g), accept


class HamiltonianMonteCarlo(BaseSampler):
    """HMC with leapfrog integration and an optional diagonal mass matrix.

    Args:
        energy: any ``BaseEnergyFunction``.
        step_size: leapfrog step epsilon.
        n_leapfrog_steps: leapfrog steps per proposal.
        mass: diagonal of the mass matrix, a number or ``[dim]`` (default 1).
    """

    def __init__(self, energy, step_size: float = 0.1, n_leapfrog_steps: int = 10,
                 mass=None, **kw):
        super().__init__(energy, **kw)
        if not step_size > 0 or n_leapfrog_steps < 1:
            raise ValueError("step_size must be positive and n_leapfrog_steps >= 1")
        if mass is not None and not bool((torch.as_tensor(mass) > 0).all()):
            raise ValueError("the diagonal mass must be positive")
        self.step_size, self.n_leapfrog = float(step_size), int(n_leapfrog_steps)
        self.mass = mass

    def step(self, state, gen):
        x, e, g = state
        mass = 1.0 if self.mass is None else torch.as_tensor(self.mass, dtype=x.dtype,
                                                             device=x.device)
        p = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
        p = p * torch.sqrt(torch.as_tensor(mass, dtype=x.dtype, device=x.device))
        kinetic0 = 0.5 * (p * p / mass).sum(-1)
        eps = self.step_size
        xn, gn, en = x, g, e
        p = p - 0.5 * eps * gn
        for k in range(self.n_leapfrog):
            xn = xn + eps * p / mass
            en, gn = self.energy.energy_and_gradient(xn)
            if k < self.n_leapfrog - 1:
                p = p - eps * gn
        p = p - 0.5 * eps * gn
        kinetic1 = 0.5 * (p * p / mass).sum(-1)
        log_alpha = e + kinetic0 - en - kinetic1
        u = torch.rand(log_alpha.shape, device=x.device, dtype=x.dtype, generator=gen)
        accept = torch.log(u) < torch.nan_to_num(log_alpha, nan=-torch.inf)
        x = torch.where(accept.unsqueeze(-1), xn, x)
        e = torch.where(accept, en, e)
        g = torch.where(accept.unsqueeze(-1), gn, g)
        return (x, e, g), accept
