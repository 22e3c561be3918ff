"""Stage 2, rewrite: small named rules that make the energy numerically sound.

Run in order by :func:`stabilize`; each rule is a function named for its
pattern, with the rewrite in its docstring, applied with SymPy's ``replace``.
They change how a value is computed, never what it is.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from . import functions as F
from .symbols import depends_on_x


def is_sum_of_squares(e: sp.Expr) -> bool:
    """True when ``e`` is a sum of even powers times factors free of x.

    Such a sum vanishes only where its squared terms (and their gradients) do;
    a factor free of x (a parameter, 1/n) of the wrong sign makes the sqrt NaN
    anyway, so it does not matter for the gradient rule.
    """
    if e.is_Number:
        return bool(e >= 0)
    if isinstance(e, sp.Pow):
        if e.exp.is_Integer and e.exp % 2 == 0 and e.exp > 0:
            return True
        return e.base.is_nonnegative is True and e.base.is_Symbol and e.exp.is_number
    if isinstance(e, sp.Sum):
        return is_sum_of_squares(e.function)
    if isinstance(e, sp.Add):
        return all(is_sum_of_squares(a) for a in e.args)
    if isinstance(e, sp.Mul):
        squares = [a for a in e.args if depends_on_x(a)]
        return bool(squares) and all(is_sum_of_squares(a) for a in squares)
    return False


def sqrt_of_squares(expr: sp.Expr) -> sp.Expr:
    """``sqrt(s)`` with ``s`` a sum of squares -> ``SafeSqrt(s)``: gradient 0 where s = 0."""
    def query(e):
        return (isinstance(e, sp.Pow) and (e.exp == sp.S.Half or e.exp == sp.Float(0.5))
                and is_sum_of_squares(e.base))
    return expr.replace(query, lambda e: F.SafeSqrt(e.base))


def log_one_plus(expr: sp.Expr) -> sp.Expr:
    """``log(1 + u)`` -> ``log1p(u)``: accurate when u is tiny."""
    return expr.replace(
        lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Add)
        and sp.S.One in e.args[0].args,
        lambda e: log1p(e.args[0] - 1))


def exp_minus_one(expr: sp.Expr) -> sp.Expr:
    """``c*exp(u) - c`` (inside a sum) -> ``c*expm1(u)``: accurate when u is tiny."""
    def query(e):
        return isinstance(e, sp.Add) and _expm1_pair(e) is not None

    def value(e):
        term, coeff, u = _expm1_pair(e)
        others = [a for a in e.args if a is not term]
        others.remove(-coeff)
        return sp.Add(*others) + coeff * expm1(u)
    return expr.replace(query, value)


def _expm1_pair(add: sp.Add):
    numbers = [a for a in add.args if a.is_Number]
    for term in add.args:
        coeff, rest = term.as_coeff_Mul()
        if isinstance(rest, sp.exp) and -coeff in numbers:
            return term, coeff, rest.args[0]
    return None


def log1p_exp(expr: sp.Expr) -> sp.Expr:
    """``log1p(exp(u))`` -> ``softplus(u)``: no overflow for large u."""
    return expr.replace(lambda e: isinstance(e, log1p) and isinstance(e.args[0], sp.exp),
                        lambda e: F.Softplus(e.args[0].args[0]))


def _exp_terms(e):
    """``e`` as a list of exponents ``[u_k]`` with ``e = sum_k exp(u_k)``, or None."""
    if isinstance(e, sp.exp):
        return [e.args[0]]
    if isinstance(e, sp.Add):
        parts = [_exp_terms(a) for a in e.args]
        if any(p is None for p in parts):
            return None
        return [u for p in parts for u in p]
    if isinstance(e, sp.Mul):
        free = [a for a in e.args if not depends_on_x(a)]
        rest = [a for a in e.args if depends_on_x(a)]
        inner = _exp_terms(sp.Mul(*rest)) if rest and free else None
        if inner is None:
            return None
        c = sp.log(sp.Mul(*free))
        return [u + c for u in inner]
    if isinstance(e, F.Sum):
        inner = _exp_terms(e.function)
        if inner is None:
            return None
        return [F.LogSumExp(u, *e.limits) for u in inner]
    if e.is_number and e.is_positive:
        return [sp.log(e)]
    return None


def log_of_exps(expr: sp.Expr) -> sp.Expr:
    """``log(c exp(a) + exp(b) + sum(exp(...)) + ...)`` -> ``LogAddExp(a + log c, b, LSE(...))``.

    Any positive combination of exponentials becomes a max-shifted log-sum-exp,
    so ``log(sum(exp(x) + exp(-x)))`` or ``log(mean(exp(x)))`` cannot overflow.
    """
    def query(e):
        return (isinstance(e, sp.log) and e.args[0].has(sp.exp)
                and not isinstance(e.args[0], sp.exp) and _exp_terms(e.args[0]) is not None)

    def value(e):
        terms = _exp_terms(e.args[0])
        if len(terms) == 2 and sp.S.Zero in terms:      # log(1 + exp(u)) is softplus(u)
            return F.Softplus(terms[1] if terms[0] == 0 else terms[0])
        return F.LogAddExp(*terms) if len(terms) > 1 else terms[0]
    return expr.replace(query, value)


PHASES = (sqrt_of_squares, log_of_exps, log_one_plus, exp_minus_one, log1p_exp)


def stabilize(expr: sp.Expr, debug: bool = False) -> sp.Expr:
    """Apply every rule of :data:`PHASES` in order."""
    for rule in PHASES:
        expr = rule(expr)
        if debug:
            print(f"after {rule.__name__}: {expr}")
    return expr
