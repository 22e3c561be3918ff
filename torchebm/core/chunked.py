"""Bounded memory for wide formulas: an energy evaluated in chunks of its batch.

A compiled energy holds, for its widest sum, temporaries of ``batch * width``
elements (``width`` the sum's terms per sample: ``n`` for elementwise sums,
``N (N - 1) / 2`` for a pair sum over ``N`` particles). Above
``energy.max_level_elements`` a call raises ``MemoryLimitError`` rather than
asking the allocator for them. :class:`ChunkedEnergy` instead splits the batch
so that each chunk's widest sum holds at most ``max_level_elements`` elements,
calls the energy on each chunk and concatenates: every sample's value is the
same computation as in one call (chunks never mix samples), so results equal
the unchunked call, and peak memory is bounded by ``max_level_elements`` times
the few temporaries of the widest sum (times the element size) instead of
growing with the batch.

The split is over samples, not over the pairs of one sample: a single sample
whose widest sum exceeds the bound still raises ``MemoryLimitError``.
"""

from __future__ import annotations

import torch

from ..errors import MemoryLimitError, ParameterError
from .base import BaseEnergyFunction, CompiledEnergy, _as_batch, _as_direction


class ChunkedEnergy(BaseEnergyFunction):
    """``energy`` evaluated in chunks of at most ``max_level_elements`` sum terms.

    Args:
        energy: a compiled energy (``from_expression`` or a built-in).
        max_level_elements: the most elements one temporary of the widest sum may
            hold per call (default, and at most: ``energy.max_level_elements``); each
            chunk has ``max_level_elements // width`` samples.

    Methods take and return the shapes of the wrapped energy's: ``forward``
    ``x: [..., n] -> [...]``; ``gradient``, ``hessian_diagonal``
    ``[..., n] -> [..., n]``; ``energy_and_gradient`` and ``gradient_and_laplacian``
    pairs; ``hessian_vector_product(x, v)``; ``laplacian`` ``[..., n] -> [...]``.
    Samplers and losses accept it as an energy.

    Raises:
        TypeError: ``energy`` is not a compiled energy.
        ParameterError: ``max_level_elements`` is not a positive integer.
        MemoryLimitError (at a call): one sample's widest sum alone exceeds the bound.

    Example:
        >>> from torchebm.core import LennardJonesEnergy
        >>> lj = ChunkedEnergy(LennardJonesEnergy(n_particles=55), 78 * 1485)
        >>> lj.gradient(torch.randn(1000, 165)).shape     # 78 samples per chunk
        torch.Size([1000, 165])
    """

    def __init__(self, energy: CompiledEnergy, max_level_elements: int | None = None):
        super().__init__()
        if not isinstance(energy, CompiledEnergy):
            raise TypeError(f"ChunkedEnergy wraps a compiled energy (from_expression or a "
                            f"built-in), not {type(energy).__name__}")
        if max_level_elements is None:
            max_level_elements = energy.max_level_elements
        if (isinstance(max_level_elements, bool) or not isinstance(max_level_elements, int)
                or max_level_elements < 1):
            raise ParameterError(f"max_level_elements must be a positive integer, got "
                                 f"{max_level_elements!r:.40}")
        self.energy = energy
        self.max_level_elements = max_level_elements

    def extra_repr(self) -> str:
        return f"max_level_elements={self.max_level_elements}"

    def chunk_size(self, x: torch.Tensor) -> int:
        """Samples per chunk for ``x: [..., n]``: ``max_level_elements // width``.

        Raises:
            MemoryLimitError: one sample's widest sum is wider than the bound.
        """
        x = _as_batch(x)
        width = max(int(self.energy._get_layout(x)["width"]), 1)
        bound = min(self.max_level_elements, self.energy.max_level_elements)
        if width > bound:
            raise MemoryLimitError(
                f"one sample's widest sum has {width} terms at n = {x.shape[-1]}, more than "
                f"max_level_elements = {bound}; chunks split the batch, not one sample's "
                f"sum: raise max_level_elements (here and on the wrapped energy)")
        return bound // width

    def _run(self, method, x, *rest, **kwargs):
        x = _as_batch(x)
        batch = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        rest = [r.reshape(-1, r.shape[-1]) for r in rest]
        size = self.chunk_size(x)
        total = flat.shape[0]
        call = getattr(self.energy, method)
        # the wrapped energy's own guard would refuse the whole batch; each chunk fits
        if total <= size:
            outs = [call(flat, *rest, **kwargs)]
        else:
            outs = [call(flat[s:s + size], *(r[s:s + size] for r in rest), **kwargs)
                    for s in range(0, total, size)]
        single = not isinstance(outs[0], tuple)
        parts = [outs] if single else list(zip(*outs))
        joined = []
        for part in parts:
            out = part[0] if len(part) == 1 else torch.cat(part, 0)
            tail = out.shape[1:]                    # [] for energies, [n] for vectors
            joined.append(out.reshape(batch + tail))
        return joined[0] if single else tuple(joined)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of ``x: [..., n]`` -> ``[...]``, chunk by chunk."""
        return self._run("forward", x)

    def gradient(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Closed-form ``dE/dx``, ``[..., n] -> [..., n]``, chunk by chunk."""
        return self._run("gradient", x, create_graph=create_graph)

    def energy_and_gradient(self, x: torch.Tensor, create_graph: bool = False):
        """``(E [...], dE/dx [..., n])``, chunk by chunk."""
        return self._run("energy_and_gradient", x, create_graph=create_graph)

    def hessian_vector_product(self, x: torch.Tensor, v: torch.Tensor,
                               create_graph: bool = False) -> torch.Tensor:
        """``H(x) v`` of ``x, v: [..., n]`` -> ``[..., n]``, chunk by chunk.

        Raises:
            ShapeError: ``v`` whose shape differs from ``x``'s.
        """
        x = _as_batch(x)
        return self._run("hessian_vector_product", x, _as_direction(x, v),
                         create_graph=create_graph)

    def hessian_diagonal(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``d2E/dx_i^2``, ``[..., n] -> [..., n]``, chunk by chunk."""
        return self._run("hessian_diagonal", x, create_graph=create_graph)

    def laplacian(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Trace of the Hessian, ``[..., n] -> [...]``, chunk by chunk."""
        return self._run("laplacian", x, create_graph=create_graph)

    def gradient_and_laplacian(self, x: torch.Tensor, create_graph: bool = False):
        """``(dE/dx [..., n], laplacian [...])``, chunk by chunk."""
        return self._run("gradient_and_laplacian", x, create_graph=create_graph)


__all__ = ["ChunkedEnergy"]
