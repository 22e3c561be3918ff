"""Stage 2, rewrite: small named rules that make the energy numerically sound.

Run in order by :func:`stabilize`; each rule is a function named for its
pattern, with the rewrite in its docstring, applied with SymPy's ``replace``.
They change how a value is computed, never what it is.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from . import functions as F


def is_sum_of_squares(e: sp.Expr) -> bool:
    """True when ``e`` is a nonnegative combination of even powers (zero only where they are)."""
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
        squares = [a for a in e.args if not (a.is_number and a > 0)
                   and not (a.is_nonnegative and not a.is_Pow and a.is_Symbol)
                   and not (isinstance(a, sp.Pow) and a.base.is_nonnegative and a.base.is_Symbol)]
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


def log_sum_exp(expr: sp.Expr) -> sp.Expr:
    """``log(Sum(exp(b), ...))`` -> ``LogSumExp(b, ...)``: max-shifted, no overflow."""
    return expr.replace(
        lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Sum)
        and isinstance(e.args[0].function, sp.exp),
        lambda e: F.LogSumExp(e.args[0].function.args[0], *e.args[0].limits))


def log_of_exps(expr: sp.Expr) -> sp.Expr:
    """``log(exp(a) + exp(b) + ...)`` -> ``LogAddExp(a, b, ...)``."""
    return expr.replace(
        lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Add)
        and len(e.args[0].args) >= 2 and all(isinstance(a, sp.exp) for a in e.args[0].args),
        lambda e: F.LogAddExp(*[a.args[0] for a in e.args[0].args]))


PHASES = (sqrt_of_squares, log_sum_exp, log_of_exps, log_one_plus, exp_minus_one, log1p_exp)


def stabilize(expr: sp.Expr, debug: bool = False) -> sp.Expr:
    """Apply every rule of :data:`PHASES` in order."""
    for rule in PHASES:
        expr = rule(expr)
        if debug:
            print(f"after {rule.__name__}: {expr}")
    return expr
