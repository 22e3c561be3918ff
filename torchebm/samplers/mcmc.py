"""Langevin, MALA and HMC samplers on any ``BaseEnergyFunction``, with TorchEBM's ``sample()`` contract.

All chains run together as one batch ``[chains, *shape]`` (``shape`` is ``(n,)``
for the usual ``x: [..., n]`` energies). Each step evaluates the energy and
its gradient once per proposal: through ``energy.energy_and_gradient`` (closed
form and shared for compiled energies, autograd for hand-written ones), or
through a hand-written ``gradient`` when a subclass overrides only that.

References:
    G. O. Roberts, R. L. Tweedie, Exponential convergence of Langevin
    distributions and their discrete approximations, Bernoulli 2 (1996).
    R. M. Neal, MCMC using Hamiltonian dynamics, Handbook of MCMC (2011).
    M. D. Hoffman, A. Gelman, The No-U-Turn Sampler, JMLR 15 (2014), section
    3.2 (dual averaging of the step size; gamma = 0.05, t0 = 10, kappa = 0.75).
    Stan Reference Manual, "HMC algorithm parameters" (windowed adaptation of
    a diagonal metric: buffers 75 / 50, first window 25, doubling).
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import types
import warnings

import torch
from torch import nn

from ..core.base import BaseEnergyFunction
from .diagnostics import effective_sample_size, split_rhat
from .philox import CounterRNG
from .schedulers import BaseScheduler, ConstantScheduler
from ..errors import ArgumentError

RHAT_LIMIT = 1.01          # Vehtari, Gelman, Simpson, Carpenter, Burkner (2021)
ESS_PER_CHAIN = 100        # ditto: at least 100 per chain, counted here for at most 4 chains


class Diagnostics(dict):
    """What a run measured: a dict, as TorchEBM's, plus attributes for our richer diagnostics.

    Dict entries (TorchEBM's keys; one row per *kept* step, ``n_kept = n_steps // thin``,
    row ``k`` being step ``(k + 1) * thin - 1``):
        ``"mean"``, ``"var"``: ``[n_kept, *shape]`` mean and variance over chains;
        ``"energy"``: ``[n_kept]`` mean energy over chains;
        ``"acceptance_rate"``: ``[n_kept]`` fraction of chains that accepted at each kept
        step (MALA, HMC; absent for Langevin).

    Attributes (per *step*, every one of the ``n_steps``, whatever ``thin`` is):
        mean_energy: ``[n_steps]`` mean energy over finite chains, every step.
        acceptance_rate: ``[n_steps]`` fraction of chains that accepted, every step (None
            for Langevin). Not the dict entry of the same name: with ``thin=10`` and
            ``n_steps=200``, ``d.acceptance_rate`` is ``[200]`` and ``d["acceptance_rate"]``
            is ``[20]``, its rows ``9, 19, ..., 199``.
        chain_acceptance: ``[chains]`` fraction of steps each chain accepted (0 for a chain
            that never moved).
        ess, rhat: ``[n]`` effective sample size and split R-hat per (flattened)
            dimension over the second half of the kept draws (NaN where undefined).
        nonfinite_chains: chains whose state or energy became NaN or inf.
        n_chains: number of chains.
        step_size: the step size that step-size adaptation (``target_accept=``) chose,
            ``[chains]`` with ``adapt_per_chain=True``, else ``[1]``; None when the sampler
            does not adapt it (a constant or scheduled step size: read
            ``sampler.step_size``).
        inverse_mass: the adapted diagonal inverse mass (variance estimate) with
            ``adapt_mass=True``, else None.
    """

    def __init__(self, per_kept=None, *, mean_energy=None, acceptance_rate=None,
                 chain_acceptance=None, ess=None, rhat=None, nonfinite_chains=0, n_chains=0,
                 step_size=None, inverse_mass=None):
        super().__init__(per_kept or {})
        self.mean_energy = mean_energy if mean_energy is not None else torch.zeros(0)
        self.acceptance_rate = acceptance_rate
        self.chain_acceptance = chain_acceptance
        self.ess, self.rhat = ess, rhat
        self.nonfinite_chains, self.n_chains = int(nonfinite_chains), int(n_chains)
        self.step_size, self.inverse_mass = step_size, inverse_mass

    def warnings(self) -> list:
        """The problems :meth:`summary` reports, one sentence each (empty when none)."""
        out = []
        n = self.n_chains
        if self.nonfinite_chains:
            out.append(f"{self.nonfinite_chains} of {n} chains became non-finite (NaN or inf "
                       f"state or energy); they carry no information: reduce the step size, "
                       f"clamp the state, or keep chains inside the energy's domain")
        if self.chain_acceptance is not None:
            stuck = int((self.chain_acceptance == 0).sum())
            if stuck:
                out.append(f"{stuck} of {n} chains never accepted a move (step size too large "
                           f"where they started?); their states are their start")
        if self.rhat is not None and self.rhat.numel():
            undefined = int(torch.isnan(self.rhat).sum())
            if undefined:
                out.append(f"{undefined} of {self.rhat.numel()} dimensions have undefined ESS "
                           f"and R-hat (a chain is non-finite there, or every chain is constant)")
            high = int((self.rhat > RHAT_LIMIT).sum())
            if high:
                out.append(f"{high} of {self.rhat.numel()} dimensions have split R-hat above "
                           f"{RHAT_LIMIT} (max {float(self.rhat.nan_to_num(0).max()):.4f}): the "
                           f"chains disagree, so means and quantiles from them are unreliable; "
                           f"run longer or start chains more widely")
        if self.ess is not None and self.ess.numel():
            limit = ESS_PER_CHAIN * min(max(n, 1), 4)
            low = int((self.ess < limit).sum())
            if low:
                rule = ("400, the minimum Vehtari et al. (2021) recommend with 4 or more "
                        "chains" if limit == 4 * ESS_PER_CHAIN else
                        f"{limit}, the minimum Vehtari et al. (2021) recommend: 100 per chain")
                out.append(f"{low} of {self.ess.numel()} dimensions have an effective sample "
                           f"size below {rule} (min {float(self.ess.nan_to_num(0).min()):.4g}); "
                           f"run longer or thin less")
        return out

    def summary(self) -> str:
        """Acceptance, energy, ESS, split R-hat, and a ``warning:`` line per problem found."""
        if len(self.mean_energy) == 0:
            return "no steps were run"
        lines = [f"mean energy: first {float(self.mean_energy[0]):.4g}, last "
                 f"{float(self.mean_energy[-1]):.4g}"]
        if self.acceptance_rate is not None:
            lines.append(f"acceptance rate: {float(self.acceptance_rate.mean()):.3f}")
        if self.step_size is not None:
            s = self.step_size
            lines.append(f"adapted step size: {float(s.mean()):.4g}" if s.numel() == 1 else
                         f"adapted step size per chain: min {float(s.min()):.4g}, max "
                         f"{float(s.max()):.4g}")
        if self.ess is not None and self.ess.numel():
            finite = self.ess[~torch.isnan(self.ess)]
            if finite.numel():
                lines.append(f"effective sample size per dimension: min {float(finite.min()):.0f},"
                             f" median {float(finite.quantile(0.5)):.0f}")
        if self.rhat is not None and self.rhat.numel():
            finite = self.rhat[~torch.isnan(self.rhat)]
            if finite.numel():
                lines.append(f"split R-hat: max {float(finite.max()):.4f}")
        lines += [f"warning: {w}" for w in self.warnings()]
        return "\n".join(lines)

    def __repr__(self):
        return f"Diagnostics({dict.__repr__(self)})"


def _energy_and_gradient(energy, x):
    """``(E [chains], dE/dx [chains, *shape])``, detached; a hand-written ``gradient`` is used
    when the subclass defines it (and not ``energy_and_gradient``)."""
    for klass in type(energy).__mro__:
        d = vars(klass)
        if klass is BaseEnergyFunction or "energy_and_gradient" in d:
            return energy.energy_and_gradient(x)
        if "gradient" in d:
            with torch.enable_grad():
                g = energy.gradient(x)
            with torch.no_grad():
                e = energy(x)
            return e.detach(), g.detach()
    return energy.energy_and_gradient(x)


def _infer_dim(energy):
    """The state dimension an energy fixes: the size of ``x`` a compiled energy was built
    for (``n_particles * dim`` for a particle system, whose ``dim`` is the particles'
    dimension, as in bgflow), a 1-D ``mean`` (TorchEBM) or an int ``dim``; else None."""
    fixed = getattr(energy, "_fixed_n", None)
    if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > 0:
        return fixed
    mean = getattr(energy, "mean", None)
    if isinstance(mean, torch.Tensor) and mean.dim() == 1:
        return int(mean.shape[0])
    dim = getattr(energy, "dim", None)
    if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
        return dim
    return None


def _positive(name, value):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ArgumentError(
                f"{name} must be one positive number (or a scheduler), got a tensor of shape "
                f"{list(value.shape)}; per-chain step sizes come from adaptation "
                f"(target_accept=...), not from the constructor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not \
            (math.isfinite(value) and value > 0):
        raise ArgumentError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _check_dim(dim):
    """``dim`` is a positive int or a tuple of them (not a bool, not a float)."""
    parts = dim if isinstance(dim, (tuple, list, torch.Size)) else (dim,)
    if not parts or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                            and d > 0 for d in parts):
        raise ArgumentError(f"dim must be a positive int or a tuple of positive ints, got {dim!r}")


def _agrees_with_x(x, dim, n_samples):
    """``dim`` and ``n_samples`` given beside ``x`` must describe it (they are ignored
    otherwise, which would hide a mistake)."""
    if x.dim() == 0:
        raise ArgumentError("x is a 0-d tensor; give the starting states as [chains, n] (or [n] "
                         "for one chain)")
    if x.is_complex():
        raise TypeError(f"x is complex ({x.dtype}); the samplers move real states (casting "
                        f"would drop the imaginary part): give x.real, or a real tensor")
    chains, shape = (1, tuple(x.shape)) if x.dim() == 1 else (x.shape[0], tuple(x.shape[1:]))
    if x.dim() >= 1 and chains == 0:
        raise ArgumentError(f"x holds no chains (shape {list(x.shape)}); give at least one")
    if dim is not None:
        _check_dim(dim)
        want = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
        if shape != want:
            raise ArgumentError(f"dim = {dim!r} contradicts x, whose samples have shape "
                             f"{list(shape)}; give x or dim, not both")
    if n_samples != 1 and n_samples != chains:
        raise ArgumentError(f"n_samples = {n_samples} contradicts x, which holds {chains} "
                         f"chains; give x or n_samples, not both")


def _bc(t, x):
    """A step size: a float as is, a per-chain ``[chains]`` (or ``[1]``) tensor shaped to
    broadcast against ``x``."""
    return t if isinstance(t, float) else t.reshape(-1, *([1] * (x.dim() - 1)))


def _sqrt(t):
    return math.sqrt(t) if isinstance(t, float) else torch.sqrt(t)


def _normal(x, gen):
    """Standard normals shaped as ``x``: from ``gen`` (a ``torch.Generator`` or None for the
    global RNG) or from a :class:`~torchebm.samplers.philox.CounterRNG`."""
    if isinstance(gen, CounterRNG):
        return gen.normal(x.shape, x.dtype, x.device)
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)


def _uniform(x, gen):
    """Uniforms ``[chains]`` for the accept test, from ``gen`` as :func:`_normal`."""
    if isinstance(gen, CounterRNG):
        return gen.uniform(x.shape[:1], x.dtype, x.device)
    return torch.rand(x.shape[:1], device=x.device, dtype=x.dtype, generator=gen)


def _bc_bool(mask, x):
    return mask.reshape(-1, *([1] * (x.dim() - 1)))


def _flat_sum(t):
    return t.reshape(t.shape[0], -1).sum(-1)


class _DualAveraging:
    """Nesterov dual averaging of log(step size) (Hoffman & Gelman 2014, Algorithm 5)."""

    gamma, t0, kappa = 0.05, 10.0, 0.75

    def __init__(self, h, target):
        self.target = target
        self.restart(h)

    def restart(self, h):
        self.mu = torch.log(10 * h)
        self.log_h = torch.log(h)
        self.hbar = torch.zeros_like(h)
        self.log_hbar = torch.zeros_like(h)
        self.t = 0

    def update(self, accept_prob):
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.hbar = (1 - eta) * self.hbar + eta * (self.target - accept_prob)
        self.log_h = self.mu - math.sqrt(self.t) / self.gamma * self.hbar
        w = self.t ** (-self.kappa)
        self.log_hbar = w * self.log_h + (1 - w) * self.log_hbar

    @property
    def step_size(self):
        return torch.exp(self.log_h)

    @property
    def final(self):
        return torch.exp(self.log_hbar) if self.t else torch.exp(self.log_h)


def _mass_windows(n_warmup):
    """Stan's slow adaptation windows ``[(start, end)]`` for ``n_warmup`` steps (none below 20)."""
    if n_warmup < 20:
        return []
    init, term, base = 75, 50, 25
    if init + term + base > n_warmup:
        init, term = int(0.15 * n_warmup), int(0.1 * n_warmup)
        base = n_warmup - init - term
    windows, start, size, last = [], init, base, n_warmup - term
    while True:
        end = start + size
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        if end >= last:
            return windows
        start, size = end, 2 * size


class BaseSampler(nn.Module):
    """Common driver: state, schedules, thinning, trajectory, diagnostics, adaptation, RNG.

    Args:
        model / energy: the ``BaseEnergyFunction`` to sample ``exp(-E)`` from; the
            first positional argument (``model=`` is TorchEBM's keyword, ``energy=`` ours).
        dtype: dtype of the chains; default: that of ``x`` when given, else of a
            hand-written energy's weights, else torch's default dtype.
        device: device of the chains; default: that of ``x``, else of the energy.
        seed / generator: a private random stream (``seed``: the same draws on
            every call). Without either, draws come from torch's global RNG, so
            ``torch.manual_seed`` makes runs reproducible (as in TorchEBM).

    Raises:
        TypeError: no energy, both ``model`` and ``energy``, or not a ``BaseEnergyFunction``.
    """

    #: whether ``sample()`` takes ``dim`` from the energy when neither x nor dim is given
    infers_dim = True
    _adapts = False
    #: most steps one compiled call runs (unrolled in its graph, ``compile=True``): more
    #: amortise the call's overhead (tens of microseconds), but lengthen the compilation
    _fused_chunk = 1

    def __init__(self, model=None, dtype=None, device=None, *, energy=None, seed=None,
                 generator=None):
        super().__init__()
        if model is not None and energy is not None and model is not energy:
            raise TypeError("give the energy once, as the first argument, energy= or model= "
                            "(TorchEBM's name), not both")
        model = model if model is not None else energy
        if model is None:
            raise TypeError(f"{type(self).__name__} needs an energy: pass it first, or as "
                            f"energy= (model= also works)")
        if not isinstance(model, BaseEnergyFunction):
            raise TypeError(f"energy must be a BaseEnergyFunction, not {type(model).__name__}; "
                            f"subclass torchebm.core.BaseEnergyFunction and implement forward")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, not {dtype!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        if seed is not None and not 0 <= seed < 2**63:
            raise ArgumentError(f"seed must be in 0 .. 2**63 - 1 (a torch.Generator seed), got {seed}")
        seed = None if seed is None else int(seed)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, not {type(generator).__name__}")
        if seed is not None and generator is not None:
            raise ArgumentError("give seed= or generator=, not both: each names the random stream")
        self.energy = model
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else None
        if self._device is not None:
            from ..core.base import _check_device_available
            _check_device_available(self._device)    # DeviceError now, not at the first step
        self.seed, self.generator = seed, generator
        self.schedulers: dict = {}

    # -- TorchEBM's names -----------------------------------------------------------------
    @property
    def model(self):
        """The energy (TorchEBM's name for it)."""
        return self.energy

    @property
    def dtype(self) -> torch.dtype:
        """dtype of new chains (``x`` given to ``sample`` keeps its own unless dtype was set)."""
        if self._dtype is not None:
            return self._dtype
        from ..core.base import CompiledEnergy
        if not isinstance(self.energy, CompiledEnergy):
            for t in list(self.energy.parameters()) + list(self.energy.buffers()):
                if t.is_floating_point():
                    return t.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        for t in list(self.energy.parameters()) + list(self.energy.buffers()):
            return t.device
        return torch.device("cpu")

    def to(self, *args, **kwargs):
        """Move the chains' device (and the energy) and/or set the chains' dtype.

        The energy's own dtype is left alone (compiled energies cast their
        float64 parameters per call)."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self._device = torch.device(device)
            self.energy.to(self._device)
        if dtype is not None:
            self._dtype = dtype
        return self

    # -- schedules ---------------------------------------------------------------------------
    def _register_param(self, name, value):
        if isinstance(value, BaseScheduler):
            self.schedulers[name] = value
        else:
            self.schedulers[name] = ConstantScheduler(_positive(name, value))

    def get_scheduled_value(self, name: str) -> float:
        """The current value of a scheduled parameter (``"step_size"``, ``"noise_scale"``).

        Raises:
            KeyError: no such parameter.
        """
        if name not in self.schedulers:
            raise KeyError(f"No scheduler registered for parameter '{name}'; this sampler "
                           f"schedules {sorted(self.schedulers)}")
        return self.schedulers[name].get_value()

    def step_schedulers(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def reset_schedulers(self) -> None:
        for s in self.schedulers.values():
            s.reset()

    @property
    def step_size(self) -> float:
        """The current step size (the schedule's value)."""
        return self.get_scheduled_value("step_size")

    @step_size.setter
    def step_size(self, value):
        self._register_param("step_size", value)

    # -- one step; subclasses --------------------------------------------------------------
    def _draw(self, x, gen):
        """The random numbers of one step, drawn from ``gen`` (None: torch's global RNG) in a
        fixed order: a tuple of tensors (the noise ``[chains, *shape]``, then uniforms
        ``[chains]`` for the accept test of adjusted samplers)."""
        raise NotImplementedError

    def _extra(self):
        """A scheduled per-step value besides the step size (Langevin's noise scale), or None."""
        return None

    def _move(self, state, h, inv_mass, draws, evaluate, extra):
        """Advance ``state = (x, E, dE/dx)`` with step size ``h`` (a float, or a tensor
        ``[]``, ``[chains]`` or ``[1]``), diagonal inverse mass (None or ``[*shape]``), the
        random numbers ``draws`` of :meth:`_draw` and ``evaluate(x) -> (E, dE/dx)``; return
        ``(state, accepted, log_alpha)`` (``[chains]`` each, or None for unadjusted samplers;
        ``log_alpha`` is the log acceptance ratio, -inf for a NaN proposal). Pure tensor
        code: the fused step compiles it into one graph."""
        raise NotImplementedError

    def _transition(self, state, gen, h, inv_mass):
        """One eager step: draw, then :meth:`_move` with this sampler's ``energy_and_gradient``."""
        return self._move(state, h, inv_mass, self._draw(state[0], gen), self._evaluate,
                          self._extra())

    def step(self, state, gen=None):
        """One step at the current scheduled step size; returns ``(state, accepted)``."""
        x = state[0]
        h = float(self.get_scheduled_value("step_size"))
        new, accepted, _ = self._transition(state, gen, h, self._inverse_mass(x))
        return new, accepted

    def _inverse_mass(self, x):
        return None

    def _evaluate(self, x):
        e, g = _energy_and_gradient(self.energy, x)
        if tuple(e.shape) != (x.shape[0],):
            raise ArgumentError(
                f"{type(self.energy).__name__} returned energies of shape {tuple(e.shape)} for "
                f"{x.shape[0]} chains; an energy maps x [chains, *shape] to [chains] (did "
                f"forward keep a trailing dimension, e.g. nn.Linear(h, 1) without "
                f".squeeze(-1), or sum over the batch?)")
        if tuple(g.shape) != tuple(x.shape):
            raise ArgumentError(f"the gradient has shape {tuple(g.shape)}, expected {tuple(x.shape)}")
        return e.to(x.dtype), g.to(x.dtype)

    # -- driver ----------------------------------------------------------------------------
    def _initial(self, x, dim, n_samples, gen):
        if x is not None:
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"x must be a torch.Tensor [chains, *shape], not {type(x).__name__}")
            device = self._device if self._device is not None else x.device
            dtype = self._dtype if self._dtype is not None else (
                x.dtype if x.is_floating_point() else self.dtype)
            x = x.detach().to(device=device, dtype=dtype).clone()
            return x.unsqueeze(0) if x.dim() == 1 else x
        if dim is None:
            dim = _infer_dim(self.energy) if self.infers_dim else None
            if dim is None:
                why = ("this sampler does not read it from the energy, as in TorchEBM"
                       if not self.infers_dim else "the energy does not fix its dimension")
                raise ArgumentError(f"dim must be provided when x is None ({why}): pass dim=n, "
                                 f"or x [chains, n]")
        _check_dim(dim)
        shape = (int(dim),) if isinstance(dim, numbers.Integral) else tuple(map(int, dim))
        return torch.randn(n_samples, *shape, dtype=self.dtype, device=self.device, generator=gen)

    def _generator(self, generator, device):
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, not "
                                f"{type(generator).__name__}")
            return generator
        if self.generator is not None:
            return self.generator
        if self.seed is not None:
            return torch.Generator(device=device).manual_seed(self.seed)
        return None          # torch's global RNG

    def sample(self, x: torch.Tensor | None = None, dim=None, n_steps: int = 100,
               n_samples: int = 1, thin: int = 1, return_trajectory: bool = False,
               return_diagnostics: bool = False, reset_schedulers: bool = True, *,
               model_kwargs: dict | None = None, generator: torch.Generator | None = None,
               progress: bool | None = None, compile: bool = False, distributed: bool = False,
               gather: bool = True, rng: str | None = None):
        """Run chains for ``n_steps`` steps (TorchEBM's signature and positional order).

        Args:
            x: initial states ``[chains, *shape]`` (a 1-D ``[n]`` is one chain);
                default ``n_samples`` standard normal draws of shape ``dim``.
            dim: ``n`` or a shape tuple, when ``x`` is not given; MALA and HMC
                take it from an energy that fixes it (a 1-D ``mean`` or an int ``dim``).
                Given with ``x``, it must equal ``x``'s sample shape.
            n_steps: steps per chain (after any warm-up of an adapting sampler).
            n_samples: number of chains when ``x`` is not given (given with ``x``, it
                must equal ``x``'s number of chains).
            thin: keep every ``thin``-th state; ``n_kept = n_steps // thin``.
            return_trajectory: return the kept states ``[chains, n_kept, *shape]``
                instead of the final states.
            return_diagnostics: also return :class:`Diagnostics`, a dict of per
                kept step ``mean``, ``var``, ``energy`` (and ``acceptance_rate``),
                with ESS and split R-hat over the second half of the kept draws
                as attributes (those draws are kept in memory for it).
            reset_schedulers: restart step-size and noise schedules at step 0.
            model_kwargs: conditioning inputs; energies here take ``x`` only, so
                it must be None or empty.
            generator: a private random stream for this call (else the sampler's
                ``seed``/``generator``, else torch's global RNG).
            progress: a tqdm progress bar; default only when stderr is a terminal.
            compile: fused steps. Whole steps (the closed-form energy and
                gradient, the noise with ``rng="philox"``, the proposal, HMC's
                leapfrog loop, the accept test, the selects and the diagnostics'
                sums) run as one graph (Langevin 8 and MALA 4 steps per call when no
                state is kept in between), traced and compiled by Inductor on the
                first call for each shape, dtype, device and output mode
                (``return_diagnostics``, ``return_trajectory`` and ``thin`` each
                make another graph; ``n_steps`` does not): tens of seconds to
                minutes of a 2-core CPU. Later calls of a combination already
                compiled call it directly, without Dynamo's per-call guards (through
                ``torch.compile(fullgraph=True, dynamic=False)`` if the steps do
                not trace). Needs an energy
                compiled from a formula (a ``CompiledEnergy``); warm-up steps of
                an adapting sampler run eagerly, so for short runs of an adapting
                sampler the gain is small (set ``n_warmup = 0`` after a first call).
            rng: where the step's random numbers come from. ``"torch"`` (the
                default without ``compile``): ``torch.randn`` / ``torch.rand`` from
                the stream (``generator``, ``seed`` or torch's global RNG), drawn
                outside the compiled graph when fused. ``"philox"`` (the default
                with ``compile=True``): a counter-based Philox4x32-10 stream in
                tensor ops (:mod:`torchebm.samplers.philox`), keyed by two 32-bit
                words drawn once per call from that stream, then a pure function of
                (key, draw number, element index) that the fused graph computes in
                the same pass as the step. Eager and fused runs with the same
                ``rng`` and seed give the same chains up to floating-point rounding
                (which can, rarely, flip one accept decision in float32); runs with
                different ``rng`` have the same law but other draws.
            distributed: split the chains over the ranks of the initialised
                ``torch.distributed`` process group (gloo on CPU, NCCL on GPUs).
                ``n_samples`` (or ``x``'s first dimension, the same ``x`` on every
                rank) counts the chains of all ranks; rank ``r`` of ``W`` runs the
                ``r``-th of ``W`` contiguous shares (sizes differ by at most one).
                Each rank draws from its own stream seeded ``base + r``: ``base``
                is ``seed`` when the sampler has one, else one draw from
                ``generator`` (or torch's global RNG) that is equal on all ranks
                when they were seeded alike. Every rank must call ``sample`` with
                the same arguments. Diagnostics are over all chains.
            gather: with ``distributed``, return every rank's chains, in rank order,
                on every rank (all-gather; ``[all chains, ...]``); False returns
                each rank's own share.

        Returns:
            ``[chains, *shape]`` final states, or ``[chains, n_kept, *shape]`` with
            ``return_trajectory``; with ``return_diagnostics``, ``(that, diagnostics)``.

        Raises:
            ValueError: no ``x`` nor ``dim`` (and none fixed by the energy), bad counts,
                ``thin < 1``, non-empty ``model_kwargs``, a step-size or mass that does
                not fit, starting energies that are not finite, ``compile=True`` with an
                energy that is not compiled from a formula, fewer chains than ranks,
                ``dim`` or ``n_samples`` that contradict ``x``, an ``rng`` other than
                None, ``"torch"`` and ``"philox"``.
            RuntimeError: ``distributed=True`` without an initialised process group.
        """
        if model_kwargs:
            raise ArgumentError(f"model_kwargs {sorted(model_kwargs)} are not supported: energies "
                             f"here take x only (close over conditioning inputs in the energy)")
        for name, v, low in (("n_steps", n_steps, 0), ("n_samples", n_samples, 1),
                             ("thin", thin, 1)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ArgumentError(f"{name} must be an int >= {low}, got {v!r}")
        if return_trajectory and thin > n_steps:
            warnings.warn(f"thin = {thin} > n_steps = {n_steps}: the trajectory keeps no state "
                          f"(n_steps // thin = 0); lower thin", UserWarning, stacklevel=2)
        if rng is None:
            rng = "philox" if compile else "torch"
        if rng not in ("torch", "philox"):
            raise ArgumentError(f"rng must be 'torch' (torch.randn from the generator) or 'philox' "
                             f"(the counter-based stream of torchebm.samplers.philox), got "
                             f"{rng!r}")
        if compile:
            from ..core.base import CompiledEnergy
            from ..core.chunked import ChunkedEnergy
            if not isinstance(self.energy, CompiledEnergy):
                if isinstance(self.energy, ChunkedEnergy):   # a Python loop over chunks
                    raise ArgumentError(
                        f"compile=True fuses one graph of the whole batch; "
                        f"{type(self.energy).__name__} runs the batch in chunks, which cannot "
                        f"be one graph. Sample the energy itself with compile=True, or keep "
                        f"the chunks with compile=False")
                raise ArgumentError(
                    f"compile=True fuses the closed-form gradient of an energy compiled from a "
                    f"formula; {type(self.energy).__name__} is hand-written (its gradient is "
                    f"autograd, which torch.compile cannot put in one graph). Sample it with "
                    f"compile=False, or write it as a formula (torchebm.symbolic.from_expression)")
        if reset_schedulers:
            self.reset_schedulers()
        if isinstance(x, torch.Tensor):
            _agrees_with_x(x, dim, n_samples)
        device = self._device if self._device is not None else (
            x.device if isinstance(x, torch.Tensor) else self.device)
        gen = self._generator(generator, device)
        share = None
        if distributed:
            gen, share = self._rank_stream(generator, gen, device, x, n_samples)
            if x is not None:
                x = (x.unsqueeze(0) if x.dim() == 1 else x)[share[0]:share[1]]
            else:
                n_samples = share[1] - share[0]
        x = self._initial(x, dim, n_samples, gen)
        e, g = self._evaluate(x)
        bad = ~torch.isfinite(e)
        if bad.any():
            raise ArgumentError(
                f"{int(bad.sum())} of {x.shape[0]} chains start where the energy is not finite "
                f"(NaN or inf), e.g. outside the domain of a log or sqrt; no step size can move "
                f"them. Start them inside the domain (pass x=)")
        state = (x, e, g)
        chains = x.shape[0]
        if rng == "philox":          # the key: one draw from the stream, after the start
            gen = CounterRNG.from_generator(gen, x.device)
        self._check_mass(x)
        h_fixed, inv_mass = None, self._inverse_mass(x)
        if self._adapts:
            state, h_fixed, inv_mass = self._warmup(state, gen, inv_mass)
        want_diag = return_diagnostics
        n_kept = n_steps // thin
        keep = return_trajectory or want_diag
        # preallocated on the chains' device; nothing is read back to the host until the end
        traj = x.new_empty(chains, n_kept if keep else 0, *x.shape[1:])
        kept_energy = torch.zeros(n_kept if keep else 0, dtype=torch.float64, device=x.device)
        # per step: sum of finite energies, finite chains, accepted chains
        stats = torch.zeros(n_steps, 3, dtype=torch.float64, device=x.device)
        acc_count = torch.zeros(chains, dtype=torch.int64, device=x.device)
        nonfinite = torch.zeros(chains, dtype=torch.bool, device=x.device)
        adjusted = None
        if progress is None:
            progress = sys.stderr.isatty()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_steps, desc=type(self).__name__, unit="step")
        chunk = _chunk(thin if keep else 0, self._fused_chunk) if compile else 1
        counter = isinstance(gen, CounterRNG)
        fused = self._fused_step(x, chunk, counter) if compile else None
        made = {}

        def per_call(values):          # a call's step sizes as a tensor; constant ones made once
            t = made.get(tuple(values))
            if t is None:
                if len(made) > 8:
                    made.clear()
                t = made[tuple(values)] = torch.tensor(values, dtype=x.dtype, device=x.device)
            return t

        with torch.no_grad():
            k = 0
            while k < n_steps:
                k_before = k
                if fused is not None and k % chunk == 0 and k + chunk <= n_steps:
                    # ``chunk`` steps in one compiled call; torch's draws are made here, step
                    # by step, in eager mode's order; Philox's in the graph
                    hs, extras, draws = [], [], chunk if counter else []
                    for _ in range(chunk):
                        hs.append(h_fixed if h_fixed is not None else
                                  float(self.get_scheduled_value("step_size")))
                        extras.append(self._extra())
                        if not counter:
                            draws.append(self._draw(state[0], gen))
                        self.step_schedulers()
                    h_arg = h_fixed if h_fixed is not None else per_call(hs)
                    extra_arg = None if extras[0] is None else per_call(extras)
                    *state, acc_count, nonfinite, rows, index = fused(
                        *state, h_arg, h_fixed is None, extra_arg, inv_mass, draws, acc_count,
                        nonfinite, gen.key if counter else None, gen.index if counter else None)
                    if counter:
                        gen.index = index
                    state = tuple(state)
                    stats[k:k + chunk] = rows
                    adjusted = not isinstance(self, LangevinDynamics)
                    k += chunk
                elif fused is None or k % chunk != 0 or k + chunk > n_steps:
                    h = h_fixed if h_fixed is not None else float(
                        self.get_scheduled_value("step_size"))
                    state, accepted, _ = self._transition(state, gen, h, inv_mass)
                    self.step_schedulers()
                    es = state[1]
                    finite = torch.isfinite(es)      # a NaN or inf state gives a NaN/inf energy
                    nonfinite |= ~finite
                    if want_diag or fused is not None:
                        stats[k, 0] = torch.where(finite, es, 0).sum(dtype=torch.float64)
                        stats[k, 1] = finite.sum()
                        if accepted is not None:
                            stats[k, 2] = accepted.sum()
                            acc_count += accepted
                    adjusted = accepted is not None
                    k += 1
                if keep and k % thin == 0:
                    j = k // thin - 1
                    traj[:, j] = state[0]
                    if want_diag:
                        kept_energy[j] = state[1].sum(dtype=torch.float64)
                if bar is not None:
                    bar.update(k - k_before)
        if bar is not None:
            bar.close()
        if distributed:
            return self._finish_distributed(
                state[0], traj, kept_energy, stats, acc_count, nonfinite, adjusted, chains,
                thin, return_trajectory, return_diagnostics, gather, h_fixed, inv_mass)
        return self._finish(state[0], traj, kept_energy, stats, acc_count, nonfinite, adjusted,
                            chains, thin, return_trajectory, return_diagnostics, h_fixed, inv_mass)

    def _finish(self, final, traj, kept_energy, stats, acc_count, nonfinite, adjusted, chains,
                thin, return_trajectory, return_diagnostics, h_fixed, inv_mass):
        n_bad = int(nonfinite.sum())
        if n_bad:
            warnings.warn(f"{type(self).__name__}: {n_bad} of {chains} chains became non-finite "
                          f"(NaN or inf state or energy); reduce the step size, pass clamp=, or "
                          f"keep chains inside the energy's domain", RuntimeWarning, stacklevel=3)
        out = traj if return_trajectory else final
        if not return_diagnostics:
            return out
        dtype = final.dtype
        n_steps = stats.shape[0]
        if traj.shape[1] == 0:
            mean = var = final.new_zeros(0, *final.shape[1:])
        else:
            mean = traj.mean(0)
            var = traj.var(0) if chains > 1 else torch.zeros_like(traj[0])
        per_kept = {"mean": mean, "var": var, "energy": (kept_energy / chains).to(dtype)}
        accept_rate = chain_acc = None
        if adjusted:
            accept_rate = stats[:, 2] / chains                          # float64 [n_steps]
            chain_acc = acc_count.to(torch.float64) / max(n_steps, 1)
            idx = torch.arange(1, traj.shape[1] + 1, device=stats.device) * thin - 1
            per_kept["acceptance_rate"] = (stats[idx, 2] / chains).to(dtype)
        diag = Diagnostics(
            per_kept, mean_energy=(stats[:, 0] / stats[:, 1]).to(dtype) if n_steps else
            torch.zeros(0), acceptance_rate=accept_rate, chain_acceptance=chain_acc,
            nonfinite_chains=n_bad, n_chains=chains,
            step_size=h_fixed if self._adapts and self.target_accept is not None else None,
            inverse_mass=inv_mass if self._adapts and self.adapt_mass else None)
        kept = traj[:, traj.shape[1] // 2:]       # the first half is warm-up
        if kept.shape[1] >= 4:
            flat = kept.reshape(chains, kept.shape[1], -1)
            diag.ess = effective_sample_size(flat)
            diag.rhat = split_rhat(flat)
        return out, diag

    # -- fused steps -----------------------------------------------------------------------
    def _fused_body(self, x, e, g, h, per_step, extra, inv_mass, draws, acc_count, nonfinite,
                    key, index):
        """Several steps as pure tensor code (compiled by :meth:`_fused_step`): the
        moves, then the diagnostics' running sums. ``draws``: a list of each step's
        :meth:`_draw` tuples, or the number of steps when the draws come from the Philox
        stream ``(key [2], index [])`` (computed here). ``h``: ``[steps]`` step sizes, or a
        per-chain ``[chains]`` / ``[1]`` tensor for every step (``per_step`` False);
        ``extra``: ``[steps]`` or None. Returns ``(x, E, dE/dx, acc_count, nonfinite, rows,
        index)``, ``rows [steps, 3]`` = (sum of finite energies, finite chains, accepted
        chains) per step, float64, and the stream's next draw number (None without one)."""
        energy = self.energy
        lay, der = self._fused_inputs

        def evaluate(y):
            return energy._energy_and_gradient(y, lay, der)

        stream = None if key is None else CounterRNG(key, index)
        rows = []
        for i in range(draws if stream is not None else len(draws)):
            hi = h[i] if per_step else h
            ex = None if extra is None else extra[i]
            d = self._draw(x, stream) if stream is not None else draws[i]
            (x, e, g), accepted, _ = self._move((x, e, g), hi, inv_mass, d, evaluate, ex)
            finite = torch.isfinite(e)
            nonfinite = nonfinite | ~finite
            if accepted is None:
                n_acc = torch.zeros((), dtype=torch.float64, device=x.device)
            else:
                acc_count = acc_count + accepted
                n_acc = accepted.sum().to(torch.float64)
            rows.append(torch.stack([torch.where(finite, e, 0).sum(dtype=torch.float64),
                                     finite.sum().to(torch.float64), n_acc]))
        return (x, e, g, acc_count, nonfinite, torch.stack(rows),
                None if stream is None else stream.index)

    def _fused_step(self, x, chunk, counter=False):
        """The compiled ``chunk`` steps for chains like ``x``, as a function of the step's
        tensors. Called directly as an Inductor graph (:func:`_direct_fused`: no Dynamo
        frame and guards per call) when it traces; else through ``torch.compile``: one
        compiled function per (sampler class, chunk, shape, dtype, device, rng), each from
        its own copy of :meth:`_fused_body`'s code (torch.compile keeps its graphs per code
        object and allows only a few per object, so samplers used with many shapes would
        otherwise exhaust that limit)."""
        _, lay, der = self.energy._inputs(x)
        self._fused_inputs = (lay, der)
        key = (type(self), chunk, tuple(x.shape), x.dtype, x.device, counter)
        fn = _FUSED.get(key)
        if fn is None:
            body = BaseSampler._fused_body
            copy = types.FunctionType(body.__code__.replace(), body.__globals__, body.__name__,
                                      body.__defaults__, body.__closure__)
            fn = torch.compile(copy, fullgraph=True, dynamic=False)
            if len(_FUSED) >= 64:
                _FUSED.pop(next(iter(_FUSED)))
            _FUSED[key] = fn
        dynamo = functools.partial(fn, self)
        replay = []          # the last direct call of this sample() call, replayed cheaply

        def run(*args):
            if replay:
                out = replay[0](args)
                if out is not None:
                    return out
                replay.clear()
            out = _direct_fused(self, args, lay, der, replay)
            return dynamo(*args) if out is None else out
        return run

    # -- chains across processes ----------------------------------------------------------
    def _rank_stream(self, generator, gen, device, x, n_samples):
        """``(generator of this rank, (start, end) of its chains)`` under torch.distributed."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised torch.distributed process "
                               "group: launch with torchrun and call "
                               "torch.distributed.init_process_group() first")
        rank, world = dist.get_rank(), dist.get_world_size()
        total = (1 if x.dim() == 1 else x.shape[0]) if isinstance(x, torch.Tensor) else n_samples
        if total < world:
            raise ArgumentError(f"{total} chains cannot be split over {world} processes; give at "
                             f"least one chain per rank (n_samples or x's first dimension "
                             f"counts the chains of all ranks)")
        base, rest = divmod(total, world)
        start = rank * base + min(rank, rest)
        end = start + base + (rank < rest)
        if self.seed is not None and generator is None and self.generator is None:
            seed = self.seed
        else:                # one draw, equal on ranks whose streams were seeded alike
            seed = int(torch.randint(0, 2**62, (1,), generator=gen,
                                     device=gen.device if gen is not None else "cpu"))
        return torch.Generator(device=device).manual_seed(seed + rank), (start, end)

    def _finish_distributed(self, final, traj, kept_energy, stats, acc_count, nonfinite,
                            adjusted, chains, thin, return_trajectory, return_diagnostics,
                            gather, h_fixed, inv_mass):
        import torch.distributed as dist
        world = dist.get_world_size()
        counts = [None] * world
        dist.all_gather_object(counts, chains)
        total = sum(counts)
        need_all = gather or return_diagnostics
        all_final = _all_gather_rows(final, counts) if need_all else final
        all_traj = _all_gather_rows(traj, counts) if need_all else traj
        if return_diagnostics:
            for t in (kept_energy, stats):
                dist.all_reduce(t)
            acc_all = _all_gather_rows(acc_count, counts)
            bad_all = _all_gather_rows(nonfinite.to(torch.uint8), counts).bool()
            out, diag = self._finish(all_final, all_traj, kept_energy, stats, acc_all, bad_all,
                                     adjusted, total, thin, return_trajectory, True, h_fixed,
                                     inv_mass)
            if not gather:
                out = traj if return_trajectory else final
            return out, diag
        if not gather:
            return traj if return_trajectory else final
        return all_traj if return_trajectory else all_final


    def _check_mass(self, x):
        pass


_FUSED: dict = {}      # (sampler class, chunk, shape, dtype, device, rng) -> compiled steps


_DIRECT: dict = {}     # signature of a fused call -> (Inductor graph, tensor positions) or False
_SIMPLE = (bool, int, float, str, type(None))


_OUTSIDE_THE_STEP = frozenset({"seed", "n_warmup", "target_accept", "adapt_per_chain",
                               "adapt_mass", "_adapts"})    # read by sample() and warm-up only


def _plain_config(obj):
    """The plain Python attributes of ``obj`` (numbers, strings, None and tuples of them):
    what a traced step bakes in besides its tensors (Langevin's clamp, HMC's leapfrog
    count), hence part of the compiled graph's signature; settings that only ``sample()``
    and the eager warm-up read (the seed, adaptation) are left out, so that they compile
    nothing anew."""
    return tuple((k, v) for k, v in sorted(vars(obj).items())
                 if k not in _OUTSIDE_THE_STEP and (isinstance(v, _SIMPLE) or (
                     isinstance(v, tuple) and all(isinstance(i, _SIMPLE) for i in v))))


def _direct_fused(sampler, args, lay, der, replay=None):
    """:meth:`BaseSampler._fused_body` on ``args`` as an Inductor graph called directly,
    compiled once per signature (sampler and energy classes and plain attributes, the
    shapes, strides, dtypes and devices of every tensor, the Python values among the
    arguments); the energy's parameters and buffers, the layout and the parameter-only
    values are graph inputs. None when it does not apply (inside other compiled code)
    or the body does not trace; the caller then runs the ``torch.compile`` function.
    ``replay``, a list, receives a :class:`~torchebm.core._direct.Replay` of the call
    (for the next chunks of the same ``sample()`` call, whose ``lay``, ``der`` and
    parameters are fixed) when the arguments' leaves allow one."""
    from torch.utils._pytree import tree_flatten

    from ..core._direct import (Bound, Replay, compile_over_leaves, quick_leaves, signature,
                                state)
    energy = sampler.energy
    if torch.compiler.is_compiling():
        return None
    names, states = state(energy)
    leaves, spec = tree_flatten((args, lay, der))
    try:
        key = (type(sampler), _plain_config(sampler), type(energy), _plain_config(energy),
               names, signature(states), spec, signature(leaves))
        entry = _DIRECT.get(key)
    except TypeError:           # an unhashable Python value
        return None
    if entry is None:
        def body(tensors, tree):
            call_args, lay_t, der_t = tree
            bound = Bound(sampler, {"energy": Bound(energy, dict(zip(names, tensors))),
                                    "_fused_inputs": (lay_t, der_t)})
            return BaseSampler._fused_body(bound, *call_args)

        entry = compile_over_leaves(states, leaves, spec, body)
        if len(_DIRECT) >= 64:
            _DIRECT.pop(next(iter(_DIRECT)))
        _DIRECT[key] = entry
    if entry is False:
        return None
    compiled, positions = entry
    if replay is not None:
        arg_leaves = quick_leaves(args, [])
        count = len(arg_leaves)
        if count <= len(leaves) and all(a is b for a, b in zip(arg_leaves, leaves)):
            replay[:] = [Replay(compiled, states, arg_leaves, [p for p in positions if p < count],
                                [leaves[p] for p in positions if p >= count])]
    return compiled(*states, *[leaves[i] for i in positions])


def _chunk(period, most):
    """Steps per compiled call: the largest divisor of ``period`` (``thin`` when states are
    kept, so that kept steps end a call) that is at most ``most``; ``most`` when ``period``
    is 0 (nothing kept)."""
    return max(d for d in range(1, most + 1) if period % d == 0) if period else most


def _all_gather_rows(t, counts):
    """Concatenate every rank's ``t [counts[rank], ...]`` along dimension 0, in rank order."""
    import torch.distributed as dist
    most = max(counts)
    padded = t.new_zeros(most, *t.shape[1:])
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _Adaptive(BaseSampler):
    """Metropolis-adjusted samplers: step-size (dual averaging) and diagonal-mass adaptation."""

    def _setup_adaptation(self, target_accept, n_warmup, adapt_per_chain, adapt_mass, mass):
        if target_accept is not None and not (isinstance(target_accept, numbers.Real) and
                                              0 < target_accept < 1):
            raise ArgumentError(f"target_accept must be in (0, 1), got {target_accept!r}")
        if isinstance(n_warmup, bool) or not isinstance(n_warmup, numbers.Integral) or n_warmup < 0:
            raise ArgumentError(f"n_warmup must be an int >= 0, got {n_warmup!r}")
        if target_accept is not None and not isinstance(self.schedulers["step_size"],
                                                        ConstantScheduler):
            raise ArgumentError("a step-size schedule and target_accept both set the step size; "
                             "give a number as step_size (the initial value) with target_accept")
        self.target_accept = None if target_accept is None else float(target_accept)
        self.n_warmup, self.adapt_per_chain = int(n_warmup), bool(adapt_per_chain)
        self.adapt_mass = bool(adapt_mass)
        self._adapts = self.target_accept is not None or self.adapt_mass
        if mass is None:
            self.mass = None
        elif isinstance(mass, torch.Tensor):
            m = mass.detach()
            if m.dim() > 1 or m.numel() == 0 or not bool(torch.isfinite(m).all() and (m > 0).all()):
                raise ArgumentError(f"mass must be a positive number or a 1-D tensor of positive "
                                 f"finite values (the diagonal of the mass matrix), got {mass}")
            self.mass = mass.to(self._device) if self._device is not None else mass
        else:
            self.mass = _positive("mass", mass)
        n = _infer_dim(self.energy)
        if isinstance(self.mass, torch.Tensor) and n is not None and self.mass.numel() not in (1, n):
            raise ArgumentError(f"mass has {self.mass.numel()} entries but {type(self.energy).__name__}"
                             f" has dimension {n}; give one positive mass per dimension or a number")
        self.adapted_step_size = None
        self.adapted_inverse_mass = None

    def _check_mass(self, x):
        if isinstance(self.mass, torch.Tensor) and self.mass.numel() != 1:
            shape = tuple(x.shape[1:])
            if self.mass.numel() != (shape[-1] if shape else 1) and \
                    self.mass.numel() != math.prod(shape):
                raise ArgumentError(f"mass has {self.mass.numel()} entries but the state has shape "
                                 f"{shape}; give one positive mass per dimension "
                                 f"([{shape[-1]}]) or a number")

    def _inverse_mass(self, x):
        if self.mass is None:
            return None
        m = torch.as_tensor(self.mass, dtype=x.dtype, device=x.device)
        if m.numel() > 1 and m.numel() == math.prod(x.shape[1:]):
            m = m.reshape(x.shape[1:])
        return 1.0 / m

    def _warmup(self, state, gen, inv_mass):
        """Run ``n_warmup`` adapting steps; return ``(state, step size [chains or 1] or None,
        inv_mass)``."""
        x = state[0]
        size = x.shape[0] if self.adapt_per_chain else 1
        if self.n_warmup == 0:
            if self.adapted_step_size is None and self.adapted_inverse_mass is None:
                raise ArgumentError("n_warmup=0 reuses an earlier call's adaptation, but none ran "
                                 "yet: run sample() once with n_warmup >= 1 (set "
                                 "sampler.n_warmup), or pass target_accept=None")
            h = self.adapted_step_size
            if h is not None:
                if h.numel() not in (1, x.shape[0]):
                    h = h.mean().reshape(1)       # per-chain values for another chain count
                h = h.to(device=x.device, dtype=x.dtype)
            inv = self.adapted_inverse_mass if self.adapted_inverse_mass is not None else inv_mass
            return state, h, (inv.to(device=x.device, dtype=x.dtype) if inv is not None else None)
        h0 = float(self.adapted_step_size.mean()) if self.adapted_step_size is not None else \
            self.get_scheduled_value("step_size")
        da = _DualAveraging(torch.full((size,), h0, dtype=torch.float64, device=x.device),
                            self.target_accept) if self.target_accept is not None else None
        windows = _mass_windows(self.n_warmup) if self.adapt_mass else []
        ends = {end: start for start, end in windows}
        starts = {start for start, _ in windows}
        s1 = s2 = None
        count = 0
        h = torch.full((size,), h0, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            for m in range(self.n_warmup):
                if da is not None:
                    h = da.step_size.to(x.dtype)
                state, _, log_alpha = self._transition(state, gen, h, inv_mass)
                if da is not None:
                    p = torch.exp(log_alpha.to(torch.float64).clamp(max=0))
                    da.update(p if self.adapt_per_chain else p.mean().reshape(1))
                if windows:
                    if m in starts:
                        s1 = torch.zeros(state[0].shape[1:], dtype=torch.float64, device=x.device)
                        s2, count = torch.zeros_like(s1), 0
                    if s1 is not None:
                        xs = state[0].to(torch.float64)
                        s1 += xs.sum(0)
                        s2 += (xs * xs).sum(0)
                        count += xs.shape[0]
                    if m + 1 in ends and count > 1:
                        mean = s1 / count
                        var = (s2 - count * mean * mean).clamp_min(0) / (count - 1)
                        var = count / (count + 5.0) * var + 1e-3 * 5.0 / (count + 5.0)
                        inv_mass = var.to(x.dtype)
                        s1 = None
                        if da is not None:
                            da.restart(da.step_size)
        # without target_accept the step size stays the (scheduled) one: h None
        h = da.final.to(x.dtype) if da is not None else None
        self.adapted_step_size, self.adapted_inverse_mass = h, inv_mass
        return state, h, inv_mass


class LangevinDynamics(BaseSampler):
    """Unadjusted Langevin: ``x <- x - h grad E(x) + noise_scale sqrt(2 h) xi``, ``xi ~ N(0, I)``.

    The stationary law is biased by O(h) (see :class:`MALA` for an exact
    correction). Chains whose state or energy becomes NaN/inf are counted and
    reported (a ``RuntimeWarning`` and ``Diagnostics.nonfinite_chains``).

    Args:
        model / energy: any ``BaseEnergyFunction``.
        step_size: h > 0, a number or a schedule (:mod:`torchebm.samplers.schedulers`).
        noise_scale: scale of the injected noise (1 samples exp(-E)), > 0, or a schedule.
        decay: TorchEBM's unused damping argument; only 0 is accepted.
        clamp: ``(lo, hi)``: clamp every state into ``[lo, hi]`` after each step.
        dtype, device, seed, generator: see :class:`BaseSampler`.
        integrator: None or ``"euler_maruyama"`` (the only one here).

    Raises:
        ValueError: a non-positive or non-finite step size or noise scale, ``clamp``
            with ``lo >= hi``, a non-zero ``decay``, another integrator.
    """

    infers_dim = False    # as TorchEBM: Langevin needs dim (or x)
    _fused_chunk = 8

    def __init__(self, model=None, step_size=1e-2, noise_scale=1.0, decay: float = 0.0,
                 clamp=None, dtype=None, device=None, *, energy=None, seed=None, generator=None,
                 integrator=None):
        super().__init__(model, dtype, device, energy=energy, seed=seed, generator=generator)
        self._register_param("step_size", step_size)
        self._register_param("noise_scale", noise_scale)
        if decay != 0:
            raise ArgumentError(f"decay (damping) is not supported (TorchEBM ignores it); got "
                             f"{decay!r}, pass 0")
        if clamp is not None:
            if len(clamp) != 2 or not all(isinstance(c, numbers.Real) for c in clamp) or \
                    not clamp[0] < clamp[1]:
                raise ArgumentError(f"clamp min must be < max, got {clamp!r}; pass (min, max) "
                                 f"numbers")
            clamp = (float(clamp[0]), float(clamp[1]))
        self.clamp, self.decay = clamp, 0.0
        if integrator not in (None, "euler_maruyama"):
            raise ArgumentError(f"integrator {integrator!r} is not available: LangevinDynamics "
                             f"here uses 'euler_maruyama' only (TorchEBM's integrator registry "
                             f"is not part of this package)")
        self.integrator = "euler_maruyama"

    @property
    def noise_scale(self) -> float:
        return self.get_scheduled_value("noise_scale")

    def _draw(self, x, gen):
        return (_normal(x, gen),)

    def _extra(self):
        return self.get_scheduled_value("noise_scale")

    def _move(self, state, h, inv_mass, draws, evaluate, s):
        x, _, g = state
        (noise,) = draws
        hb = _bc(h, x)
        x = x - hb * g + s * _sqrt(2 * hb) * noise
        if self.clamp is not None:
            x = x.clamp(*self.clamp)
        e, g = evaluate(x)
        return (x, e, g), None, None


class MALA(_Adaptive):
    """Metropolis-adjusted Langevin: a Langevin proposal with an accept/reject step.

    Proposal ``y = x - h A grad E(x) + sqrt(2 h A) xi`` with ``A`` the inverse
    of the diagonal mass (1 by default): the chain leaves ``exp(-E)`` exactly
    invariant for any step size; about 0.57 acceptance is optimal in high
    dimension (Roberts & Rosenthal 1998).

    Args:
        model / energy: any ``BaseEnergyFunction``.
        step_size: h > 0 (the initial value when adapting), or a schedule.
        mass: diagonal mass (a number or ``[n]``), a preconditioner.
        target_accept: adapt h during ``n_warmup`` extra steps by dual averaging
            (Hoffman & Gelman 2014) to this mean acceptance probability (0.57 is
            the optimum for MALA). The adapted value is used for all of
            ``n_steps``, kept in ``adapted_step_size`` and reported in the diagnostics.
        n_warmup: warm-up steps per ``sample()`` call (only when adapting); they
            are not returned. A later call starts from the step size adapted
            before; ``n_warmup=0`` (``sampler.n_warmup = 0``) reuses the earlier
            step size and mass without adapting (e.g. in a training loop).
        adapt_per_chain: one step size per chain (``[chains]``) instead of one
            shared by all chains (adapted to their mean acceptance probability).
        adapt_mass: estimate the diagonal inverse mass from the warm-up variance,
            pooled over chains, in Stan's windows (regularised as Stan:
            ``n/(n+5) var + 1e-3 * 5/(n+5)``); the step size restarts after each window.
        dtype, device, seed, generator: see :class:`BaseSampler`.

    Raises:
        ValueError: a bad step size, mass, target_accept or n_warmup.
    """

    _fused_chunk = 4

    def __init__(self, model=None, step_size=1e-2, mass=None, dtype=None, device=None, *,
                 energy=None, seed=None, generator=None, target_accept=None,
                 n_warmup: int = 500, adapt_per_chain: bool = False, adapt_mass: bool = False):
        super().__init__(model, dtype, device, energy=energy, seed=seed, generator=generator)
        self._register_param("step_size", step_size)
        self._setup_adaptation(target_accept, n_warmup, adapt_per_chain, adapt_mass, mass)

    def _draw(self, x, gen):
        return _normal(x, gen), _uniform(x, gen)

    def _move(self, state, h, inv_mass, draws, evaluate, extra):
        x, e, g = state
        noise, u = draws
        hb = _bc(h, x)
        if inv_mass is None:
            y = x - hb * g + _sqrt(2 * hb) * noise
            ey, gy = evaluate(y)
            log_q_forward = -_flat_sum((y - x + hb * g) ** 2) / (4 * h)
            log_q_backward = -_flat_sum((x - y + hb * gy) ** 2) / (4 * h)
        else:
            a = inv_mass
            y = x - hb * a * g + _sqrt(2 * hb * a) * noise
            ey, gy = evaluate(y)
            log_q_forward = -_flat_sum((y - x + hb * a * g) ** 2 / a) / (4 * h)
            log_q_backward = -_flat_sum((x - y + hb * a * gy) ** 2 / a) / (4 * h)
        log_alpha = torch.nan_to_num(-ey + e + log_q_backward - log_q_forward, nan=-torch.inf)
        accept = torch.log(u) < log_alpha
        mask = _bc_bool(accept, x)
        x = torch.where(mask, y, x)
        e = torch.where(accept, ey, e)
        g = torch.where(mask, gy, g)
        return (x, e, g), accept, log_alpha


class HamiltonianMonteCarlo(_Adaptive):
    """HMC with leapfrog integration and an optional diagonal mass matrix (Neal 2011).

    Args:
        model / energy: any ``BaseEnergyFunction``.
        step_size: leapfrog step epsilon > 0 (the initial value when adapting), or a schedule.
        n_leapfrog_steps: leapfrog steps per proposal (>= 1).
        mass: diagonal of the mass matrix, a number or ``[n]`` (default 1).
        dtype, device: see :class:`BaseSampler`.
        target_accept, n_warmup, adapt_per_chain, adapt_mass, seed, generator:
            as in :class:`MALA` (0.65 is the usual HMC target, Beskos et al. 2013).
        integrator: None or ``"leapfrog"`` (the only one here).

    Raises:
        ValueError: ``step_size must be positive``, ``n_leapfrog_steps must be
            positive``, a mass of the wrong length or sign, another integrator.
    """

    def __init__(self, model=None, step_size=0.1, n_leapfrog_steps: int = 10, mass=None,
                 dtype=None, device=None, *, energy=None, seed=None, generator=None,
                 target_accept=None, n_warmup: int = 500, adapt_per_chain: bool = False,
                 adapt_mass: bool = False, integrator=None):
        super().__init__(model, dtype, device, energy=energy, seed=seed, generator=generator)
        self._register_param("step_size", step_size)
        if isinstance(n_leapfrog_steps, bool) or not isinstance(n_leapfrog_steps, numbers.Integral) \
                or n_leapfrog_steps <= 0:
            raise ArgumentError(f"n_leapfrog_steps must be positive, got {n_leapfrog_steps!r}")
        self.n_leapfrog_steps = int(n_leapfrog_steps)
        if integrator not in (None, "leapfrog"):
            raise ArgumentError(f"integrator {integrator!r} is not available: HamiltonianMonteCarlo "
                             f"here uses 'leapfrog' only (TorchEBM's integrator registry is not "
                             f"part of this package)")
        self.integrator = "leapfrog"
        self._setup_adaptation(target_accept, n_warmup, adapt_per_chain, adapt_mass, mass)

    @property
    def n_leapfrog(self):
        return self.n_leapfrog_steps

    def _draw(self, x, gen):
        return _normal(x, gen), _uniform(x, gen)

    def _move(self, state, h, inv_mass, draws, evaluate, extra):
        x, e, g = state
        p, u = draws
        a = 1.0 if inv_mass is None else inv_mass         # inverse mass
        if inv_mass is not None:
            p = p / torch.sqrt(a)
        kinetic0 = 0.5 * _flat_sum(p * p * a)
        eps = _bc(h, x)
        xn, gn, en = x, g, e
        p = p - 0.5 * eps * gn
        for k in range(self.n_leapfrog_steps):
            xn = xn + eps * p * a
            en, gn = evaluate(xn)
            if k < self.n_leapfrog_steps - 1:
                p = p - eps * gn
        p = p - 0.5 * eps * gn
        kinetic1 = 0.5 * _flat_sum(p * p * a)
        log_alpha = torch.nan_to_num(e + kinetic0 - en - kinetic1, nan=-torch.inf)
        accept = torch.log(u) < log_alpha
        mask = _bc_bool(accept, x)
        x = torch.where(mask, xn, x)
        e = torch.where(accept, en, e)
        g = torch.where(mask, gn, g)
        return (x, e, g), accept, log_alpha
