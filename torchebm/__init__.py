"""torchebm: energy-based models with compiled, closed-form energies."""

from .errors import ArgumentError as ArgumentError
from .errors import DeviceError as DeviceError
from .errors import EnergySyntaxError as EnergySyntaxError
from .errors import MemoryLimitError as MemoryLimitError
from .errors import ParameterError as ParameterError
from .errors import ShapeError as ShapeError
from .errors import SingularMatrixError as SingularMatrixError
from .errors import TorchEBMError as TorchEBMError
from .errors import UnsetParameterWarning as UnsetParameterWarning

__version__ = "0.1.0"
