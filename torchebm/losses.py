"""Training losses for energy-based models.

Exact score matching (Hyvarinen, "Estimation of non-normalized statistical
models by score matching", JMLR 6, 2005, eq. 4): with the score
``psi(x) = -dE/dx``, the Fisher divergence to the data distribution equals,
up to a constant that does not depend on the model,

    ``J = E_data[ sum_i ( d psi_i / d x_i + psi_i^2 / 2 ) ]
        = E_data[ |dE/dx|^2 / 2 - laplacian E ]``

which needs no normalising constant and no samples from the model. Its cost
is the Laplacian: autograd needs ``n`` backward passes through the gradient's
graph, compiled energies compute it in closed form (``gradient_and_laplacian``).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ._losses_training import _require_samples
from .core.base import BaseEnergyFunction, CompiledEnergy
from .errors import ArgumentError


_HESSIAN_METHODS = ("exact", "approx")


def _defines_gradient(energy) -> bool:
    """True when a hand-written subclass overrides ``gradient`` (and not ``energy_and_gradient``)."""
    for klass in type(energy).__mro__:
        d = vars(klass)
        if klass is BaseEnergyFunction or "energy_and_gradient" in d:
            return False
        if "gradient" in d:
            return True
    return False


def _overrides(energy, name) -> bool:
    """True when a class below ``BaseEnergyFunction`` in the MRO defines ``name``."""
    if not isinstance(energy, BaseEnergyFunction):
        return False
    for klass in type(energy).__mro__:
        if klass is BaseEnergyFunction:
            return False
        if name in vars(klass):
            return True
    return False


def _accepts(fn, name) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_energy(energy):
    if isinstance(energy, nn.Module):
        return
    what = "a function" if callable(energy) else f"a {type(energy).__name__}"
    raise TypeError(f"energy must be a BaseEnergyFunction (or a torch.nn.Module mapping x "
                    f"[B, ...] to [B]), not {what}; wrap a function f in a module: "
                    f"class MyEnergy(BaseEnergyFunction): def forward(self, x): return f(x)")


def score_matching_loss(energy, x: torch.Tensor, reduction: str = "mean",
                        hessian_method: str = "exact", *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Hyvarinen's exact score-matching objective ``|dE/dx|^2 / 2 - laplacian E``.

    Dimension 0 of ``x`` is the batch; each sample ``x[b]`` may have any shape
    and counts as a vector of ``n = x[b].numel()`` entries (flattened for the
    closed forms and the Laplacian).

    Args:
        energy: a compiled energy (closed-form gradient and Laplacian, on
            ``x.reshape(B, n)``), or any :class:`~torchebm.core.BaseEnergyFunction`
            or ``nn.Module`` that maps ``x [B, ...]`` to ``[B]`` (autograd: one
            backward pass per entry for the Laplacian, which assumes samples do
            not interact, e.g. no batch norm). Hand-written overrides are used:
            ``gradient_and_laplacian`` (2-D ``x``, ``'exact'``), else ``gradient``,
            called with ``create_graph=True`` only if they accept it.
        x: data ``[B, ...]`` (a 1-D ``[n]`` is one sample).
        reduction: ``'mean'`` (over samples, a scalar), ``'sum'`` or ``'none'``
            (``[B]``, one value per sample).
        hessian_method: ``'exact'`` (the Laplacian) or ``'approx'`` (Hutchinson's
            unbiased estimate ``v^T H v`` with one Rademacher ``v`` per sample,
            Hutchinson 1990: one Hessian-vector product instead of ``n``
            passes; TorchEBM's ``'approx'`` is a finite-difference variant).
        generator: random stream for ``'approx'`` (default torch's global RNG).

    Returns:
        The loss, differentiable with respect to the energy's parameters.
        Its minimum over a model family that contains the data distribution
        is at that distribution (Hyvarinen 2005, Theorem 2); the value itself
        is the Fisher divergence minus a constant, so it can be negative.

    Raises:
        TypeError: an energy that is not a module (e.g. a plain function), or x
            that is not a floating tensor.
        ValueError: an energy whose output is not ``[B]``, or a 0-d ``x``.
        ValueError: an unknown ``reduction`` or ``hessian_method``.
    """
    _check_energy(energy)
    if reduction not in ("mean", "sum", "none"):
        raise ArgumentError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    if hessian_method not in _HESSIAN_METHODS:
        raise ArgumentError(f"hessian_method must be 'exact' or 'approx' (TorchEBM's "
                         f"names), not {hessian_method!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor [B, ...], not "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() == 0:
        raise ArgumentError("x is a 0-d tensor; give data of shape [B, ...] (dimension 0 is the batch)")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    _require_samples(x)
    batch = x.shape[0]
    if isinstance(energy, CompiledEnergy):
        xf = x.reshape(batch, -1)
        if hessian_method == "exact":
            grad, lap = energy.gradient_and_laplacian(xf, create_graph=True)
        else:
            grad = energy.gradient(xf, create_graph=True)
            v = _rademacher(xf, generator)
            lap = (v * energy.hessian_vector_product(xf, v, create_graph=True)).sum(-1)
        gsq = grad.square().sum(-1)
    elif x.dim() == 2 and hessian_method == "exact" and _overrides(energy, "gradient_and_laplacian"):
        kw = {"create_graph": True} if _accepts(energy.gradient_and_laplacian, "create_graph") else {}
        grad, lap = energy.gradient_and_laplacian(x, **kw)      # a hand-written closed form
        gsq = grad.square().sum(-1)
    else:
        gsq, lap = _autograd_terms(energy, x, hessian_method, generator)
    per_sample = 0.5 * gsq - lap
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _rademacher(x, generator):
    r = torch.randint(0, 2, x.shape, device=x.device, generator=generator)
    return (2 * r - 1).to(x.dtype)


def _autograd_terms(energy, x, hessian_method, generator):
    """``(|dE/dx|^2 [B], laplacian or its estimate [B])`` by autograd, x ``[B, ...]``."""
    batch = x.shape[0]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = energy(xg)
        if not isinstance(e, torch.Tensor) or tuple(e.shape) != (batch,):
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ArgumentError(
                f"{type(energy).__name__} returned {shape} for x of shape {tuple(x.shape)}; an "
                f"energy maps x [B, ...] to [B] (one value per sample: sum over the non-batch "
                f"dimensions, and squeeze a trailing 1)")
        if _defines_gradient(energy):
            kw = {"create_graph": True} if _accepts(energy.gradient, "create_graph") else {}
            grad = energy.gradient(xg, **kw)
            if tuple(grad.shape) != tuple(x.shape):
                raise ArgumentError(f"{type(energy).__name__}.gradient returned shape "
                                 f"{tuple(grad.shape)} for x of shape {tuple(x.shape)}")
        else:
            grad = torch.autograd.grad(e.sum(), xg, create_graph=True)[0]
        gf = grad.reshape(batch, -1)
        if not gf.requires_grad:         # constant in x: zero curvature
            return gf.square().sum(-1), torch.zeros(batch, dtype=x.dtype, device=x.device)
        if hessian_method == "approx":
            v = _rademacher(gf, generator)
            (hv,) = torch.autograd.grad((gf * v).sum(), xg, create_graph=True, allow_unused=True)
            lap = (v * hv.reshape(batch, -1)).sum(-1) if hv is not None else gf.new_zeros(batch)
        else:
            cols = []
            for i in range(gf.shape[1]):
                (h,) = torch.autograd.grad(gf[:, i].sum(), xg, create_graph=True,
                                           retain_graph=True, allow_unused=True)
                cols.append(h.reshape(batch, -1)[:, i] if h is not None else gf.new_zeros(batch))
            lap = torch.stack(cols, -1).sum(-1) if cols else gf.new_zeros(batch)
    return gf.square().sum(-1), lap


class ScoreMatching(nn.Module):
    """Exact score matching (Hyvarinen 2005) as a module: ``loss = ScoreMatching(E)(x)``.

    ``x: [B, ...]`` -> a scalar (``'mean'``); see :func:`score_matching_loss`.

    Args:
        energy / model: the energy (``model=`` is TorchEBM's keyword).
        hessian_method: ``'exact'`` or ``'approx'`` (TorchEBM's set).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        dtype, device: cast/move ``x`` to these before computing (default: as given).
        generator: random stream for ``'approx'``.

    Raises:
        TypeError: no energy, both ``energy`` and ``model``, or one that is not a module.
        ValueError: an unknown ``hessian_method`` or ``reduction``.
    """

    def __init__(self, energy=None, hessian_method: str = "exact", reduction: str = "mean",
                 dtype: torch.dtype | None = None, device=None, *, model=None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if energy is not None and model is not None and energy is not model:
            raise TypeError("give the energy once, as energy= or model= (TorchEBM's name)")
        energy = energy if energy is not None else model
        if energy is None:
            raise TypeError("ScoreMatching needs an energy: ScoreMatching(E) or ScoreMatching(model=E)")
        _check_energy(energy)
        if hessian_method not in _HESSIAN_METHODS:
            raise ArgumentError(f"hessian_method must be 'exact' or 'approx' (TorchEBM's "
                             f"names), not {hessian_method!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ArgumentError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, not {dtype!r}")
        self.energy = energy
        self.hessian_method, self.reduction = hessian_method, reduction
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.generator = generator

    @property
    def model(self):
        """The energy (TorchEBM's name for it)."""
        return self.energy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and (self.dtype is not None or self.device is not None):
            x = x.to(device=self.device if self.device is not None else x.device,
                     dtype=self.dtype if self.dtype is not None else x.dtype)
        return score_matching_loss(self.energy, x, self.reduction, self.hessian_method,
                                   generator=self.generator)


__all__ = ["ScoreMatching", "score_matching_loss"]


# training losses (contrastive divergence, sliced and denoising score matching)
from ._losses_training import (ContrastiveDivergence, DenoisingScoreMatching,  # noqa: E402
                               ParallelTemperingCD, PersistentContrastiveDivergence,
                               SlicedScoreMatching)

__all__ += ["ContrastiveDivergence", "PersistentContrastiveDivergence", "ParallelTemperingCD",
            "SlicedScoreMatching", "DenoisingScoreMatching"]
