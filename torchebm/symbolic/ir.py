"""Frozen records handed between the stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParamDecl:
    """A declared parameter: how the generated constructor takes it.

    ``rank`` 0 is a scalar, 1 a vector, 2 a matrix. ``default`` is None for a
    required parameter. ``constraint`` is one of ``real``, ``positive``,
    ``positive_definite`` (checked by the generated constructor).
    """
    name: str
    rank: int = 0
    default: object = None
    doc: str = ""
    constraint: str = "real"
    shape: str = ""           # documentation of the shape, e.g. "[n]" or "[n, n]"


@dataclass(frozen=True)
class EnergySpec:
    """Everything the compiler needs to generate one energy class."""
    class_name: str
    formula: str
    params: tuple                      # of ParamDecl, in constructor order
    doc: str = ""
    references: tuple = ()
    origin: str = "<formula>"          # the definition file, or '<formula>'
    min_dim: int = 0                   # smallest n the energy is defined for
    max_dim: int | None = None         # largest n, or None
    summary: str = ""
    particles: int | None = None       # particle dimension d: x is N = n / d particles
    n_particles: int | None = None     # default particle count (constructor n_particles, dim)
    dim: int | None = None             # default dimension n (constructor dim)


@dataclass(frozen=True)
class GeneratedSource:
    """The emitted module: its text and the class it defines."""
    source: str
    class_name: str
    origin: str
    extra: dict = field(default_factory=dict, hash=False, compare=False)
