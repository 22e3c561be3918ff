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
    Sigmoid(-u)*Sigmoid(u)

    The derivative is written ``sigmoid(u) sigmoid(-u)``, not ``s (1 - s)``: ``1 - s``
    rounds to 0 for u > 37 (a relative error of 100% in the tail).
    """

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        u = self.args[0]
        return Sigmoid(u) * Sigmoid(-u)

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
        # Ne, not s > 0: a NaN sum (one NaN component) gives a NaN derivative for every
        # component, as autograd does, instead of 0 for all but the NaN one
        return where_else_zero(sp.Ne(s, 0), lambda s: 1 / (2 * sp.sqrt(s)), s)

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


class Norm(ExprWithLimits):
    """Indexed Euclidean norm ``sqrt(sum(body**2 for i in range(...)))``, range-safe.

    The rewrite stage makes ``norm(v)`` (``SafeSqrt(Sum(v**2))``) this reduction when
    it is not inside another reduction. It is printed ``_rt.norm``, which scales by
    the largest component: ``norm([3e-200, 4e-200])`` is ``5e-200``,
    not ``0``, and ``norm([3e200, 4e200])`` is ``5e200``, not ``inf``. Its derivative
    in each term is ``body/norm`` (at most 1 in size), 0 where the norm is 0 (the kink
    convention), NaN for every term when one term is NaN (as autograd).
    """

    __new__ = _new_with_limits

    def doit(self, **hints):
        return sp.sqrt(sp.Sum(self.function ** 2, *self.limits)).doit(**hints)

    def _latex(self, printer):
        (i, lo, hi), *rest = self.limits
        body = printer._print(self.function)
        return (r"\sqrt{\sum_{%s=%s}^{%s} \left(%s\right)^2}"
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


# -- numerically safe forms introduced by the rewrite stage ----------------------------
def where_else_zero(cond, make, *args):
    """``Piecewise((make(*args), cond), (0, True))`` with the arguments read through
    :class:`Guard`: the closed-form derivative code then stays NaN-free under autograd
    (score matching differentiates it in the parameters) where the value branch would
    divide by 0 or take ``log(0)``."""
    return sp.Piecewise((make(*[Guard(a, cond) for a in args]), cond), (0, True))



class Power(sp.Function):
    """``b**e`` with an exponent that is not an integer literal, printed ``_rt.power``.

    SymPy differentiates ``b**e`` as ``e*b**e/b``: NaN at ``b = 0`` even where the
    derivative exists (``x**a`` with ``a = 2``). Here ``d/db = PowerPrime(b, e)``
    (``e*b**(e - 1)``, never a division by ``b``) and ``d/de = PowerLog(b, e)``
    (``b**e log b``, 0 at ``b = 0``: its limit for ``e > 0``). At ``b = 0`` with
    ``e < 1`` the derivative in b is infinite or absent; it takes the kink convention 0.
    """

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        b, e = self.args
        return PowerPrime(b, e) if argindex == 1 else PowerLog(b, e)

    @classmethod
    def eval(cls, b, e):
        if e.is_Integer or (b.is_Number and e.is_Number):
            return b ** e
        return None

    def _latex(self, printer):
        return printer._print(sp.Pow(*self.args, evaluate=False))


class PowerPrime(sp.Function):
    """``e*b**(e - 1)``, the derivative of ``b**e`` in b; 0 at ``b = 0`` when ``e < 1``
    (kink convention), printed ``_rt.power_prime``. Its own derivative in b is
    ``e*PowerPrime(b, e - 1)``, so second derivatives never divide by b either."""

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        b, e = self.args
        if argindex == 1:
            return e * PowerPrime(b, e - 1)
        return Power(b, e - 1) + e * PowerLog(b, e - 1)

    @classmethod
    def eval(cls, b, e):
        if b.is_Number and e.is_Number:
            if b == 0:
                return e * sp.S.Zero ** (e - 1) if e >= 1 else sp.S.Zero
            return e * b ** (e - 1)
        if e == 0:
            return sp.S.Zero
        if e == 1:
            return sp.S.One
        return None


class PowerLog(sp.Function):
    """``b**e * log(b)``, the derivative of ``b**e`` in e; 0 at ``b = 0`` (its limit for
    ``e > 0``), printed ``_rt.power_log``."""

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        b, e = self.args
        if argindex == 1:
            return where_else_zero(sp.Ne(b, 0), lambda b, e: PowerPrime(b, e) * sp.log(b)
                                   + Power(b, e - 1), b, e)
        return where_else_zero(sp.Ne(b, 0), lambda b, e: PowerLog(b, e) * sp.log(b), b, e)

    @classmethod
    def eval(cls, b, e):
        if b.is_Number and e.is_Number:
            return sp.S.Zero if b == 0 else b ** e * sp.log(b)
        return None


class LogCosh(sp.Function):
    """``log(cosh(u))`` as ``u + logaddexp(-2u, 0) - log 2``: finite for every u (cosh
    overflows past |u| = 710), derivative ``tanh(u)``, printed ``_rt.log_cosh``."""

    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        return sp.tanh(self.args[0])

    @classmethod
    def eval(cls, u):
        return _number(lambda v: mpmath.log(mpmath.cosh(v)), u)


class Hypot(sp.Function):
    """``sqrt(a**2 + b**2)`` without overflow or underflow of the squares (``torch.hypot``).

    Derivatives ``a/hypot`` and ``b/hypot``, 0 at the origin (the kink convention
    of ``norm``); printed ``_rt.hypot``.
    """

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        a, b = self.args
        return where_else_zero(sp.Ne(Hypot(a, b), 0),
                               lambda a, b: Ratio((a, b)[argindex - 1], Hypot(a, b)), a, b)

    @classmethod
    def eval(cls, a, b):
        return _number(lambda u, v: mpmath.hypot(u, v), a, b)


class Atan2(sp.Function):
    """``atan2(y, x)``, the angle of the point ``(x, y)``, printed ``_rt.atan2``.

    Derivatives ``x/r**2`` and ``-y/r**2`` with ``r = hypot(y, x)``, written
    ``(x/r)/r`` so that ``r**2`` never underflows (``r = 1.4e-200`` gives
    ``5e199``, not ``inf``); 0 at the origin, where atan2 has no derivative
    (kink convention).
    """

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        y, x = self.args
        return where_else_zero(sp.Ne(Hypot(y, x), 0),
                               lambda y, x: ScaledQuotient(x if argindex == 1 else -y,
                                                           Hypot(y, x)), y, x)

    @classmethod
    def eval(cls, y, x):
        return _number(lambda u, v: mpmath.atan2(u, v), y, x)


class Ratio(sp.Function):
    """``a/r``, kept as one quotient: its derivative in ``r`` is ``-(a/r)/r``
    (:class:`ScaledQuotient`), never ``-a/r**2`` (``r**2`` under- or overflows for
    ``|r|`` beyond ``1e+-154`` while the quotients are representable)."""

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        a, r = self.args
        if argindex == 1:
            return 1 / r
        return -ScaledQuotient(a, r)

    @classmethod
    def eval(cls, a, r):
        if a == 0:
            return sp.S.Zero
        if a.is_Number and r.is_Number:
            return a / r
        return None


class ScaledQuotient(sp.Function):
    """``a/r**2`` computed as ``(a/r)/r`` (``_rt.over_square``): no underflow of ``r**2``."""

    nargs = 2
    _eval_is_real = _real_for_real_args

    def fdiff(self, argindex=1):
        a, r = self.args
        if argindex == 1:
            return ScaledQuotient(1, r)
        return -2 * Ratio(ScaledQuotient(a, r), r)

    @classmethod
    def eval(cls, a, r):
        if a == 0:
            return sp.S.Zero
        if a.is_Number and r.is_Number:
            return a / r**2
        return None


class Guard(sp.Function):
    """``Guard(v, selected)`` is ``v``; printed ``_rt.guard(selected, v)``, through which
    autograd flows only where ``selected`` holds.

    The rewrite stage feeds each ``where`` branch whose derivative can be inf or nan
    its inputs through Guard (the "double where"), so autograd of the generated code
    never multiplies an unselected branch's ``inf`` by 0. Its derivative is the
    derivative of ``v``, guarded alike: the closed forms' values are unchanged.
    """

    nargs = 2

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_derivative(self, s):
        # guarded too: a factor the chain rule brings out (a in d(a*x)/dx) must not carry
        # the unselected branch's inf into autograd either
        return Guard(self.args[0].diff(s), self.args[1])

    def _latex(self, printer):
        return printer._print(self.args[0])

    def _sympystr(self, printer):
        return printer._print(self.args[0])

    @classmethod
    def eval(cls, v, selected):
        if v.is_Number or selected == sp.true:
            return v
        return None


ELEMENTWISE["hypot"] = Hypot
ARITY["hypot"] = 2
