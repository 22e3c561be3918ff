"""The SymPy vocabulary shared by every stage.

Conventions of the expression stage:

* the sample is ``x = IndexedBase('x', real=True)``; ``x[i]`` is a component;
* ``n`` is the dimension, a nonnegative integer symbol;
* a scalar parameter ``a`` is ``Symbol('a', real=True)``; a vector or matrix
  parameter ``mu`` is ``IndexedBase('mu', real=True)``;
* ``len(w)`` is the integer symbol ``w.shape[0]`` (``size_symbol``);
* a parameter-only matrix function such as ``inverse(S)`` is a derived
  parameter named by its call (``IndexedBase('inverse(S)')``), computed once
  per parameter value by the generated module;
* reductions are ``sympy.Sum``, ``sympy.Product`` and ``LogSumExp`` over
  integer index symbols, with SymPy's inclusive upper limits.

Names are plain symbols, so ``lambda``, ``E``, ``I``, ``N``, ``S``, ``O``,
``Q``, ``beta``, ``gamma`` and ``zeta`` are parameters like any other; they
are renamed only in the emitted Python.
"""

from __future__ import annotations

import sympy as sp

X = sp.IndexedBase("x", real=True)
N = sp.Symbol("n", integer=True, nonnegative=True)
CONSTANTS = {"pi": sp.pi, "e": sp.E, "inf": sp.oo}


def param_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def param_base(name: str) -> sp.IndexedBase:
    return sp.IndexedBase(name, real=True)


def index_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True)


def size_symbol(name: str, axis: int) -> sp.Symbol:
    return sp.Symbol(f"{name}.shape[{axis}]", integer=True, nonnegative=True)


def split_size_symbol(sym: sp.Symbol):
    """``'w.shape[0]'`` -> ``('w', 0)``; None for other symbols."""
    name = sym.name
    if name.endswith("]") and ".shape[" in name:
        base, axis = name[:-1].rsplit(".shape[", 1)
        return base, int(axis)
    return None


def depends_on_x(expr: sp.Basic) -> bool:
    """True if ``expr`` reads a component of the sample x."""
    return any(a.base == X for a in expr.atoms(sp.Indexed))
