"""Training losses that need samples or derivatives inside the loss (re-exported by
:mod:`torchebm.losses`).

* Contrastive divergence (Hinton, "Training products of experts by minimizing
  contrastive divergence", Neural Computation 14, 2002): the gradient of the
  negative log-likelihood in the parameters is
  ``E_data[dE/dtheta] - E_model[dE/dtheta]``; CD-k estimates the second mean
  with ``k`` MCMC steps started at the data. Persistent CD (Tieleman, ICML
  2008) keeps the chains between updates (a replay buffer), parallel tempering
  CD (Desjardins et al., AISTATS 2010) runs chains at several temperatures and
  swaps them.
* Sliced score matching (Song, Garg, Shi, Ermon, UAI 2019, eq. 8): with the
  score ``s = -dE/dx`` and random projections ``v``,
  ``J = E_data E_v[ v^T (ds/dx) v + (v^T s)^2 / 2 ]
      = E_data E_v[ -v^T H v + (v^T g)^2 / 2 ]`` (``g = dE/dx``, ``H`` its
  Hessian).
* Denoising score matching (Vincent, Neural Computation 23, 2011, eq. 11):
  with ``x~ = x + sigma eps``, ``eps ~ N(0, I)``,
  ``J = E[ |s(x~) + eps / sigma|^2 / 2 ]`` (the score of the Gaussian
  perturbation kernel is ``-eps / sigma``).

Compiled energies give these losses their derivatives in closed form
(``gradient(create_graph=True)``, ``hessian_vector_product(create_graph=True)``);
hand-written :class:`~torchebm.core.BaseEnergyFunction` subclasses get them by
autograd, and so does any ``nn.Module`` mapping ``[B, ...]`` to ``[B]``. Every
loss is differentiable in the energy's parameters.

Constructor names and defaults follow TorchEBM's losses (``model=`` is
accepted for ``energy=``). Deliberate differences are listed in each class.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings

import torch
from torch import nn

from .core.base import BaseEnergyFunction, CompiledEnergy, _in_transform
from .errors import ArgumentError


# -- helpers ------------------------------------------------------------------------------------
def _pick_energy(cls, energy, model):
    if energy is not None and model is not None:
        raise ArgumentError(f"{cls} got both energy= and model=; they are the same "
                         f"argument (model= is TorchEBM's name), pass one")
    energy = model if energy is None else energy
    if energy is None:
        raise ArgumentError(f"{cls} needs the energy to train: {cls}(energy, ...) or "
                         f"{cls}(model=energy, ...)")
    if not isinstance(energy, nn.Module) and not callable(energy):
        raise TypeError(f"{cls}: the energy must be an nn.Module mapping x [B, ...] to [B], "
                        f"not {type(energy).__name__}")
    return energy


def _check_positive_int(cls, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{cls}: {name} must be a positive int, not {value!r}")


def _check_nonnegative(cls, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or not math.isfinite(value):
        raise ArgumentError(f"{cls}: {name} must be a finite number >= 0, not {value!r}")


def _to(x, dtype, device):
    """``x`` cast to the loss's ``dtype``/``device`` (when set), checked: a floating-point
    batch ``[B, ...]`` of at least one sample."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, ...], not {type(x).__name__}")
    if dtype is not None or device is not None:
        x = x.to(device=device if device is not None else x.device,
                 dtype=dtype if dtype is not None else x.dtype)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (data for a loss), not {x.dtype}; "
                        f"convert it with x.float() or x.double(), or give the loss dtype=")
    _require_samples(x)
    return x


def _require_samples(x):
    """Raise ValueError for a batch ``x: [B, ...]`` of no sample (or a 0-d tensor)."""
    if x.dim() == 0 or x.shape[0] == 0:
        raise ArgumentError(f"x holds no samples (shape {list(x.shape)}); a loss needs a batch "
                         f"[B, ...] with B >= 1")


def _energy_gradient(energy, x, create_graph=True):
    """``dE/dx`` of ``x: [B, ...]``; a graph through the parameters when ``create_graph``.

    Closed form for compiled energies, autograd otherwise.
    """
    if isinstance(energy, BaseEnergyFunction):
        return energy.gradient(x, create_graph=create_graph)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = energy(xg)
        (g,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph)
    return g


def _energy_hvp(energy, x, v):
    """``H(x) v`` with a graph through the parameters (closed form when compiled)."""
    if isinstance(energy, BaseEnergyFunction):
        return energy.hessian_vector_product(x, v, create_graph=True)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(xg).sum(), xg, create_graph=True)
        (hv,) = torch.autograd.grad(g, xg, v, create_graph=True)
    return hv


def _flat_sum(t):
    """Sum over every dimension but the first: ``[B, ...]`` -> ``[B]``."""
    return t.reshape(t.shape[0], -1).sum(-1)


def _regularization(loss_module, x):
    """TorchEBM's default regulariser: ``strength * mean_B |s(x)|^2``."""
    strength = loss_module.regularization_strength
    if strength <= 0:
        return None
    g = _energy_gradient(loss_module.energy, x, create_graph=True)
    return strength * _flat_sum(g.square()).mean()


# -- contrastive divergence ---------------------------------------------------------------------
def _closed_form_cd(energy, x, negatives, reg):
    """The CD loss whose backward is the closed-form parameter gradient, or None where
    autograd must build the graph (a hand-written energy, a formula without generated
    parameter adjoints, no trainable parameter, grad mode off, ``x`` that requires
    grad, or inside a ``torch.func`` transform).

    The loss ``mean E(x) - mean E(neg) + reg (mean E(x)^2 + mean E(neg)^2)`` has the
    parameter gradient ``sum_b w_b dE(x_b)/dtheta + sum_b u_b dE(neg_b)/dtheta`` with
    ``w = (1 + 2 reg E(x)) / B`` and ``u = (2 reg E(neg) - 1) / B'`` (Hinton 2002's
    ``mean dE/dtheta(data) - mean dE/dtheta(negatives)`` at ``reg = 0``). One call of
    the generated ``_parameter_gradient_sum`` per batch gives the energies and the
    weighted sum together (the weights ``a + c E`` are formed inside, once ``E`` is
    known; the batch is contracted inside the kernel), so no graph is recorded and
    the data are read once. Without the regulariser the loss is linear in the
    energies and needs only their weighted totals: the generated
    ``_parameter_gradient_total`` contracts the batch before a parameter matrix (the
    Gaussian's ``<P, G>``: one matrix product per batch instead of two) where the
    formula has one. The gradient is computed with the loss (training calls
    backward next), and the backward returns it times the incoming gradient.
    """
    if not (isinstance(energy, CompiledEnergy) and torch.is_grad_enabled()
            and not x.requires_grad and not negatives.requires_grad
            and x.dim() == 2 and negatives.dim() == 2):
        return None
    params = [(name, p) for name, p in energy.named_parameters() if p.requires_grad]
    if not params or _in_transform(x, negatives):
        return None
    energy._ensure_second_order()       # a from_expression class generates it on first use
    if getattr(type(energy), "_parameter_gradient_sum", None) is None:
        return None
    bp, bn = x.shape[0], negatives.shape[0]
    if reg > 0:
        (e_pos, e_neg), summed = energy._energy_and_parameter_gradient_sum(
            (x, (1.0 / bp, 2.0 * reg / bp)), (negatives, (-1.0 / bn, 2.0 * reg / bn)))
        loss = e_pos.mean() - e_neg.mean()
        loss = loss + reg * (e_pos.square().mean() + e_neg.square().mean())
    else:       # linear in the energies: only their weighted totals (contract.py)
        (t_pos, t_neg), summed = energy._energy_total_and_parameter_gradient_sum(
            (x, 1.0 / bp), (negatives, -1.0 / bn))
        loss = t_pos + t_neg
    grads = [summed[n] for n, _ in params]
    return _ClosedFormCD.apply(loss, grads, (energy, x, negatives, reg),
                               *[p for _, p in params])


def _textbook_cd_loss(energy, x, negatives, reg):
    """The CD loss through autograd of the energy (the double-backward route)."""
    e_pos, e_neg = energy(x), energy(negatives)
    loss = e_pos.mean() - e_neg.mean()
    if reg > 0:
        loss = loss + reg * (e_pos.square().mean() + e_neg.square().mean())
    return loss


class _ClosedFormCD(torch.autograd.Function):
    """``loss`` (a value computed without a graph) whose backward gives each parameter
    ``grad * dloss/dtheta`` from the closed-form gradients computed with it.

    The parameters are saved for backward, so changing one in place between the loss
    and ``backward()`` raises autograd's in-place error instead of returning the old
    gradient. With ``create_graph=True`` (a penalty on the parameter gradient) the
    backward differentiates the same loss through autograd, so the gradient it returns
    is itself differentiable."""

    @staticmethod
    def forward(ctx, loss, grads, textbook, *params):
        ctx.grads, ctx.textbook = grads, textbook
        ctx.save_for_backward(*params)          # version-checked when backward reads them
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        params = ctx.saved_tensors
        if torch.is_grad_enabled():             # create_graph=True: a differentiable result
            energy, x, negatives, reg = ctx.textbook
            loss = _textbook_cd_loss(energy, x, negatives, reg)
            grads = torch.autograd.grad(loss, params, grad, create_graph=True,
                                        allow_unused=True)
            return (None, None, None, *[torch.zeros_like(p) if g is None else g
                                        for p, g in zip(params, grads)])
        return (None, None, None, *[(grad * g).to(g.dtype) for g in ctx.grads])


class ContrastiveDivergence(nn.Module):
    """Contrastive divergence (CD-k, or persistent CD with ``persistent=True``).

    ``loss, negatives = ContrastiveDivergence(energy, sampler, k_steps=10)(x)``
    with data ``x: [B, n]``: the negatives ``[B, n]`` are ``k_steps`` steps of
    ``sampler`` started at the data (or, persistent, at ``B`` chains of a
    replay buffer of ``buffer_size``), and the loss is the scalar

        ``mean E(x) - mean E(negatives) + energy_reg_weight * (mean E(x)^2 + mean E(negatives)^2)``

    whose gradient in the parameters is Hinton's CD estimate
    ``mean dE/dtheta(x) - mean dE/dtheta(negatives)`` (plus the regulariser).
    The negatives are detached: no gradient flows through the sampler.

    Args:
        energy: the energy to train (``model=`` is the same argument).
        sampler: anything with ``sample(x=..., n_steps=...)`` returning the
            final states ``[B, n]`` (``torchebm.samplers``); called by keyword.
            Build it with ``generator=`` (or neither seed nor generator): a
            sampler built with ``seed=`` restarts its noise from that seed at
            every call, so every update would reuse the same noise.
        k_steps: sampler steps per update.
        persistent: keep chains in a replay buffer between updates (PCD).
        buffer_size: chains in the buffer (persistent only).
        init_steps: sampler steps run on the buffer when it is created.
        new_sample_ratio: fraction of the chains drawn from the buffer that get
            a Gaussian jitter of scale ``init_noise`` before sampling
            (TorchEBM's behaviour; it keeps chains from collapsing onto each other).
        energy_reg_weight: weight of the energy-magnitude regulariser
            (TorchEBM's default 0.001; pass 0 for the textbook CD loss).
        add_noise_to_real: perturb the data by ``noise_scale * N(0, I)`` in the
            positive term.
        noise_scale: scale of that perturbation.
        init_noise: standard deviation of the buffer's initial states ``N(0, init_noise^2 I)``.
        dtype, device: cast data to these; ``None`` (default) keeps ``x``'s.
        nonfinite_fallback: a non-finite loss is replaced by this constant
            (TorchEBM returns 0.1 so a diverged step does not poison the
            optimiser) and a ``RuntimeWarning`` names the problem; the
            replacement has zero gradient, and ``last_loss_replaced`` is True until
            the next loss. ``None`` returns the loss as is (required under
            ``torch.func.vmap``, which cannot branch on the value).

    Differences from TorchEBM: ``dtype``/``device`` default to the data's
    (TorchEBM casts to float32 on the CPU); a non-finite loss warns instead of
    being replaced silently; with a compiled energy the energies come from
    the generated closed-form code.

    Raises:
        ValueError: non-positive ``k_steps``/``buffer_size``, a negative
            weight or scale, both ``energy`` and ``model``, a sampler whose
            ``energy`` is another module than the one trained.
        RuntimeError: the loss under ``torch.func.vmap`` with a ``nonfinite_fallback``.
    """

    def __init__(self, energy=None, sampler=None, k_steps=10, persistent=False,
                 buffer_size=10000, init_steps=100, new_sample_ratio=0.05,
                 energy_reg_weight=0.001, add_noise_to_real=False, noise_scale=1e-4,
                 init_noise=0.01, dtype=None, device=None, nonfinite_fallback=0.1, *,
                 model=None):
        super().__init__()
        cls = type(self).__name__
        self.energy = _pick_energy(cls, energy, model)
        if sampler is None or not callable(getattr(sampler, "sample", None)):
            raise ArgumentError(f"{cls} needs a sampler with a sample(x=..., n_steps=...) "
                             f"method, e.g. torchebm.samplers.LangevinDynamics(energy, "
                             f"step_size=0.01); got {type(sampler).__name__}")
        target = getattr(sampler, "energy", None)
        if isinstance(target, nn.Module) and target is not self.energy:
            raise ArgumentError(
                f"{cls}: the sampler samples {type(target).__name__} (sampler.energy), not the "
                f"energy being trained ({type(self.energy).__name__}); its negatives would "
                f"not come from the model. Build the sampler on the same energy object")
        self.sampler = sampler
        _check_positive_int(cls, "k_steps", k_steps)
        _check_positive_int(cls, "buffer_size", buffer_size)
        if isinstance(init_steps, bool) or not isinstance(init_steps, int) or init_steps < 0:
            raise ArgumentError(f"{cls}: init_steps must be an int >= 0, not {init_steps!r}")
        for name, value in (("new_sample_ratio", new_sample_ratio),
                            ("energy_reg_weight", energy_reg_weight),
                            ("noise_scale", noise_scale), ("init_noise", init_noise)):
            _check_nonnegative(cls, name, value)
        if new_sample_ratio > 1:
            raise ArgumentError(f"{cls}: new_sample_ratio is a fraction in [0, 1], not "
                             f"{new_sample_ratio}")
        self.k_steps = k_steps
        self.persistent = bool(persistent)
        self.buffer_size = buffer_size
        self.init_steps = init_steps
        self.new_sample_ratio = new_sample_ratio
        self.energy_reg_weight = energy_reg_weight
        self.add_noise_to_real = add_noise_to_real
        self.noise_scale = noise_scale
        self.init_noise = init_noise
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.nonfinite_fallback = nonfinite_fallback
        self.register_buffer("replay_buffer", None)
        self.register_buffer("buffer_ptr", torch.tensor(0, dtype=torch.long))
        self.buffer_initialized = False

    # -- sampling -----------------------------------------------------------------------------
    def _sample(self, x, n_steps, generator=None):
        """``n_steps`` of the sampler from ``x``, by keyword; detached final states."""
        seed = getattr(self.sampler, "seed", None)
        if (generator is None and seed is not None and getattr(self.sampler, "generator", None)
                is None and not getattr(self, "_fixed_noise_warned", False)):
            self._fixed_noise_warned = True     # once per loss
            warnings.warn(
                f"{type(self).__name__}: the sampler was built with seed={seed!r} and no "
                f"generator, so it restarts its noise from that seed at every call and every "
                f"update draws the same noise. Build it with generator=torch.Generator()"
                f".manual_seed({seed!r}) instead, or pass generator= to this loss",
                RuntimeWarning, stacklevel=4)
        kwargs = {"x": x, "n_steps": n_steps}
        try:
            params = inspect.signature(self.sampler.sample).parameters
        except (TypeError, ValueError):
            params = {}
        if "progress" in params:
            kwargs["progress"] = False          # no bar per training step
        if generator is not None and "generator" in params:
            kwargs["generator"] = generator
        out = self.sampler.sample(**kwargs)
        if isinstance(out, tuple):              # (final, trajectory, ...) forms
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ArgumentError(
                f"{type(self).__name__}: the sampler returned "
                f"{getattr(out, 'shape', type(out).__name__)} for chains of shape "
                f"{tuple(x.shape)}; sample(x=..., n_steps=...) must return the final states")
        return out.detach()

    def initialize_buffer(self, data_shape_no_batch, buffer_chunk_size=1024,
                          init_noise_scale=None, generator=None, *, like=None):
        """Create the replay buffer ``[buffer_size, *data_shape_no_batch]``.

        Its states are ``N(0, init_noise^2 I)`` followed by ``init_steps``
        sampler steps (in chunks of ``buffer_chunk_size`` chains). Persistent
        only; returns the buffer (``None`` when not persistent).
        """
        if not self.persistent:
            return None
        if self.buffer_initialized:
            return self.replay_buffer
        like = like if like is not None else torch.empty(0, dtype=self.dtype or
                                                         torch.get_default_dtype(),
                                                         device=self.device)
        scale = self.init_noise if init_noise_scale is None else init_noise_scale
        buf = torch.randn((self.buffer_size,) + tuple(data_shape_no_batch), dtype=like.dtype,
                          device=like.device, generator=generator) * scale
        if self.init_steps > 0:
            for i in range(0, self.buffer_size, buffer_chunk_size):
                buf[i:i + buffer_chunk_size] = self._sample(buf[i:i + buffer_chunk_size],
                                                            self.init_steps, generator)
        self.replay_buffer = buf
        self.buffer_ptr = torch.zeros((), dtype=torch.long, device=buf.device)
        self.buffer_initialized = True
        return self.replay_buffer

    def get_start_points(self, x, generator=None):
        """Chain starts for the data batch ``x: [B, ...]``: the data (CD-k) or ``B``
        buffer chains (PCD), drawn stratified (one per stretch of ``buffer_size / B``)
        so no chain is used twice; with replacement, and a ``UserWarning``, when the
        buffer is smaller than the batch."""
        x = _to(x, self.dtype, self.device)
        if not self.persistent:
            return x.detach().clone()
        if not self.buffer_initialized:
            self.initialize_buffer(tuple(x.shape[1:]), generator=generator, like=x)
        if tuple(self.replay_buffer.shape[1:]) != tuple(x.shape[1:]):
            raise ArgumentError(
                f"{type(self).__name__}: the replay buffer holds states of shape "
                f"{tuple(self.replay_buffer.shape[1:])} but the data has shape "
                f"{tuple(x.shape[1:])}; use a new loss for data of another shape")
        batch = x.shape[0]
        dev = self.replay_buffer.device
        if self.buffer_size < batch:
            warnings.warn(f"Buffer size ({self.buffer_size}) is smaller than batch size "
                          f"({batch}). Sampling with replacement.", UserWarning, stacklevel=3)
            idx = torch.randint(0, self.buffer_size, (batch,), device=dev, generator=generator)
        else:
            stride = self.buffer_size // batch
            idx = torch.arange(batch, device=dev) * stride + torch.randint(
                0, stride, (batch,), device=dev, generator=generator)
        start = self.replay_buffer[idx].to(dtype=x.dtype, device=x.device)
        if self.new_sample_ratio > 0:
            k = max(1, int(batch * self.new_sample_ratio))
            pick = torch.randperm(batch, device=dev, generator=generator)[:k].to(x.device)
            start[pick] = start[pick] + self.init_noise * torch.randn(
                start[pick].shape, dtype=start.dtype, device=dev,
                generator=generator).to(x.device)
        return start

    def update_buffer(self, samples):
        """Write ``samples: [B, ...]`` into the buffer, first in first out."""
        if not self.persistent or not self.buffer_initialized:
            return
        samples = samples.detach().to(self.replay_buffer)
        b = samples.shape[0]
        ptr = int(self.buffer_ptr)
        if b >= self.buffer_size:
            self.replay_buffer.copy_(samples[-self.buffer_size:])
            self.buffer_ptr.zero_()
            return
        idx = (torch.arange(b, device=self.replay_buffer.device) + ptr) % self.buffer_size
        self.replay_buffer[idx] = samples
        self.buffer_ptr.fill_((ptr + b) % self.buffer_size)

    def negative_samples(self, x, generator=None):
        """The negatives for data ``x: [B, n]`` (updates the buffer when persistent)."""
        start = self.get_start_points(x, generator)
        negatives = self._sample(start, self.k_steps, generator)
        if self.persistent:
            # chains that diverged are not kept: they would restart there next time
            bad = ~torch.isfinite(negatives).all(dim=-1)
            if bool(bad.any()):
                fresh = self.init_noise * torch.randn(negatives.shape, dtype=negatives.dtype,
                                                      device=negatives.device,
                                                      generator=generator)
                self.update_buffer(torch.where(bad.unsqueeze(-1), fresh, negatives))
            else:
                self.update_buffer(negatives)
        return negatives

    # -- loss ------------------------------------------------------------------------------------
    def forward(self, x, generator=None):
        """``(loss [], negatives [B, n])`` for data ``x: [B, n]``."""
        x = _to(x, self.dtype, self.device)
        negatives = self.negative_samples(x, generator)
        return self.compute_loss(x, negatives, generator=generator), negatives

    def _finite(self, loss):
        """True if ``loss`` is finite; a clear error under ``torch.func.vmap``, where the
        fallback's branch on the value cannot be taken per member."""
        try:
            return bool(torch.isfinite(loss.detach()))
        except RuntimeError as e:
            if "vmap" not in str(e):
                raise
            raise RuntimeError(
                f"{type(self).__name__}: under torch.func.vmap the loss cannot be checked "
                f"for a non-finite value (nonfinite_fallback={self.nonfinite_fallback!r} "
                f"branches on it); build the loss with nonfinite_fallback=None (or set the "
                f"attribute) to vmap it") from e

    def compute_loss(self, x, pred_x, energy_reg_weight=None, add_noise_to_real=None,
                     noise_scale=None, generator=None):
        """The CD loss for positives ``x`` and negatives ``pred_x`` (both ``[B, n]``).

        ``energy_reg_weight``, ``add_noise_to_real``, ``noise_scale`` override
        the constructor's values for this call.
        """
        x = _to(x, self.dtype, self.device)
        pred_x = _to(pred_x, x.dtype, x.device).detach()
        reg = self.energy_reg_weight if energy_reg_weight is None else energy_reg_weight
        noisy = self.add_noise_to_real if add_noise_to_real is None else add_noise_to_real
        scale = self.noise_scale if noise_scale is None else noise_scale
        if noisy:
            x = x + scale * torch.randn(x.shape, dtype=x.dtype, device=x.device,
                                        generator=generator)
        loss = _closed_form_cd(self.energy, x, pred_x, reg)
        if loss is None:        # autograd (in the caller's grad mode: no graph under no_grad)
            loss = _textbook_cd_loss(self.energy, x, pred_x, reg)
            if torch.is_grad_enabled() and not loss.requires_grad:
                # no trainable parameter reaches the energy differentiably (a parameter
                # only in a condition): zero gradients rather than autograd's error
                loss = loss + sum((0.0 * p.sum() for p in self.energy.parameters()
                                   if p.requires_grad), torch.zeros((), dtype=loss.dtype,
                                                                    device=loss.device))
        self.last_loss_replaced = False
        if self.nonfinite_fallback is not None and not self._finite(loss):
            self.last_loss_replaced = True      # fit() stops an epoch made only of these
            warnings.warn(f"{type(self).__name__}: the loss is {float(loss.detach())} (a data or "
                          f"negative energy is not finite: the sampler diverged? lower its "
                          f"step size); it is replaced by {self.nonfinite_fallback}, "
                          f"with zero gradient", RuntimeWarning, stacklevel=2)
            # a constant with a zero (not NaN) gradient in every trainable parameter:
            # torch.where would backpropagate 0 * inf = NaN into them
            zero = sum((0.0 * p.sum() for p in self.energy.parameters() if p.requires_grad
                        and bool(torch.isfinite(p).all())), torch.zeros((), dtype=loss.dtype,
                                                                        device=loss.device))
            loss = zero + self.nonfinite_fallback
        return loss


class PersistentContrastiveDivergence(ContrastiveDivergence):
    """Persistent contrastive divergence (Tieleman 2008): :class:`ContrastiveDivergence`
    with ``persistent=True``; chains live in a replay buffer between updates.

    Defaults follow TorchEBM's class (``k_steps=1``, ``buffer_size=100``);
    the other arguments are :class:`ContrastiveDivergence`'s.
    """

    def __init__(self, energy=None, sampler=None, k_steps=1, buffer_size=100, init_steps=0,
                 new_sample_ratio=0.05, energy_reg_weight=0.001, *, model=None, **kwargs):
        if kwargs.pop("persistent", True) is not True:
            raise ArgumentError("PersistentContrastiveDivergence is persistent; use "
                             "ContrastiveDivergence for CD-k")
        super().__init__(energy, sampler, k_steps=k_steps, persistent=True,
                         buffer_size=buffer_size, init_steps=init_steps,
                         new_sample_ratio=new_sample_ratio,
                         energy_reg_weight=energy_reg_weight, model=model, **kwargs)


class _Tempered(BaseEnergyFunction):
    """``E(x) / T`` of an energy, keeping its closed-form gradient."""

    def __init__(self, energy, temperature):
        super().__init__()
        self.inner = energy
        self.temperature = float(temperature)

    def forward(self, x):
        return self.inner(x) / self.temperature

    def energy_and_gradient(self, x, create_graph=False):
        if isinstance(self.inner, BaseEnergyFunction):
            e, g = self.inner.energy_and_gradient(x, create_graph=create_graph)
            return e / self.temperature, g / self.temperature
        return super().energy_and_gradient(x, create_graph)


class ParallelTemperingCD(ContrastiveDivergence):
    """Contrastive divergence with parallel-tempering negatives (Desjardins et al. 2010).

    For data ``x: [B, n]`` one chain per sample runs at each temperature
    ``T`` in ``temps`` (sampling ``exp(-E / T)``), all started at the data.
    Every ``swap_every`` sampler steps, neighbouring temperatures ``T_i, T_j``
    exchange their states chain by chain with the Metropolis probability
    ``min(1, exp((1/T_i - 1/T_j) (E(x_i) - E(x_j))))``, which leaves the
    product of the tempered distributions invariant. The negatives are the
    states at ``T = 1`` after ``k_steps`` steps; the loss is
    :class:`ContrastiveDivergence`'s.

    Args:
        energy, sampler: as :class:`ContrastiveDivergence`; the sampler is
            copied per temperature with its ``energy`` (and ``model``) attribute
            set to ``E / T`` (``torchebm.samplers`` work so). The copies share
            the sampler's ``generator``; with ``seed=`` instead, every
            temperature would replay the same noise.
        temps: temperatures, one of them 1.0 (default ``(1.0, 2.0, 4.0)``;
            TorchEBM's placeholder class had ``[1.0, 0.5]``, a colder chain that
            cannot help the ``T = 1`` chain cross barriers).
        k_steps: sampler steps per chain (default 5, TorchEBM's ``k``).
        swap_every: sampler steps between swap rounds.

    Raises:
        ValueError: ``temps`` without 1.0 or with a non-positive value.
    """

    def __init__(self, energy=None, sampler=None, temps=(1.0, 2.0, 4.0), k_steps=5,
                 swap_every=1, energy_reg_weight=0.001, *, model=None, **kwargs):
        super().__init__(energy, sampler, k_steps=k_steps, persistent=False,
                         energy_reg_weight=energy_reg_weight, model=model, **kwargs)
        temps = [float(t) for t in temps]
        if not temps or any(not (t > 0 and math.isfinite(t)) for t in temps):
            raise ArgumentError(f"ParallelTemperingCD: temps must be positive finite "
                             f"numbers, not {temps}")
        if 1.0 not in temps:
            raise ArgumentError(f"ParallelTemperingCD: temps {temps} must include 1.0, "
                             f"the temperature whose chains give the negatives")
        _check_positive_int("ParallelTemperingCD", "swap_every", swap_every)
        self.temps = sorted(temps)
        self.swap_every = swap_every
        self.swap_acceptance = []       # per neighbouring pair, of the last call

    def _tempered_sampler(self, t):
        if t == 1.0:
            return self.sampler
        s = copy.copy(self.sampler)
        tempered = _Tempered(self.energy, t)
        for attr in ("energy", "model"):
            if hasattr(s, attr):
                setattr(s, attr, tempered)
        return s

    def negative_samples(self, x, generator=None):
        x = _to(x, self.dtype, self.device)
        samplers = [self._tempered_sampler(t) for t in self.temps]
        chains = [x.detach().clone() for _ in self.temps]
        accepted = [0.0] * (len(self.temps) - 1)
        attempts = [0] * (len(self.temps) - 1)
        rounds = 0
        done = 0
        while done < self.k_steps:
            steps = min(self.swap_every, self.k_steps - done)
            for i, s in enumerate(samplers):
                chains[i] = self._sample_with(s, chains[i], steps, generator)
            done += steps
            rounds += 1
            with torch.no_grad():
                energies = [self.energy(c).detach() for c in chains]
                # even pairs (0-1, 2-3, ...) in odd rounds, odd pairs in even rounds
                for i in range((rounds + 1) % 2, len(self.temps) - 1, 2):
                    j = i + 1
                    log_a = (1 / self.temps[i] - 1 / self.temps[j]) * (energies[i] - energies[j])
                    u = torch.rand(log_a.shape, dtype=log_a.dtype, device=log_a.device,
                                   generator=generator)
                    swap = torch.log(u) < log_a
                    accepted[i] += float(swap.double().mean())
                    attempts[i] += 1
                    mask = swap.reshape((-1,) + (1,) * (chains[i].dim() - 1))
                    chains[i], chains[j] = (torch.where(mask, chains[j], chains[i]),
                                            torch.where(mask, chains[i], chains[j]))
                    energies[i], energies[j] = (torch.where(swap, energies[j], energies[i]),
                                                torch.where(swap, energies[i], energies[j]))
        #: fraction of swaps accepted per neighbouring pair in the last call (nan: none tried)
        self.swap_acceptance = [a / n if n else float("nan") for a, n in zip(accepted, attempts)]
        return chains[self.temps.index(1.0)]

    def _sample_with(self, sampler, x, n_steps, generator):
        saved, self.sampler = self.sampler, sampler
        try:
            return self._sample(x, n_steps, generator)
        finally:
            self.sampler = saved


# -- score matching -----------------------------------------------------------------------------
class SlicedScoreMatching(nn.Module):
    """Sliced score matching (Song et al. 2019): ``loss = SlicedScoreMatching(E)(x)``.

    For data ``x: [B, n]`` and ``n_projections`` random vectors ``v`` per sample,

        ``loss = mean_B mean_v [ (v^T g)^2 / 2 - v^T H v ]``  (``g = dE/dx``, ``H = d2E/dx2``)

    which equals ``mean_B [ |g|^2 / 2 - tr H ]`` (exact score matching) in
    expectation over ``v`` (``E[v v^T] = I``). For a compiled energy ``g`` and
    ``H v`` come from the generated closed forms (one gradient and one batched
    Hessian-vector product, with a graph in the parameters), not from double
    backward; hand-written energies use autograd.

    Args:
        energy: the energy to train (``model=`` is the same argument).
        n_projections: random vectors per sample.
        projection_type: ``'rademacher'`` (entries +-1), ``'gaussian'``
            (``N(0, I)``) or ``'sphere'`` (uniform on the sphere of radius
            ``sqrt(n)``).
        regularization_strength: adds ``strength * mean |dE/dx|^2`` (TorchEBM's
            default regulariser).
        noise_scale: if > 0, the data are perturbed by ``noise_scale * N(0, I)`` first.
        dtype, device: cast data to these; ``None`` keeps ``x``'s.

    An unknown ``projection_type`` warns (``UserWarning``) and uses Rademacher
    vectors, as TorchEBM does; one assigned to the attribute later raises when
    vectors are drawn. Difference from TorchEBM: ``noise_scale`` (stored but
    unused by TorchEBM) perturbs the data.

    Raises:
        ValueError: ``n_projections < 1``, a negative strength or scale; an unknown
            ``projection_type`` set on the attribute, when vectors are drawn.
    """

    PROJECTION_TYPES = ("rademacher", "gaussian", "sphere")

    def __init__(self, energy=None, n_projections=5, projection_type="rademacher",
                 regularization_strength=0.0, noise_scale=0.0, dtype=None, device=None, *,
                 model=None):
        super().__init__()
        cls = type(self).__name__
        self.energy = _pick_energy(cls, energy, model)
        _check_positive_int(cls, "n_projections", n_projections)
        if projection_type not in self.PROJECTION_TYPES:
            # TorchEBM's contract: warn and use Rademacher vectors (the default, an
            # unbiased estimator of the same loss as every other type)
            warnings.warn(f"{cls}: Invalid projection_type {projection_type!r}: expected one "
                          f"of {list(self.PROJECTION_TYPES)}; using 'rademacher'",
                          UserWarning, stacklevel=2)
            projection_type = "rademacher"
        _check_nonnegative(cls, "regularization_strength", regularization_strength)
        _check_nonnegative(cls, "noise_scale", noise_scale)
        self.n_projections = n_projections
        self.projection_type = projection_type
        self.regularization_strength = regularization_strength
        self.noise_scale = noise_scale
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None

    @property
    def model(self):
        return self.energy

    def _get_random_projections(self, x, generator=None):
        """Random vectors of ``x``'s shape, dtype and device, of ``projection_type``."""
        if self.projection_type not in self.PROJECTION_TYPES:
            raise ArgumentError(f"{type(self).__name__}: projection_type must be one of "
                             f"{list(self.PROJECTION_TYPES)}, not {self.projection_type!r}")
        v = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        if self.projection_type == "rademacher":
            return torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
        if self.projection_type == "sphere":
            flat = v.reshape(v.shape[0], -1)
            flat = flat / flat.norm(dim=-1, keepdim=True) * math.sqrt(flat.shape[-1])
            return flat.reshape(v.shape)
        return v

    def forward(self, x, generator=None, projections=None):
        """The scalar loss for ``x: [B, n]``.

        ``projections: [n_projections, B, n]`` fixes the vectors (they are
        drawn with ``generator`` otherwise).
        """
        x = _to(x, self.dtype, self.device)
        if self.noise_scale > 0:
            x = x + self.noise_scale * torch.randn(x.shape, dtype=x.dtype, device=x.device,
                                                   generator=generator)
        loss = self.compute_loss(x, generator=generator, projections=projections)
        reg = _regularization(self, x)
        return loss if reg is None else loss + reg

    def compute_loss(self, x, generator=None, projections=None):
        """The sliced loss without regulariser or noise (see the class)."""
        x = _to(x, self.dtype, self.device)
        p = self.n_projections
        if projections is None:
            v = self._get_random_projections(x.unsqueeze(0).expand((p,) + x.shape), generator)
        else:
            if tuple(projections.shape) != (p,) + tuple(x.shape):
                raise ArgumentError(
                    f"projections have shape {tuple(projections.shape)}; expected "
                    f"[n_projections, *x.shape] = {(p,) + tuple(x.shape)}")
            v = projections.to(dtype=x.dtype, device=x.device)
        g = _energy_gradient(self.energy, x, create_graph=True)          # [B, n]
        energy = self.energy
        if isinstance(energy, CompiledEnergy) and x.dim() == 2:
            # the generated product broadcasts x [1, B, n] against v [P, B, n] (as the
            # Hessian does with unit vectors): what depends on x alone is computed once
            xb, lay, der = energy._inputs(x, second=True)
            hv = energy._call("_hessian_vector_product", xb.unsqueeze(0), v, lay, der)
            vhv = torch.linalg.vecdot(v, hv)                              # [P, B]
        else:
            xs = x.unsqueeze(0).expand_as(v).reshape((-1,) + tuple(x.shape[1:]))
            vs = v.reshape(xs.shape)
            hv = _energy_hvp(energy, xs, vs)                              # [P B, n]
            vhv = _flat_sum(vs * hv).reshape(p, x.shape[0])
        vg = (v * g.unsqueeze(0)).reshape(p, x.shape[0], -1).sum(-1)
        return (0.5 * vg.square() - vhv).mean()


class DenoisingScoreMatching(nn.Module):
    """Denoising score matching (Vincent 2011): ``loss = DenoisingScoreMatching(E, 0.1)(x)``.

    For data ``x: [B, ...]`` and ``eps ~ N(0, I)``, ``x~ = x + noise_scale * eps``:

        ``loss = mean_B |s(x~) + eps / noise_scale|^2 / 2``,  ``s = -dE/dx``

    (the target ``-eps / noise_scale = -(x~ - x) / noise_scale^2`` is the score
    of the Gaussian perturbation kernel). Its minimiser is the score of the
    data smoothed by that kernel. ``s`` is the closed-form gradient for a
    compiled energy (with a graph in the parameters), autograd otherwise.

    Args:
        energy: the energy to train (``model=`` is the same argument).
        noise_scale: the perturbation's standard deviation (> 0).
        regularization_strength: adds ``strength * mean |dE/dx(x)|^2``.
        dtype, device: cast data to these; ``None`` keeps ``x``'s.

    Raises:
        ValueError: ``noise_scale <= 0``.
    """

    def __init__(self, energy=None, noise_scale=0.01, regularization_strength=0.0, dtype=None,
                 device=None, *, model=None):
        super().__init__()
        cls = type(self).__name__
        self.energy = _pick_energy(cls, energy, model)
        _check_nonnegative(cls, "noise_scale", noise_scale)
        if noise_scale == 0:
            raise ArgumentError(f"{cls}: noise_scale must be > 0 (the target score "
                             f"divides by it)")
        _check_nonnegative(cls, "regularization_strength", regularization_strength)
        self.noise_scale = noise_scale
        self.regularization_strength = regularization_strength
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None

    @property
    def model(self):
        return self.energy

    def forward(self, x, generator=None, noise=None):
        """The scalar loss for ``x: [B, ...]``; ``noise`` (``eps``, the shape of ``x``)
        fixes the standard normal draw."""
        x = _to(x, self.dtype, self.device)
        loss = self.compute_loss(x, generator=generator, noise=noise)
        reg = _regularization(self, x)
        return loss if reg is None else loss + reg

    def compute_loss(self, x, generator=None, noise=None):
        x = _to(x, self.dtype, self.device)
        if noise is None:
            eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        else:
            if tuple(noise.shape) != tuple(x.shape):
                raise ArgumentError(f"noise has shape {tuple(noise.shape)}; it must have "
                                 f"x's shape {tuple(x.shape)}")
            eps = noise.to(dtype=x.dtype, device=x.device)
        sigma = self.noise_scale
        g = _energy_gradient(self.energy, x + sigma * eps, create_graph=True)
        return 0.5 * _flat_sum((eps / sigma - g).square()).mean()


# ``model`` is TorchEBM's attribute name for the trained energy
ContrastiveDivergence.model = property(lambda self: self.energy)

__all__ = ["ContrastiveDivergence", "PersistentContrastiveDivergence", "ParallelTemperingCD",
           "SlicedScoreMatching", "DenoisingScoreMatching"]
