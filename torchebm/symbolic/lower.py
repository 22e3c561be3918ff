"""Stage 3a, lower: the SymPy energy -> a vectorised program of levels.

A *level* is a set of index points evaluated together as one tensor axis: a
reduction ``Sum(body, (i, 0, n - 2))`` becomes a level whose points are
``i = 0 .. n-2``; the body is evaluated once for all points as a tensor
``[..., P]`` and reduced along the last axis. Every ``x[i + 1]`` in the body
becomes a *load*: a slice ``x[..., 1:n]`` when the index is unit-stride in a
single range, or a gather ``x[..., idx]`` with an index tensor built once per
``n`` (the *layout*). Pair sums (``for i ... for j in range(i + 1, n)``) are
levels of ``n (n - 1) / 2`` points; nested reductions are child levels whose
points are the parent's points times their own.

Inside a level the body is an ordinary SymPy expression over plain symbols
(one per load, per index value and per nested result), so the next stage can
differentiate it with ``sympy.diff`` and apply the chain rule between levels,
never differentiating a symbolic sum. Compilation cost therefore does not
grow with ``n``.

``Sum_j A[r, j] * h(j)`` with ``A`` a matrix parameter is recognised as a
matrix-vector product and lowered to ``h @ A.T`` (no ``[B, n, n]`` temporary).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from . import functions as F
from ..errors import EnergySyntaxError
from .symbols import N, X

_REDUCERS = {F.Sum: "sum", F.Product: "prod", F.LogSumExp: "lse", F.Norm: "norm"}


@dataclass(eq=False)
class Load:
    """A tensor read at a level: ``base[indices]`` for every point of the level."""
    symbol: sp.Symbol
    base: str                  # 'x', a parameter, a derived key, a constant or a vector
    indices: tuple             # SymPy integer expressions in the level's index variables
    kind: str                  # 'x' | 'param' | 'vector'
    level: "Level | None"      # None: the root (per sample, no point axis)
    tangent: bool = False      # reads the tangent v (or a tangent vector) instead of the base
    like: "Load | None" = None # the primal load whose index tensors a tangent load reuses


@dataclass(eq=False)
class Reduction:
    op: str                    # 'sum' | 'prod' | 'lse'
    body: sp.Expr
    result: sp.Symbol          # lives in the parent level (or the root)
    value: sp.Symbol           # the body's value at the level's points


@dataclass(eq=False)
class Level:
    id: int
    parent: "Level | None"
    clauses: list              # [(var, lo, hi_exclusive)] outermost first
    loads: dict = field(default_factory=dict)          # (base, indices) -> Load
    index_values: dict = field(default_factory=dict)   # var -> symbol (float column)
    outer: dict = field(default_factory=dict)          # root symbol -> broadcast symbol
    reductions: list = field(default_factory=list)
    matvec: "MatVec | None" = None
    mergeable: bool = True

    @property
    def all_vars(self):
        up = self.parent.all_vars if self.parent else []
        return up + [c[0] for c in self.clauses]

    @property
    def rectangular(self):
        """Own bounds independent of every index: points factor as parent x own."""
        ivars = set(self.all_vars)
        return all(not ((lo.free_symbols | hi.free_symbols) & ivars)
                   for _, lo, hi in self.clauses)


@dataclass(eq=False)
class MatVec:
    """``vector = h @ A[rows, cols]``-style product over a root-parented level."""
    level: Level
    body: sp.Expr
    value: sp.Symbol
    matrix: str                # parameter or derived key
    row_major: bool            # True: y_r = sum_j A[r, j + c] h_j ; False: A[j + c, r]
    offset: sp.Expr            # c
    vector: str                # name of the result vector
    length: sp.Expr            # its length (rows or columns of A)

    @property
    def symbol(self) -> sp.Symbol:
        """The whole result vector ``[..., length]`` as one symbol."""
        return sp.Symbol(self.vector, real=True)


@dataclass
class Program:
    energy: sp.Expr                      # root expression, over root symbols
    levels: list                         # forward order (children before parents)
    root_loads: dict                     # (base, indices) -> Load at the root
    vectors: dict                        # vector name -> MatVec
    symbol_names: dict = field(default_factory=dict)   # symbol -> readable stem
    size_subs: dict = field(default_factory=dict)      # sizes known equal to n (checked)
    symmetric: frozenset = frozenset()                 # matrices known to be symmetric


class _Lowering:
    def __init__(self, param_ranks, sizes):
        self.param_ranks = param_ranks   # name -> rank (params, derived, constants)
        self.sizes = sizes               # name -> tuple of SymPy size expressions
        self.levels: list[Level] = []
        self.root_loads: dict = {}
        self.vectors: dict = {}
        self.counter = itertools.count()
        self.level_ids = itertools.count()
        self.names: dict = {}
        self.seen: dict = {}             # (parent level id, reduction) -> its result

    def sym(self, stem):
        s = sp.Symbol(f"_{stem}{next(self.counter)}", real=True)
        self.names[s] = stem
        return s

    # -- entry ------------------------------------------------------------------
    def run(self, expr):
        energy = self.lower(expr, None)
        return Program(energy, self.levels, self.root_loads, self.vectors, self.names)

    def lower(self, expr, level):
        if isinstance(expr, (sp.Sum, sp.Product)) and type(expr) not in _REDUCERS:
            expr = {sp.Sum: F.Sum, sp.Product: F.Product}[type(expr)](expr.function, *expr.limits)
        if isinstance(expr, tuple(_REDUCERS)):
            return self.reduction(expr, level)
        if isinstance(expr, sp.Indexed):
            return self.load(expr, level)
        if isinstance(expr, sp.Symbol) and level is not None and expr in level.all_vars:
            if expr not in level.index_values:
                level.index_values[expr] = self.sym(f"{expr.name}_value")
            return level.index_values[expr]
        if not expr.args or expr.is_Atom:
            return expr
        args = [self.lower(a, level) for a in expr.args]
        return expr.func(*args)

    def load(self, expr, level):
        base = expr.base.label.name
        indices = tuple(expr.indices)
        store = self.root_loads if level is None else level.loads
        key = (base, indices)
        if key not in store:
            kind = "x" if expr.base == X else (
                "vector" if base in self.vectors else "param")
            stem = "x" if kind == "x" else "p"
            store[key] = Load(self.sym(stem), base, indices, kind, level)
        return store[key].symbol

    def reduction(self, expr, level):
        op = _REDUCERS[type(expr)]
        clauses = [(v, lo, hi + 1) for v, lo, hi in reversed(expr.limits)]
        own = {c[0] for c in clauses}
        enclosing = set(level.all_vars) if level else set()
        free = expr.free_symbols & enclosing
        parent = level if free else None
        # the same reduction twice (a local definition used twice is inlined twice) is
        # computed once: one level of points, one result, one gradient term
        seen = (parent.id if parent is not None else None, expr)
        if seen in self.seen:
            result = self.seen[seen]
            return self.outer(result, level) if parent is None and level is not None else result

        if (parent is not None and op == "sum" and len(clauses) == 1
                and not (clauses[0][1].free_symbols | clauses[0][2].free_symbols) & enclosing):
            mv = self.match_matvec(expr.function, clauses[0], enclosing)
            if mv is not None:
                return self.matvec(mv, clauses[0], level)

        new = None
        simple = not any(isinstance(a, tuple(_REDUCERS)) for a in
                         sp.preorder_traversal(expr.function))
        body_expr = expr.function
        if parent is None and simple:
            for lv in self.levels:  # share the points (and CSE) of an identical range
                if lv.parent is None and lv.mergeable and len(lv.clauses) == len(clauses):
                    rename = {new_v: old_v for (new_v, _, _), (old_v, _, _)
                              in zip(clauses, lv.clauses)}
                    if all(lo.subs(rename) == olo and hi.subs(rename) == ohi
                           for (_, lo, hi), (_, olo, ohi) in zip(clauses, lv.clauses)):
                        new, body_expr = lv, body_expr.xreplace(rename)
                        break
        if new is None:
            new = Level(next(self.level_ids), parent, clauses, mergeable=simple)
        body = self.lower(body_expr, new)
        if new not in self.levels:
            self.levels.append(new)
        red = Reduction(op, body, self.sym("r" if op == "sum" else op), self.sym("v"))
        new.reductions.append(red)
        self.seen[seen] = red.result
        if parent is None and level is not None:
            return self.outer(red.result, level)
        return red.result

    def outer(self, root_symbol, level):
        if root_symbol not in level.outer:
            level.outer[root_symbol] = self.sym("b")
        return level.outer[root_symbol]

    # -- matrix-vector products -------------------------------------------------
    def match_matvec(self, body, clause, enclosing):
        """``A[r, j + c] * h(j)`` with ``r`` an outer index expression and ``h`` free of them."""
        j = clause[0]
        if not isinstance(body, sp.Mul):
            return None
        found = None
        rest = []
        for f in body.args:
            if (isinstance(f, sp.Indexed) and f.base != X and len(f.indices) == 2
                    and self.param_ranks.get(f.base.label.name) == 2 and found is None):
                r, c = f.indices
                for row_major, (outer_ix, inner_ix) in ((True, (r, c)), (False, (c, r))):
                    off = sp.expand(inner_ix - j)
                    if (not off.free_symbols & (enclosing | {j})
                            and outer_ix.free_symbols & enclosing
                            and j not in outer_ix.free_symbols):
                        found = (f.base.label.name, row_major, off, outer_ix)
                        break
                if found is not None:
                    continue
            rest.append(f)
        if found is None:
            return None
        h = sp.Mul(*rest)
        if h.free_symbols & enclosing:
            return None
        if any(isinstance(a, tuple(_REDUCERS)) and (a.free_symbols & enclosing)
               for a in sp.preorder_traversal(h)):
            return None
        return found + (h,)

    def matvec(self, match, clause, level):
        matrix, row_major, offset, outer_ix, h = match
        hl = Level(next(self.level_ids), None, [clause], mergeable=False)
        body = self.lower(h, hl)
        self.levels.append(hl)
        name = f"_mv{len(self.vectors)}"
        rows, cols = self.sizes[matrix]
        mv = MatVec(hl, body, self.sym("v"), matrix, row_major, offset, name,
                    rows if row_major else cols)
        hl.matvec = mv
        self.vectors[name] = mv
        self.param_ranks[name] = 1
        return self.load(sp.IndexedBase(name, real=True)[outer_ix], level)


def lower(expr: sp.Expr, param_ranks: dict, sizes: dict) -> Program:
    """Lower a scalar energy to levels. ``sizes`` maps array names to size expressions."""
    try:
        return _Lowering(dict(param_ranks), sizes).run(expr)
    except RecursionError:
        raise EnergySyntaxError("the formula is nested too deeply to compile") from None


__all__ = ["Load", "Level", "MatVec", "Program", "Reduction", "lower", "N"]
