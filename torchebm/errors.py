"""The exceptions torchebm raises, one class per kind of fault.

Every exception that torchebm raises on purpose derives from
:class:`TorchEBMError`, and also from the builtin a user would catch for that
kind of fault, so ``except ValueError`` (or ``RuntimeError``, ``MemoryError``)
keeps working::

    TorchEBMError (Exception)
    ├── EnergySyntaxError (ValueError)    the formula language and definitions/*.toml
    ├── ParameterError (ValueError)       a parameter value: unknown, missing, of the
    │   │                                 wrong rank or shape, violating its constraint
    │   └── SingularMatrixError           inverse() of a singular matrix parameter
    ├── ShapeError (ValueError)           x or v whose shape or dimension n does not fit
    │                                     the formula or the parameters
    ├── ArgumentError (ValueError)        an argument of a sampler, loss, trainer, dataset
    │                                     or diagnostic outside its range
    ├── DeviceError (RuntimeError)        x and the parameters (or v) on different devices
    └── MemoryLimitError (MemoryError)    a guard that refuses to allocate: the Hessian
                                          above max_elements, a reduction over too many points

Each message says what was wrong and how to fix it. TypeError stays TypeError
(an argument of the wrong type, e.g. ``x`` that is not a tensor).

:class:`UnsetParameterWarning` (a ``UserWarning``) is issued for parameters that
were given no value and default to 1.0.
"""

from __future__ import annotations


class TorchEBMError(Exception):
    """Base of every exception torchebm raises on purpose.

    Attributes:
        message: what was wrong and how to fix it.
    """

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class EnergySyntaxError(TorchEBMError, ValueError):
    """A formula or definition outside the expression language (see docs/language.md).

    Attributes:
        message: what was wrong and how to fix it.
        source: the formula text, when the error points into it.
        lineno, col: 1-based line and 0-based column of the fault, or None.
    """

    def __init__(self, message: str, source: str | None = None,
                 lineno: int | None = None, col: int | None = None,
                 origin: str = "<formula>"):
        self.message = message
        self.source = source
        self.lineno = lineno
        self.col = col
        self.origin = origin
        ValueError.__init__(self, self._render())

    def _render(self) -> str:
        if self.source is None or self.lineno is None:
            return self.message
        lines = self.source.splitlines() or [""]
        line = lines[self.lineno - 1] if 0 < self.lineno <= len(lines) else ""
        col = self.col or 0
        if len(line) > 200:  # keep the caret readable for huge one-line formulas
            start = max(0, col - 60)
            line, col = line[start:start + 120], col - start
        caret = " " * max(col, 0) + "^"
        return (f"{self.origin}:{self.lineno}:{col + 1}: {self.message}\n"
                f"    {line}\n    {caret}")


class ParameterError(TorchEBMError, ValueError):
    """A parameter value that does not fit its energy: unknown or missing name, wrong
    rank or shape, a violated constraint (``positive``, ``positive_definite``)."""


class SingularMatrixError(ParameterError):
    """``inverse(M)`` of a matrix parameter that is singular."""


class ShapeError(TorchEBMError, ValueError):
    """``x`` (or a direction ``v``) whose shape or dimension ``n`` does not fit the
    formula or the parameters (``len(mu) != n``, an index past the end of ``x``)."""


class ArgumentError(TorchEBMError, ValueError):
    """An argument of a sampler, loss, trainer, dataset or diagnostic outside its range
    (a step size of 0, ``k_steps=0``, samples of no chain, ``n_projections < 1``)."""


class DeviceError(TorchEBMError, RuntimeError):
    """Tensors of one call on different devices (``x`` on CPU, parameters on CUDA), or a
    device that this machine does not have."""


class MemoryLimitError(TorchEBMError, MemoryError):
    """A guard refused to allocate: the Hessian above ``max_elements``, or a reduction
    over more index points than the runtime allows."""


class UnsetParameterWarning(UserWarning):
    """A formula's parameters were given no value and default to 1.0 (often a typo:
    ``sinx`` for ``sin(x)``, ``x1`` for ``x[1]``); ``strict=True`` makes it an error."""


__all__ = ["UnsetParameterWarning", "TorchEBMError", "EnergySyntaxError", "ParameterError", "SingularMatrixError",
           "ShapeError", "DeviceError", "MemoryLimitError"]
