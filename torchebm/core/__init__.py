"""Energies: the base classes and the built-ins (generated from definitions/)."""

from .base import BaseEnergyFunction as BaseEnergyFunction
from .base import CompiledEnergy as CompiledEnergy
