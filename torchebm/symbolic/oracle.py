"""An energy evaluated by SymPy/mpmath at high precision, independent of the torch printer.

The oracle takes the parsed SymPy expression (before any rewrite), expands
every reduction into its terms for a concrete ``n`` (empty ranges are empty,
whatever their bounds: the language's semantics, not SymPy's Karr
convention) once per ``n``, substitutes exact values for the parameters and,
at each point, for ``x``, and evaluates with 30 significant digits. Its central
finite differences give a gradient that shares no code with the compiler's
closed form.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from . import functions as F
from .parse import Parsed
from .symbols import N, size_symbol

DPS = 30


class OracleError(ValueError):
    """The formula has no real value at this point (outside its domain)."""


def _num(v) -> sp.Float:
    return sp.Float(float(v), DPS)


class Oracle:
    """``Oracle(parsed, params)(x_row)`` -> energy at one sample, as an mpmath number."""

    def __init__(self, parsed: Parsed, params: dict):
        self.parsed = parsed
        self.scalars, self.arrays = {}, {}
        self._at = {}                    # n -> at(n): the expansion, shared by every point
        for name, value in params.items():
            rows = value.tolist() if hasattr(value, "tolist") else value
            if isinstance(rows, (int, float)):
                self.scalars[sp.Symbol(name, real=True)] = _num(rows)
            else:
                self.arrays[name] = rows
        for key, values in parsed.constants.items():
            self.arrays[key] = list(values)
        with mpmath.workdps(DPS):
            for key, d in parsed.derived.items():
                m = mpmath.matrix(self.arrays[d.param])
                if d.op == "inverse":
                    inv = m ** -1
                    self.arrays[key] = [[inv[i, j] for j in range(m.cols)] for i in range(m.rows)]
                elif d.op == "logdet":
                    self.scalars[sp.Symbol(key, real=True)] = sp.Float(mpmath.log(mpmath.det(m)), DPS)
                elif d.op == "det":
                    self.scalars[sp.Symbol(key, real=True)] = sp.Float(mpmath.det(m), DPS)
                elif d.op == "trace":
                    self.scalars[sp.Symbol(key, real=True)] = sp.Float(
                        sum(m[i, i] for i in range(m.rows)), DPS)

    def sizes(self, n):
        subs = {N: sp.Integer(n)}
        for name, rows in self.arrays.items():
            subs[size_symbol(name, 0)] = sp.Integer(len(rows))
            if rows and isinstance(rows[0], (list, tuple)):
                subs[size_symbol(name, 1)] = sp.Integer(len(rows[0]))
        return subs

    def at(self, n: int):
        """``(expression, x_loads)`` for dimension ``n``, built once per ``n``: sizes,
        scalar and array parameters substituted and every reduction expanded into
        its terms, so that a point only substitutes ``x`` and evaluates.
        ``x_loads`` is ``[(x[i] as an Indexed, i), ...]``.

        Raises:
            OracleError: the formula reads ``x[i]`` outside ``0 <= i < n``.
        """
        hit = self._at.get(n)
        if hit is not None:
            return hit
        expr = self.parsed.expression.xreplace(self.sizes(n)).xreplace(self.scalars)
        expr = self._expand(expr, {})
        values, x_loads = {}, []
        for ind in expr.atoms(sp.Indexed):
            base = ind.base.label.name
            idx = [int(i) for i in ind.indices]
            if base == "x":
                if not 0 <= idx[0] < n:
                    raise OracleError(f"x[{idx[0]}] is out of range for n = {n}")
                x_loads.append((ind, idx[0]))
            else:
                v = self.arrays[base]
                for i in idx:
                    v = v[i]
                values[ind] = sp.Float(v, DPS)
        self._at[n] = hit = (expr.xreplace(values) if values else expr, x_loads)
        return hit

    def __call__(self, x_row) -> mpmath.mpf:
        x_row = [float(v) for v in x_row]
        expr, x_loads = self.at(len(x_row))
        value = expr.xreplace({ind: sp.Float(x_row[i], DPS) for ind, i in x_loads}).evalf(DPS)
        if value.free_symbols:                 # a parameter the oracle was given no value for
            names = ", ".join(sorted(str(s) for s in value.free_symbols))
            raise OracleError(f"the oracle has no value for {names}")
        if not value.is_Number or not value.is_real:
            raise OracleError(f"the energy is not a real number here ({str(value)[:40]})")
        return mpmath.mpf(value._mpf_) if isinstance(value, sp.Float) else mpmath.mpf(float(value))

    def _expand(self, e, env):
        """Replace every reduction by its explicit terms for integer bounds."""
        if isinstance(e, (sp.Sum, sp.Product, F.LogSumExp)):
            limits = list(reversed(e.limits))          # outermost first
            terms = []
            self._terms(e.function, limits, dict(env), terms)
            if isinstance(e, sp.Sum):
                return sp.Add(*terms)
            if isinstance(e, sp.Product):
                return sp.Mul(*terms)
            return sp.log(sp.Add(*[sp.exp(t) for t in terms])) if terms else -sp.oo
        if not e.args or e.is_Atom:
            return e.xreplace(env) if env else e
        return e.func(*[self._expand(a, env) for a in e.args])

    def _terms(self, body, limits, env, out):
        if not limits:
            out.append(self._expand(body.xreplace(env), {}))
            return
        (var, lo, hi), rest = limits[0], limits[1:]
        lo, hi = int(lo.xreplace(env)), int(hi.xreplace(env))
        for k in range(lo, hi + 1):                    # hi is inclusive (SymPy limits)
            env[var] = sp.Integer(k)
            self._terms(body, rest, env, out)
        env.pop(var, None)

    def gradient(self, x_row, step: float = 1e-9):
        """Central finite differences of the oracle in 30-digit arithmetic."""
        x_row = [float(v) for v in x_row]
        grad = []
        with mpmath.workdps(DPS):
            for k in range(len(x_row)):
                h = step * max(1.0, abs(x_row[k]))
                up, down = list(x_row), list(x_row)
                up[k] += h
                down[k] -= h
                h_exact = (mpmath.mpf(up[k]) - mpmath.mpf(down[k])) / 2
                grad.append((self(up) - self(down)) / (2 * h_exact))
        return grad
