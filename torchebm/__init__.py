"""torchebm: energy-based models with compiled, closed-form energies."""

from .errors import EnergySyntaxError as EnergySyntaxError

__version__ = "0.1.0"
