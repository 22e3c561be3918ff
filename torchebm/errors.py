"""The one exception type for bad formulas and definitions.

Every rejection made by the compiler, from a syntax error to a parameter of
the wrong size, raises :class:`EnergySyntaxError`. It subclasses
``ValueError`` so that ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class EnergySyntaxError(ValueError):
    """A formula, parameter or definition that torchebm cannot compile.

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
        super().__init__(self._render())

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
