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
    acceptance_rate: torch.Tensor | None = None     # fraction accepted per step (MALA, HMC)
    ess: torch.Tensor | None = None                 # effective sample size per dimension
    rhat: torch.Tensor | None = None                # split R-hat per dimension
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"mean energy: first {self.mean_energy[0]:.4g}, last {self.mean_energy[-1]:.4g}"]
        if self.acceptance_rate is not None:
            lines.append(f"acceptance rate: {float(self.acceptance_rate.mean()):.3f}")
        if self.ess is not None:
            lines.append(f"effective sample size per dimension: min {float(self.ess.min()):.0f},"
                         f" median {float(self.ess.median()):.0f}")
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
        if x is not None:
            return x.device, x.dtype
        tensors = list(self.energy.parameters()) + list(self.energy.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
        return device, torch.get_default_dtype()

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
                first half counts as warm-up).
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
        e, g = self.energy.energy_and_gradient(x)
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
                    acc.append(accepted.to(torch.float64).mean())
                if keep and (k + 1) % thin == 0:
                    traj.append(state[0].clone())
        final = state[0]
        out = [final]
        trajectory = torch.stack(traj, dim=1) if traj else final.new_zeros(
            final.shape[0], 0, final.shape[1])
        if return_trajectory:
            out.append(trajectory)
        if return_diagnostics:
            diag = Diagnostics(torch.stack(mean_e) if mean_e else torch.zeros(0),
                               torch.stack(acc) if acc else None)
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
