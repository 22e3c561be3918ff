"""Energies: the base classes and the built-ins (generated from definitions/).

Importing this module does not import SymPy: the built-ins are committed,
generated Python (see ``definitions/`` and ``torchebm-codegen build``).
"""

from ._generated import *  # noqa: F401,F403  (the built-in energies)
from ._generated import __all__ as _builtins
from .base import BaseEnergyFunction as BaseEnergyFunction
from .base import CompiledEnergy as CompiledEnergy
from .chunked import ChunkedEnergy as ChunkedEnergy

__all__ = ["BaseEnergyFunction", "CompiledEnergy", "ChunkedEnergy", *_builtins]
