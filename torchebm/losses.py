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

import torch
from torch import nn

from .core.base import BaseEnergyFunction, CompiledEnergy
from .errors import EnergySyntaxError


def score_matching_loss(energy: BaseEnergyFunction, x: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Hyvarinen's exact score-matching objective ``|dE/dx|^2 / 2 - laplacian E``.

    Args:
        energy: a compiled energy (closed-form gradient and Laplacian) or any
            :class:`~torchebm.core.BaseEnergyFunction` (autograd: one backward
            pass per dimension for the Laplacian).
        x: data samples ``[..., n]``.
        reduction: ``'mean'`` (over samples, a scalar), ``'sum'`` or ``'none'``
            (``[...]``, one value per sample).

    Returns:
        The loss, differentiable with respect to the energy's parameters.
        Its minimum over a model family that contains the data distribution
        is at that distribution (Hyvarinen 2005, Theorem 2); the value itself
        is the Fisher divergence minus a constant, so it can be negative.

    Raises:
        EnergySyntaxError: an unknown ``reduction``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise EnergySyntaxError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    if isinstance(energy, CompiledEnergy):
        grad, lap = energy.gradient_and_laplacian(x, create_graph=True)
    else:
        grad = energy.gradient(x, create_graph=True)
        lap = energy.laplacian(x, create_graph=True)
    per_sample = 0.5 * grad.square().sum(-1) - lap
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


class ScoreMatching(nn.Module):
    """Exact score matching (Hyvarinen 2005) as a module: ``loss = ScoreMatching(E)(x)``.

    See :func:`score_matching_loss`; ``x: [..., n]`` -> a scalar (``'mean'``).
    """

    def __init__(self, energy: BaseEnergyFunction, reduction: str = "mean"):
        super().__init__()
        self.energy = energy
        self.reduction = reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return score_matching_loss(self.energy, x, self.reduction)


__all__ = ["ScoreMatching", "score_matching_loss"]


# training losses (contrastive divergence, sliced and denoising score matching)
from ._losses_training import (ContrastiveDivergence, DenoisingScoreMatching,  # noqa: E402
                               ParallelTemperingCD, PersistentContrastiveDivergence,
                               SlicedScoreMatching)

__all__ += ["ContrastiveDivergence", "PersistentContrastiveDivergence", "ParallelTemperingCD",
            "SlicedScoreMatching", "DenoisingScoreMatching"]
