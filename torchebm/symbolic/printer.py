"""Stage 5a, printer: one SymPy expression -> one line of torch code.

``TorchEnergyPrinter`` subclasses SymPy's own ``TorchPrinter`` and changes
what an energy compiler needs:

* numbers keep float64 precision: a Float or Rational prints as the
  shortest ``repr`` that round-trips its float64 value (17 significant
  digits at most), never a float32 constant;
* sub-expressions of Python integers only (``n``, ``len(w)``) print with
  ``math`` so that they stay Python numbers;
* small integer powers print as multiplications or ``torch.square``;
* ``Piecewise`` prints as ``torch.where``; the language's own functions map
  to stable torch calls (see the table);
* anything the table does not know raises instead of printing something
  that would fail later (``strict``): a ``Derivative`` reaching the printer
  means differentiation failed, which is a bug.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.logic.boolalg import BooleanAtom
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.pytorch import TorchPrinter
from sympy.printing.precedence import precedence

from ..errors import EnergySyntaxError
from . import functions as F

# SymPy class -> (torch call, math call or None). Caveats beside the rows.
MAPPING = {
    sp.sin: ("torch.sin", "math.sin"), sp.cos: ("torch.cos", "math.cos"),
    sp.tan: ("torch.tan", "math.tan"), sp.asin: ("torch.asin", "math.asin"),
    sp.acos: ("torch.acos", "math.acos"), sp.atan: ("torch.atan", "math.atan"),
    sp.atan2: ("torch.atan2", "math.atan2"),   # tensors only: constants are folded first
    sp.sinh: ("torch.sinh", "math.sinh"), sp.cosh: ("torch.cosh", "math.cosh"),
    sp.tanh: ("torch.tanh", "math.tanh"), sp.asinh: ("torch.asinh", "math.asinh"),
    sp.acosh: ("torch.acosh", "math.acosh"), sp.atanh: ("torch.atanh", "math.atanh"),
    sp.exp: ("torch.exp", "math.exp"), sp.log: ("torch.log", "math.log"),
    sp.Abs: ("torch.abs", "abs"), sp.sign: ("torch.sign", None), F.Sign: ("torch.sign", None),
    sp.erf: ("torch.erf", "math.erf"), sp.erfc: ("torch.erfc", "math.erfc"),
    sp.loggamma: ("torch.lgamma", "math.lgamma"),
    log1p: ("torch.log1p", "math.log1p"), expm1: ("torch.expm1", "math.expm1"),
    F.Sigmoid: ("torch.sigmoid", None),
    F.Softplus: ("_rt.softplus", None),        # u + log1p(exp(-u)) / log1p(exp(u)): exact
    F.LogNdtr: ("torch.special.log_ndtr", None),
    F.SafeSqrt: ("_rt.safe_sqrt", "math.sqrt"),   # autograd 0 (not nan) where s = 0
    F.LogAddExp: ("_rt.logaddexp", None),      # max-shifted, any number of arguments
    F.Maximum: ("_rt.maximum", None),          # tensors or numbers on either side
    F.Minimum: ("_rt.minimum", None),
    # forms whose value and autograd are safe at zeros and extreme magnitudes
    F.Power: ("_rt.power", None),              # b**e, derivative 0 where b = 0 and e < 1
    F.PowerPrime: ("_rt.power_prime", None),   # e*b**(e - 1), 0 where b = 0 and e < 1
    F.PowerLog: ("_rt.power_log", None),       # b**e log(b), 0 where b = 0
    F.LogCosh: ("_rt.log_cosh", None),         # no overflow of cosh
    F.Hypot: ("_rt.hypot", "math.hypot"),      # no overflow or underflow of the squares
    F.Atan2: ("_rt.atan2", "math.atan2"),      # range-safe autograd, 0 at the origin
    F.ScaledQuotient: ("_rt.over_square", None),   # a/r**2 as (a/r)/r
}


class TorchEnergyPrinter(TorchPrinter):
    """Print energy expressions as torch code over named locals.

    Args (settings):
        names: SymPy symbol -> Python expression to print for it.
        python_scalars: symbols whose value is a Python number, not a tensor.
    """

    printmethod = "_torchenergycode"
    _default_settings = dict(TorchPrinter._default_settings, names=None,
                             python_scalars=frozenset(), sizes=None, strict=True)

    def __init__(self, settings=None):
        super().__init__(settings)
        self.names = self._settings["names"] or {}
        self.python_scalars = self._settings["python_scalars"]
        self.sizes = self._settings["sizes"] or {}

    def size(self, expr) -> int:
        """How big a value is: 0 number, 1 parameter, 2 per sample, 3 per point."""
        if expr.is_Number or self.is_python(expr):
            return 0
        return max((self.sizes.get(s, 3) for s in expr.free_symbols), default=0)

    def _print_Mul(self, expr):
        # Small factors first: Python multiplies left to right, so (-4*b)*t*x costs two
        # full-size products where -4*t*x*b costs three. Rationals stay exact divisions.
        coeff, rest = expr.as_coeff_Mul()
        num, den = [], []
        for f in sp.Mul.make_args(rest):
            if f.is_Pow and f.exp.is_Rational and f.exp.is_negative and f.exp != -sp.S.Half:
                den.append(sp.Pow(f.base, -f.exp) if f.exp != -1 else f.base)
            else:
                num.append(f)
        if coeff.is_Rational and coeff.q != 1:
            den.insert(0, sp.Integer(coeff.q))
            coeff = sp.Integer(coeff.p)
        num.sort(key=self.size)
        den.sort(key=self.size)
        prec = precedence(sp.Mul(2, sp.Symbol("a"), evaluate=False))
        # c*(a/r) with c and r smaller than a (a norm's derivative: per-sample factors
        # over a per-point value) prints as c/r*a: the division on the small values and
        # one full-size product, where c*(a/r) makes two full-size passes
        ratio = next((f for f in num if isinstance(f, F.Ratio) and self.size(f.args[0]) == 3
                      and self.size(f.args[1]) < 3), None)
        small = [f for f in num if f is not ratio and self.size(f) < 3]
        if ratio is not None and (small or coeff != 1):
            head = [self.parenthesize(f, prec, strict=False) for f in small]
            if coeff == -1 and head:
                head[0] = "-" + head[0]
            elif coeff != 1 or not head:
                head.insert(0, self._print(coeff))
            big = [ratio.args[0]] + [f for f in num if f is not ratio and f not in small]
            code = (f"{'*'.join(head)}/{self.parenthesize(ratio.args[1], prec, strict=True)}*"
                    + "*".join(self.parenthesize(f, prec, strict=False) for f in big))
        else:
            parts = [self.parenthesize(f, prec, strict=False) for f in num]
            if coeff == -1 and parts:
                parts[0] = "-" + parts[0]
            elif coeff != 1 or not parts:
                parts.insert(0, self._print(coeff))
            code = "*".join(parts)
        if den:
            d = "*".join(self.parenthesize(f, prec, strict=False) for f in den)
            code = f"{code}/({d})" if len(den) > 1 else f"{code}/{d}"
        return code

    def _print_Add(self, expr, order=None):
        # a + b - c: subtraction instead of adding a negated temporary
        pos, neg = [], []
        for t in expr.args:
            c, _ = t.as_coeff_Mul()
            (neg if c.is_negative else pos).append(t)
        pos.sort(key=lambda t: -self.size(t))
        code = " + ".join(self._print(t) for t in pos) if pos else ""
        prec = precedence(expr)
        for t in neg:
            term = self.parenthesize(-t, prec, strict=True) if (-t).is_Add else self._print(-t)
            code = f"{code} - {term}" if code else f"-{term}"
        return code

    def _print(self, expr, **kwargs):
        if (isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Number
                and not expr.is_Relational):
            return _constant_literal(expr)   # exp(1000), log(2*pi), sqrt(2): one float64
        return super()._print(expr, **kwargs)

    def is_python(self, expr) -> bool:
        return all(s in self.python_scalars for s in expr.free_symbols)

    # -- leaves ---------------------------------------------------------------
    def _print_Symbol(self, expr):
        if expr in self.names:
            return self.names[expr]
        raise RuntimeError(f"torchebm: no name for symbol {expr!r} while printing; "
                           f"please report a bug")

    _print_Dummy = _print_Symbol

    def _print_Indexed(self, expr):
        raise RuntimeError(f"torchebm: an unlowered access {expr} reached the printer; "
                           f"please report a bug")

    def _print_Float(self, expr):
        return _float_literal(float(expr))

    def _print_Rational(self, expr):
        return _float_literal(expr.p / expr.q) if expr.q != 1 else str(expr.p)

    def _print_Integer(self, expr):
        if abs(int(expr)) > 2**53:
            return _float_literal(float(expr))
        return str(int(expr))

    _print_Zero = _print_One = _print_NegativeOne = _print_Integer
    _print_Half = _print_Rational

    def _print_Exp1(self, expr):
        return repr(math.e)

    def _print_Pi(self, expr):
        return repr(math.pi)

    def _print_NaN(self, expr):
        return "math.nan"

    def _print_Infinity(self, expr):
        return "math.inf"

    def _print_NegativeInfinity(self, expr):
        return "-math.inf"

    def _print_ComplexInfinity(self, expr):
        return "math.nan"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    # -- arithmetic -------------------------------------------------------------
    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        b = self.parenthesize(base, precedence(expr), strict=False)
        if self.is_python(expr):
            if exp == sp.S.Half:
                return f"math.sqrt({self._print(base)})"
            return f"{b}**{self.parenthesize(exp, precedence(expr), strict=False)}"
        if exp == sp.S.Half:
            return f"torch.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"torch.rsqrt({self._print(base)})"
        if exp.is_Integer and abs(int(exp)) <= 2**53:
            k = int(exp)
            if k == 2:
                return f"torch.square({self._print(base)})"
            if k == 3 and base.is_Symbol:
                return f"({b}*{b}*{b})"
            # a reciprocal is torch.reciprocal: ``1/t`` on a tensor runs two ops
            # (reciprocal, then a multiplication by 1), a full-size pass more
            if k == -1:
                return f"torch.reciprocal({self._print(base)})"
            if k < 0:
                return f"torch.reciprocal({self._print(sp.Pow(base, -exp, evaluate=False))})"
            return f"torch.pow({self._print(base)}, {k})"
        return f"torch.pow({self._print(base)}, {self._print(exp)})"

    # -- functions ------------------------------------------------------------------
    def _print_Function(self, expr):
        entry = MAPPING.get(type(expr))
        if entry is None:
            return self._print_not_supported(expr)
        torch_fn, math_fn = entry
        args = [self._print(a) for a in expr.args]
        if self.is_python(expr) and math_fn is not None:
            return f"{math_fn}({', '.join(args)})"
        return f"{torch_fn}({', '.join(args)})"

    _print_Expr = _print_Function
    _print_Application = _print_Function

    def _print_polygamma(self, expr):
        order, arg = expr.args
        if order == 0:
            return f"torch.digamma({self._print(arg)})"
        return f"torch.polygamma({self._print(order)}, {self._print(arg)})"

    def _print_Piecewise(self, expr):
        # torch.where picks per element; the unselected value is never used. (Branches
        # whose derivative can be inf or nan read their inputs through Guard: rewrite.py.)
        *pairs, (last, cond) = expr.args
        if cond != sp.true:
            last_code = "math.nan"
            pairs = list(expr.args)
        else:
            last_code = self._print(last)
        branches = [e for e, _ in pairs] + ([last] if cond == sp.true else [])
        tensor = any(not (e.is_Number or self.is_python(e)) for e in branches)
        code = self._branch(last, tensor) if cond == sp.true else last_code
        for e, c in reversed(pairs):
            code = f"torch.where({self._print(c)}, {self._branch(e, tensor)}, {code})"
        return code

    def _branch(self, e, tensor=False):
        # Numbers in torch.where beside no tensor would set the result's dtype (int64, or
        # float32 for a Python float); as a 0-d tensor of x's dtype they follow the input.
        # Beside a tensor branch (``tensor``), a Python number is weak and takes that
        # tensor's dtype, and costs no tensor of its own (5 us a call): used for numbers
        # every floating dtype holds (|v| <= 65504, float16's largest; inf, nan), since
        # torch refuses a Python number that overflows the result's dtype.
        if isinstance(e, BooleanAtom):
            # a branch of a condition (where(c, y > 0, True) > ...): a bool, never a
            # 0-d tensor of x's dtype, which torch.where refuses as a condition
            return self._print(e) if tensor else f"x.new_tensor({self._print(e)}, dtype=torch.bool)"
        if e.is_Number:
            value = float(e)
            if tensor and (not math.isfinite(value) or abs(value) <= 65504.0):
                return self._print(e)
            return f"x.new_tensor({self._print(e)})"
        if self.is_python(e):
            return f"x.new_tensor({self._print(e)})"
        return self._print(e)

    def _print_Ratio(self, expr):
        a, r = expr.args
        prec = precedence(sp.Mul(2, sp.Symbol("a"), evaluate=False))
        num = self.parenthesize(a, prec, strict=False)
        return f"({num}/{self.parenthesize(r, prec, strict=True)})"

    def _print_Guard(self, expr):
        v, cond = expr.args
        if self.is_python(v):
            return self._print(v)
        return f"_rt.guard({self._print(cond)}, {self._print(v)})"

    def _print_Relational(self, expr):
        lhs = self.parenthesize(expr.lhs, precedence(expr), strict=True)
        rhs = self.parenthesize(expr.rhs, precedence(expr), strict=True)
        return f"({lhs} {expr.rel_op} {rhs})"

    def _print_And(self, expr):
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(~{self._print(expr.args[0])})"

    def _print_Mod(self, expr):
        a, m = expr.args
        if m.is_Integer:
            return f"({self._print(a)}) % ({self._print(m)})"
        return f"_rt.index_mod({self._print(a)}, {self._print(m)})"   # 0 at some n: a clear error

    def _print_floor(self, expr):
        # floor only comes from the language's integer '//' (indices and bounds)
        num, den = expr.args[0].as_numer_denom()
        return f"(({self._print(num)}) // ({self._print(den)}))"

    def _print_Derivative(self, expr):
        raise RuntimeError("torchebm: an unevaluated Derivative reached the printer; "
                           "differentiation failed, please report a bug")

    def _print_not_supported(self, expr):
        raise EnergySyntaxError(f"torchebm cannot print {type(expr).__name__} ({expr}) as torch "
                                f"code; this function is not supported in compiled energies")

    def _print_ImaginaryUnit(self, expr):
        raise EnergySyntaxError("the formula has a complex value (a negative number to a "
                                "fractional power?); energies are real")


def _float_literal(value: float) -> str:
    """The shortest literal that is exactly this float64 (``repr`` round-trips)."""
    if math.isnan(value):
        return "math.nan"
    if math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


def _constant_literal(expr) -> str:
    """A constant expression evaluated in 30 digits, then rounded once to float64."""
    try:
        value = complex(expr.evalf(30))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return "math.nan"
    if value.imag != 0:
        return "math.nan"          # e.g. log(-1): no real value, as torch gives nan
    return _float_literal(value.real)
