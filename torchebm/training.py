"""A small training loop: the one a user would otherwise write.

:func:`fit` shuffles the data into mini-batches each epoch, calls the loss,
steps the optimiser, shows the running loss in a tqdm bar and keeps the
history. It is not a framework: no checkpointing, no schedulers, no devices
beyond the data's. Write your own loop when you need more; see the source.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from .errors import ArgumentError



@dataclass
class History:
    """What :func:`fit` recorded: ``losses`` one float per optimiser step,
    ``epoch_losses`` their mean per epoch, ``stopped_early`` if a callback stopped it."""
    losses: list = field(default_factory=list)
    epoch_losses: list = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class StepInfo:
    """Handed to each callback after every optimiser step."""
    epoch: int            # 0-based
    step: int             # optimiser steps so far (1-based)
    loss: float
    energy: nn.Module
    optimizer: torch.optim.Optimizer
    extra: tuple = ()     # whatever the loss returned besides the loss (CD: the negatives)
    history: History | None = None


def _as_tensor_data(data):
    if isinstance(data, torch.Tensor):
        t = data
    elif callable(getattr(data, "get_data", None)):
        t = data.get_data()                   # torchebm.datasets
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        # (point, label) pairs, as TensorDataset gives: the point
        t = torch.stack([torch.as_tensor(it[0] if isinstance(it, (tuple, list)) else it)
                         for it in items]) if items else torch.empty(0)
    else:
        raise TypeError(f"data must be a tensor [N, n] or a Dataset, not {type(data).__name__}")
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[0] == 0 or \
            not t.is_floating_point():
        raise ArgumentError(f"data must be a floating tensor [N, n] with N >= 1, got "
                         f"{getattr(t, 'dtype', type(t).__name__)} of shape "
                         f"{tuple(getattr(t, 'shape', ()))}")
    return t


def fit(energy: nn.Module, data, loss, optimizer=None, epochs: int = 10,
        batch_size: int = 128, lr: float = 1e-2, callbacks=(), progress: bool | None = None,
        shuffle: bool = True, seed: int | None = None,
        generator: torch.Generator | None = None) -> History:
    """Train ``energy``'s parameters on ``data`` with ``loss``.

    Args:
        energy: the model (its ``parameters()`` are optimised).
        data: ``[N, n]`` tensor, a ``torchebm.datasets`` set, or any indexable
            ``Dataset`` of ``[n]`` points (of ``(point, ...)`` tuples, e.g. a
            ``TensorDataset``); kept on its device and dtype.
        loss: a callable of a batch ``[b, n]`` returning a scalar, or a tuple
            whose first element is the scalar (contrastive divergence's
            ``(loss, negatives)``), e.g. ``SlicedScoreMatching(energy)``. A step
            whose loss contrastive divergence replaced by its ``nonfinite_fallback``
            (``loss.last_loss_replaced``) takes no optimiser step.
        optimizer: an optimiser over ``energy.parameters()``, or an optimiser
            class (called with ``lr``); default ``torch.optim.Adam``.
        epochs: passes over the data.
        batch_size: points per step (the last batch of an epoch may be smaller).
        lr: learning rate when ``optimizer`` is a class or None.
        callbacks: callables of a :class:`StepInfo`, after every step; one that
            returns ``True`` stops training.
        progress: a tqdm bar with the running loss; default: when stderr is a terminal.
        shuffle: reshuffle the data each epoch.
        seed, generator: the shuffling's random source (and the loss's, for
            losses whose ``forward`` takes ``generator=``).

    Returns:
        :class:`History` (per-step and per-epoch losses).

    Raises:
        TypeError: a loss that is not callable, an optimiser that is not a
            ``torch.optim.Optimizer`` (or its class), or LBFGS (it needs a closure).
        ValueError: an energy without trainable parameters, empty data,
            non-positive ``epochs`` or ``batch_size``, a loss that is not a
            scalar tensor, a loss built on another energy (or with no graph to the
            parameters), an optimiser holding none of the energy's parameters, both
            ``seed`` and ``generator``, or a non-finite loss (the step that produced it is
            named; lower the learning rate or the sampler's step size), or an epoch
            whose every loss was contrastive divergence's ``nonfinite_fallback``
            (its sampler diverged at every update: nothing was learnt).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"fit: {name} must be a positive int, not {value!r}")
    params = [p for p in energy.parameters() if p.requires_grad]
    if not params:
        raise ArgumentError(f"fit: {type(energy).__name__} has no trainable parameters; "
                         f"compile it with trainable=True (or a list of names)")
    if not callable(loss):
        raise TypeError(f"fit: loss must be callable on a batch, not {type(loss).__name__}")
    x = _as_tensor_data(data)
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=lr)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(params, lr=lr)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer or its class, not "
                        f"{type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError("fit: LBFGS needs a closure that re-evaluates the loss at each of its "
                        "inner steps, which this loop does not run; use a first-order "
                        "optimiser (Adam, SGD) or write the LBFGS loop yourself")
    trained = set(map(id, params))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not held & trained:
        raise ArgumentError(f"fit: the optimiser holds none of {type(energy).__name__}'s trainable "
                         f"parameters, so training would change nothing; build it over "
                         f"energy.parameters()")
    if seed is not None and generator is not None:
        raise ArgumentError("fit: give seed= or generator=, not both")
    other = getattr(loss, "energy", None)
    if isinstance(other, nn.Module) and not set(map(id, other.parameters())) & trained:
        raise ArgumentError(
            f"fit: the loss trains another {type(other).__name__} than the energy given to fit "
            f"(they share no parameter), so the optimiser would never see a gradient; build "
            f"the loss on this energy (e.g. {type(loss).__name__}(energy))")
    if callable(callbacks):
        callbacks = (callbacks,)
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
    import inspect
    try:
        call = loss.forward if isinstance(loss, nn.Module) else loss
        takes_generator = "generator" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        takes_generator = False

    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm
    bar = tqdm(total=epochs * per_epoch, disable=not progress, desc="fit", leave=False)
    history = History()
    step = 0
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device) if shuffle else \
                torch.arange(n, device=x.device)
            total, replaced = 0.0, 0
            for start in range(0, n, batch_size):
                batch = x[order[start:start + batch_size]]
                optimizer.zero_grad(set_to_none=True)
                out = loss(batch, generator=generator) if takes_generator else loss(batch)
                value, extra = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
                if not isinstance(value, torch.Tensor) or value.dim() != 0:
                    raise ArgumentError(
                        f"fit: the loss returned {type(value).__name__} of shape "
                        f"{tuple(getattr(value, 'shape', ()))}; it must return a scalar tensor "
                        f"(or a tuple starting with one)")
                step += 1
                f = float(value.detach())
                if not math.isfinite(f):       # checked before the step: the weights stay finite
                    hint = ("the batch holds non-finite data" if not bool(torch.isfinite(
                        batch).all()) else "lower the learning rate (or the sampler's step "
                        "size for contrastive divergence)")
                    raise ArgumentError(f"fit: the loss is {f} at step {step} (epoch {epoch}); "
                                     f"{hint}. The parameters were not updated")
                if value.requires_grad:
                    value.backward()
                if all(p.grad is None for p in params):
                    raise ArgumentError(
                        f"fit: the loss at step {step} does not depend on the energy's "
                        f"parameters (no autograd graph reaches them); compute it from this "
                        f"energy (a loss built on another energy, or computed under "
                        f"torch.no_grad, has none). The parameters were not updated")
                if getattr(loss, "last_loss_replaced", False):
                    # contrastive divergence's non-finite fallback: no step at all (its
                    # zero gradient would still move Adam's momentum or weight decay)
                    replaced += 1
                else:
                    optimizer.step()
                history.losses.append(f)
                total += f * batch.shape[0]
                bar.update(1)
                bar.set_postfix(loss=f"{f:.4g}", epoch=epoch)
                info = StepInfo(epoch, step, f, energy, optimizer, extra, history)
                if any([cb(info) is True for cb in callbacks]):
                    history.stopped_early = True
                    history.epoch_losses.append(total / min(n, start + batch.shape[0]))
                    return history
            history.epoch_losses.append(total / n)
            if replaced and replaced == math.ceil(n / batch_size):
                # every loss of the epoch was contrastive divergence's non-finite fallback
                # (a constant of zero gradient): nothing is being learnt
                raise ArgumentError(
                    f"fit: every loss of epoch {epoch} was not finite and was replaced by "
                    f"{type(loss).__name__}'s nonfinite_fallback (zero gradient): the sampler "
                    f"diverges at every update; lower its step size (or the learning rate)")
    finally:
        bar.close()
    return history


__all__ = ["fit", "History", "StepInfo"]
