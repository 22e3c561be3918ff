"""A SymPy expression as input: printed back into the language, then parsed as text.

Going through the text means a SymPy expression meets exactly the same
whitelist as a formula string: anything the language cannot say (a
``Derivative``, an ``Integral``, a ``Matrix``...) is refused by name.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.str import StrPrinter

from ..errors import EnergySyntaxError
from . import functions as F
from .symbols import X

_NAMES = {sp.Abs: "abs", sp.sign: "sign", sp.loggamma: "lgamma", log1p: "log1p",
          expm1: "expm1", F.Sigmoid: "sigmoid", F.Softplus: "softplus", F.LogNdtr: "log_ndtr",
          F.LogAddExp: "logaddexp", F.Maximum: "maximum", F.Minimum: "minimum",
          F.Sign: "sign", F.SafeSqrt: "sqrt", F.Hypot: "hypot", sp.Max: "maximum", sp.Min: "minimum"}
_PLAIN = {"sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh",
          "acosh", "atanh", "exp", "log", "erf", "erfc"}


class _LanguagePrinter(StrPrinter):
    def _print_Symbol(self, e):
        if not e.name.isidentifier():
            raise EnergySyntaxError(f"the symbol name {e.name!r} is not a valid identifier")
        return e.name

    def _print_Indexed(self, e):
        return f"{e.base.label}[{', '.join(self._print(i) for i in e.indices)}]"

    def _print_Float(self, e):
        return repr(float(e))

    def _print_Rational(self, e):
        return f"({e.p}/{e.q})"

    def _print_Exp1(self, e):
        return "e"

    def _print_Pi(self, e):
        return "pi"

    def _print_Pow(self, e, rational=False):
        if e.exp == sp.S.Half:
            return f"sqrt({self._print(e.base)})"
        return f"({self._print(e.base)})**({self._print(e.exp)})"

    def _reduce(self, name, e):
        fors = " ".join(f"for {self._print(v)} in range({self._print(lo)}, {self._print(hi + 1)})"
                        for v, lo, hi in reversed(e.limits))
        return f"{name}({self._print(e.function)} {fors})"

    def _print_Sum(self, e):
        return self._reduce("sum", e)

    def _print_Product(self, e):
        return self._reduce("prod", e)

    def _print_LogSumExp(self, e):
        return self._reduce("logsumexp", e)

    def _print_Piecewise(self, e):
        *pairs, (last, cond) = e.args
        if cond != sp.true:
            raise EnergySyntaxError("a Piecewise needs a final (value, True) branch")
        code = self._print(last)
        for v, c in reversed(pairs):
            code = f"where({self._print(c)}, {self._print(v)}, {code})"
        return code

    def _print_Relational(self, e):
        if e.rel_op not in ("<", "<=", ">", ">="):
            raise EnergySyntaxError(f"the comparison {e.rel_op!r} is not in the language")
        return f"({self._print(e.lhs)} {e.rel_op} {self._print(e.rhs)})"

    def _print_And(self, e):
        return "(" + " and ".join(self._print(a) for a in e.args) + ")"

    def _print_Or(self, e):
        return "(" + " or ".join(self._print(a) for a in e.args) + ")"

    def _print_Not(self, e):
        return f"(not {self._print(e.args[0])})"

    def _print_Function(self, e):
        name = _NAMES.get(type(e)) or (type(e).__name__ if type(e).__name__ in _PLAIN else None)
        if name is None:
            raise EnergySyntaxError(f"the SymPy function {type(e).__name__} is not in the "
                                    f"language; see docs/language.md for the functions")
        return f"{name}({', '.join(self._print(a) for a in e.args)})"

    def emptyPrinter(self, e):
        raise EnergySyntaxError(f"{type(e).__name__} is not in the language ({e})")

    for _bad in ("Derivative", "Integral", "MatrixBase", "ImmutableMatrix", "MutableDenseMatrix",
                 "MatrixSymbol", "Lambda", "Limit", "Subs", "ImaginaryUnit", "Interval", "Tuple"):
        locals()[f"_print_{_bad}"] = emptyPrinter


def formula_from_sympy(expr: sp.Basic) -> str:
    """The language text of a SymPy energy built from ``x``, ``n`` and parameters."""
    if not isinstance(expr, sp.Expr):
        raise EnergySyntaxError(f"a SymPy energy must be an expression, not {type(expr).__name__}")
    if not expr.has(X):
        raise EnergySyntaxError("the SymPy expression does not use torchebm.symbolic.x")
    return _LanguagePrinter().doprint(expr)
