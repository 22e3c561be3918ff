"""SymPy functions that the language adds to SymPy's own.

Each is a ``sympy.Function`` with ``fdiff``, so SymPy differentiates it like
a built-in, and a numeric ``eval`` for number arguments, so constant folding
works. The torch printer maps each to a numerically stable torch call; the
docstrings say which form is used and why.

SymPy's own ``log1p`` and ``expm1`` (``sympy.codegen.cfunctions``) are used
as they are.
"""

from __future__ import annotations

import mpmath
import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits


def _mp(value: sp.Expr) -> mpmath.mpf:
    return mpmath.mpf(sp.Float(value, 30)._mpf_)


def _number(fn, *args):
    """Evaluate ``fn`` at number arguments in 30 digits, or return None."""
    if all(isinstance(a, sp.Number) and a.is_finite for a in args):
        with mpmath.workdps(30):
            return sp.Float(fn(*[_mp(a) for a in args]), 30)
    return None


def _real_for_real_args(self):
    """Real for real arguments: lets SymPy differentiate ``abs``/``sign`` of the result
    as real functions (``sign(u)``, not ``re(u) sign(u) / u`` and an unevaluated
    ``Derivative(sign(u))``)."""
    return True if all(a.is_real for a in self.args) else None


class Sigmoid(sp.Function):
    """Logistic sigmoid ``1/(1 + exp(-u))``, printed as ``torch.sigmoid``.

    >>> from sympy import Symbol
    >>> u = Symbol('u', real=True)
    >>> Sigmoid(u).diff(u)
    (1 - Sigmoid(u))*Sigmoid(u)
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, u):
        return _number(lambda v: 1 / (1 + mpmath.exp(-v)), u)


class Softplus(sp.Function):
    """``log(1 + exp(u))`` in the stable form ``max(u, 0) + log1p(exp(-|u|))``.

    torch's ``softplus`` switches to ``u`` above a threshold (20), an error of
    about 2e-9 there; the stable form is exact in float64 for every u.

    >>> from sympy import Symbol
    >>> u = Symbol('u', real=True)
    >>> Softplus(u).diff(u)
    Sigmoid(u)
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    @classmethod
    def eval(cls, u):
        return _number(lambda v: mpmath.log1p(mpmath.exp(v)), u)


class LogNdtr(sp.Function):
    """Log of the standard normal CDF, ``log(Phi(u))``: ``torch.special.log_ndtr``.

    Its derivative ``phi(u)/Phi(u)`` is written ``exp(-u**2/2 - log_ndtr(u))/sqrt(2 pi)``,
    which stays finite far in the left tail where ``Phi(u)`` underflows.
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        u = self.args[0]
        return sp.exp(-u**2 / 2 - LogNdtr(u)) / sp.sqrt(2 * sp.pi)

    @classmethod
    def eval(cls, u):
        return _number(lambda v: mpmath.log(mpmath.ncdf(v)), u)


class LogAddExp(sp.Function):
    """``log(exp(a) + exp(b) + ...)`` of scalars, max-shifted when printed.

    The derivative with respect to each argument is its softmax weight
    ``exp(a_k - LogAddExp(...))``, which never overflows.
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        return sp.exp(self.args[argindex - 1] - self)

    @classmethod
    def eval(cls, *args):
        if len(args) == 1:
            return args[0]
        return _number(lambda *v: mpmath.log(sum(mpmath.exp(t) for t in v)), *args)


class Maximum(sp.Function):
    """Elementwise maximum of two values.

    At a tie the derivative goes wholly to the first argument (one-sided,
    as documented in the language reference): d/da = 1 where a >= b.
    """

    nargs = 2

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        a, b = self.args
        if argindex == 1:
            return sp.Piecewise((1, a >= b), (0, True))
        return sp.Piecewise((0, a >= b), (1, True))

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return a if a >= b else b
        return None


class Minimum(sp.Function):
    """Elementwise minimum of two values; at a tie the first argument takes the derivative."""

    nargs = 2

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        a, b = self.args
        if argindex == 1:
            return sp.Piecewise((1, a <= b), (0, True))
        return sp.Piecewise((0, a <= b), (1, True))

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return a if a <= b else b
        return None


class Sign(sp.Function):
    """Sign of u (-1, 0 or 1), with derivative 0 everywhere (torch's convention)."""

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        return sp.S.Zero

    @classmethod
    def eval(cls, u):
        if u.is_Number:
            return sp.sign(u)
        return None


class SafeSqrt(sp.Function):
    """``sqrt(s)`` of a sum of squares, whose derivative is 0 where ``s == 0``.

    The compiler rewrites ``sqrt`` to this when its argument is a sum of
    squares (``norm(x)``, Ackley's ``sqrt(mean(x**2))``). The chain rule then
    multiplies ``0`` by the vanishing inner derivative, so the gradient at the
    origin is the minimum-norm subgradient 0 instead of ``0/0 = nan``.
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        s = self.args[0]
        return sp.Piecewise((1 / (2 * sp.sqrt(s)), s > 0), (0, True))

    @classmethod
    def eval(cls, s):
        if s.is_Number:
            return sp.sqrt(s)
        return None

    def _eval_power(self, e):
        # an even power is a power of the sum itself, smooth at 0: norm(x)**2 is
        # sum(x**2), whose Hessian at the origin is 2 I (the SafeSqrt convention would
        # give 0 for the product of derivatives that vanish there)
        if e.is_Integer and e.is_even:
            return self.args[0] ** (e / 2)
        return None


def _new_with_limits(cls, function, *limits, **kwargs):
    """Build a reduction exactly as given: no Piecewise folding, no merging of nests.

    SymPy's constructor of Sum/Product runs ``piecewise_fold`` over the body,
    which moves a ``Piecewise`` out of an *inner* Sum even when its condition
    uses that Sum's index (``sum(mean(where(x[j] > 0, x[j], x[i]) for j ...) for i
    ...)`` would lose the binding of j). The language's reductions keep their
    body as written.
    """
    function = sp.sympify(function)
    limits = [sp.Tuple(*lim) for lim in limits]
    obj = sp.Expr.__new__(cls, function, *limits)
    obj.is_commutative = function.is_commutative
    return obj


class Sum(sp.Sum):
    """``sympy.Sum`` whose constructor keeps the body as written (see ``_new_with_limits``)."""

    __new__ = _new_with_limits


class Product(sp.Product):
    """``sympy.Product`` whose constructor keeps the body as written."""

    __new__ = _new_with_limits


class LogSumExp(ExprWithLimits):
    """Indexed log-sum-exp: ``log(sum(exp(body) for i in range(...)))``.

    Limits follow ``sympy.Sum``: ``(i, lo, hi)`` with ``hi`` inclusive. Over an
    empty range its value is ``-inf``. Printed max-shifted (``torch.logsumexp``);
    its derivative is the softmax weight of each term.
    """

    __new__ = _new_with_limits

    def doit(self, **hints):
        return sp.log(sp.Sum(sp.exp(self.function), *self.limits)).doit(**hints)

    def _latex(self, printer):
        (i, lo, hi), *rest = self.limits
        body = printer._print(self.function)
        return (r"\log \sum_{%s=%s}^{%s} e^{%s}"
                % (printer._print(i), printer._print(lo), printer._print(hi), body))


#: Elementwise functions of the language: name -> SymPy callable.
ELEMENTWISE = {
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan,
    "asin": sp.asin, "acos": sp.acos, "atan": sp.atan, "atan2": sp.atan2,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh,
    "asinh": sp.asinh, "acosh": sp.acosh, "atanh": sp.atanh,
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": sp.Abs,
    "erf": sp.erf, "erfc": sp.erfc, "lgamma": sp.loggamma,
    "sigmoid": Sigmoid, "softplus": Softplus, "log_ndtr": LogNdtr,
    "sign": Sign, "minimum": Minimum, "maximum": Maximum,
    "logaddexp": LogAddExp,
}


def _log1p(u):
    from sympy.codegen.cfunctions import log1p
    return log1p(u)


def _expm1(u):
    from sympy.codegen.cfunctions import expm1
    return expm1(u)


ELEMENTWISE["log1p"] = _log1p
ELEMENTWISE["expm1"] = _expm1

#: Number of arguments each elementwise function takes (None: two or more).
ARITY = {name: 1 for name in ELEMENTWISE}
ARITY.update(atan2=2, minimum=2, maximum=2, logaddexp=2)
