"""Standard 2-D toy data sets for training and checking energy-based models.

Each class is a ``torch.utils.data.Dataset`` of ``n_samples`` points ``[2]``
drawn once at construction (``seed`` makes the draw reproducible, from its own
``torch.Generator``; the global RNG is untouched). ``get_data()`` returns the
whole ``[n_samples, 2]`` tensor. Names and defaults follow TorchEBM's
``torchebm.datasets``; the generators are written from their geometric
definitions:

* ``EightGaussiansDataset``: equal mixture of 8 isotropic Gaussians (std
  ``std``) with means ``scale * (cos t, sin t)``, ``t = k pi / 4``.
* ``TwoMoonsDataset``: the upper half circle of radius 1 centred at the
  origin and the lower one centred at ``(1, 0.5)`` (scikit-learn's
  ``make_moons`` geometry), plus ``N(0, noise^2)``.
* ``SwissRollDataset``: ``t (cos t, sin t) / (arclength pi)`` for
  ``t = 1.5 pi (1 + 2 u)``, ``u ~ U(0, 1)`` (scikit-learn's ``make_swiss_roll``
  in the plane), plus ``N(0, noise^2)``.
* ``CircleDataset``: uniform on the circle of radius ``radius``, plus noise.
* ``CheckerboardDataset``: uniform on the 8 black squares of a 4 x 4 board
  covering ``[-range_limit, range_limit]^2``, plus noise.
* ``PinwheelDataset``: ``n_classes`` Gaussian blades, each stretched along the
  radius and twisted by an angle growing with the distance along the blade.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from .errors import ArgumentError



class _Toy2D(Dataset):
    """Common part: validation, the generator, storage and the Dataset protocol."""

    def __init__(self, n_samples, device=None, dtype=torch.float32, seed=None):
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ArgumentError(f"{type(self).__name__}: n_samples must be a positive int, "
                             f"not {n_samples!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ArgumentError(f"{type(self).__name__}: dtype must be a floating torch "
                             f"dtype, not {dtype!r}")
        self.n_samples = n_samples
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._gen = torch.Generator()
        if seed is not None:
            self._gen.manual_seed(int(seed))
        else:
            self._gen.seed()
        data = self._generate().to(torch.float64)
        self.data = data.to(device=self.device, dtype=dtype)

    def _randn(self, *shape):
        return torch.randn(*shape, generator=self._gen, dtype=torch.float64)

    def _rand(self, *shape):
        return torch.rand(*shape, generator=self._gen, dtype=torch.float64)

    def _check(self, **values):
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ArgumentError(f"{type(self).__name__}: {name} must be a finite "
                                 f"number >= 0, not {value!r}")

    def _generate(self) -> torch.Tensor:
        raise NotImplementedError

    def get_data(self) -> torch.Tensor:
        """All points, ``[n_samples, 2]``."""
        return self.data

    def __len__(self):
        return self.n_samples

    def __getitem__(self, i):
        return self.data[i]

    def __repr__(self):
        return f"{type(self).__name__}(n_samples={self.n_samples}, seed={self.seed})"


class EightGaussiansDataset(_Toy2D):
    """Eight Gaussians of std ``std`` on the circle of radius ``scale`` (at angles k pi/4)."""

    def __init__(self, n_samples=2000, std=0.02, scale=2.0, device=None, dtype=torch.float32,
                 seed=None):
        self._check(std=std, scale=scale)
        self.std, self.scale = std, scale
        super().__init__(n_samples, device, dtype, seed)

    @property
    def centers(self) -> torch.Tensor:
        """The eight means ``[8, 2]``."""
        t = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        return self.scale * torch.stack([torch.cos(t), torch.sin(t)], -1)

    def _generate(self):
        k = torch.randint(0, 8, (self.n_samples,), generator=self._gen)
        return self.centers[k] + self.std * self._randn(self.n_samples, 2)


class TwoMoonsDataset(_Toy2D):
    """Two interleaved half circles of radius 1 plus ``N(0, noise^2)``."""

    def __init__(self, n_samples=2000, noise=0.05, device=None, dtype=torch.float32, seed=None):
        self._check(noise=noise)
        self.noise = noise
        super().__init__(n_samples, device, dtype, seed)

    def _generate(self):
        n_out = self.n_samples // 2
        n_in = self.n_samples - n_out
        t_out = math.pi * self._rand(n_out)
        t_in = math.pi * self._rand(n_in)
        outer = torch.stack([torch.cos(t_out), torch.sin(t_out)], -1)
        inner = torch.stack([1 - torch.cos(t_in), 0.5 - torch.sin(t_in)], -1)
        pts = torch.cat([outer, inner])
        pts = pts[torch.randperm(self.n_samples, generator=self._gen)]
        return pts + self.noise * self._randn(self.n_samples, 2)


class SwissRollDataset(_Toy2D):
    """A planar Swiss roll: ``t (cos t, sin t) / (arclength pi)`` for ``t`` uniform in
    ``[1.5 pi, 4.5 pi]``, plus ``N(0, noise^2)`` (a roll of radius about 1.4 for
    the default ``arclength = 3``)."""

    def __init__(self, n_samples=2000, noise=0.05, arclength=3.0, device=None,
                 dtype=torch.float32, seed=None):
        self._check(noise=noise, arclength=arclength)
        if arclength == 0:
            raise ArgumentError("SwissRollDataset: arclength must be > 0")
        self.noise, self.arclength = noise, arclength
        super().__init__(n_samples, device, dtype, seed)

    def _generate(self):
        t = 1.5 * math.pi * (1 + 2 * self._rand(self.n_samples))
        pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], -1) / (self.arclength * math.pi)
        return pts + self.noise * self._randn(self.n_samples, 2)


class CircleDataset(_Toy2D):
    """Uniform on the circle of radius ``radius``, plus ``N(0, noise^2)``."""

    def __init__(self, n_samples=2000, noise=0.05, radius=1.0, device=None,
                 dtype=torch.float32, seed=None):
        self._check(noise=noise, radius=radius)
        self.noise, self.radius = noise, radius
        super().__init__(n_samples, device, dtype, seed)

    def _generate(self):
        t = 2 * math.pi * self._rand(self.n_samples)
        pts = self.radius * torch.stack([torch.cos(t), torch.sin(t)], -1)
        return pts + self.noise * self._randn(self.n_samples, 2)


class CheckerboardDataset(_Toy2D):
    """Uniform on the 8 squares ``(i + j)`` even of a 4 x 4 board on
    ``[-range_limit, range_limit]^2``, plus ``N(0, noise^2)``."""

    def __init__(self, n_samples=2000, range_limit=4.0, noise=0.01, device=None,
                 dtype=torch.float32, seed=None):
        self._check(range_limit=range_limit, noise=noise)
        if range_limit == 0:
            raise ArgumentError("CheckerboardDataset: range_limit must be > 0")
        self.range_limit, self.noise = range_limit, noise
        super().__init__(n_samples, device, dtype, seed)

    def _generate(self):
        cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                             dtype=torch.float64)
        k = torch.randint(0, len(cells), (self.n_samples,), generator=self._gen)
        side = 2 * self.range_limit / 4
        corner = -self.range_limit + side * cells[k]
        pts = corner + side * self._rand(self.n_samples, 2)
        return pts + self.noise * self._randn(self.n_samples, 2)


class PinwheelDataset(_Toy2D):
    """``n_classes`` twisted Gaussian blades.

    A point of blade ``c`` has radial coordinate ``r = radial_scale (1 + 0.3 z1)``
    and tangential offset ``a = angular_scale z2`` (``z1, z2 ~ N(0, 1)``), rotated
    by ``2 pi c / n_classes + spiral_scale * noise * (r - radial_scale)`` (the
    twist grows along the blade), plus ``N(0, noise^2)``.
    """

    def __init__(self, n_samples=2000, n_classes=5, noise=0.05, radial_scale=2.0,
                 angular_scale=0.1, spiral_scale=5.0, device=None, dtype=torch.float32,
                 seed=None):
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ArgumentError(f"PinwheelDataset: n_classes must be a positive int, not "
                             f"{n_classes!r}")
        self._check(noise=noise, radial_scale=radial_scale, angular_scale=angular_scale,
                    spiral_scale=spiral_scale)
        self.n_classes, self.noise = n_classes, noise
        self.radial_scale, self.angular_scale = radial_scale, angular_scale
        self.spiral_scale = spiral_scale
        super().__init__(n_samples, device, dtype, seed)

    def _generate(self):
        n = self.n_samples
        c = torch.randint(0, self.n_classes, (n,), generator=self._gen).to(torch.float64)
        # along the blade: radius around radial_scale; across it: angular_scale
        along = self.radial_scale + self.radial_scale * 0.3 * self._randn(n)
        across = self.angular_scale * self._randn(n)
        # twist: the angle grows with the distance travelled along the blade
        angle = 2 * math.pi * c / self.n_classes + self.spiral_scale * self.noise * (
            along - self.radial_scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        pts = torch.stack([along * cos - across * sin, along * sin + across * cos], -1)
        return pts + self.noise * self._randn(n, 2)


__all__ = ["EightGaussiansDataset", "TwoMoonsDataset", "SwissRollDataset", "CircleDataset",
           "CheckerboardDataset", "PinwheelDataset"]
