"""Stage 3a, lower: the SymPy energy -> a vectorised program of levels.

A *level* is a set of index points evaluated together as one tensor axis: a
reduction ``Sum(body, (i, 0, n - 2))`` becomes a level whose points are
``i = 0 .. n-2``; the body is evaluated once for all points as a tensor
``[..., P]`` and reduced along the last axis. Every ``x[i + 1]`` in the body
becomes a *load*: a slice ``x[..., 1:n]`` when the index is unit-stride in a
single range, a strided slice ``x[..., 1::2]`` for ``x[2*i + 1]``, or a
gather ``x[..., idx]`` with an index tensor built once per ``n`` (the *layout*). Pair sums (``for i ... for j in range(i + 1, n)``) are
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
from .ir import Addressing, Level, Load, LoadKind, MatVec, Program, Reduction, frozen_map
from .symbols import N, X, size_symbol
from .sympy_input import formula_from_sympy

_REDUCERS = {F.Sum: "sum", F.Product: "prod", F.LogSumExp: "lse", F.Norm: "norm"}


@dataclass(eq=False)
class _LevelDraft:
    """A level while it is being lowered (frozen into :class:`ir.Level` at the end)."""
    id: int
    parent: "_LevelDraft | None"
    clauses: list              # [(var, lo, hi_exclusive)] outermost first
    loads: dict = field(default_factory=dict)          # (base, indices) -> _LoadDraft
    index_values: dict = field(default_factory=dict)   # var -> symbol (float column)
    outer: dict = field(default_factory=dict)          # root symbol -> broadcast symbol
    reductions: list = field(default_factory=list)     # (op, body, result, value)
    matvec: tuple | None = None                         # MatVec fields
    mergeable: bool = True
    terms: list = field(default_factory=list)           # the formula's terms, as text

    @property
    def all_vars(self):
        up = self.parent.all_vars if self.parent else []
        return up + [c[0] for c in self.clauses]


@dataclass(eq=False)
class _LoadDraft:
    symbol: sp.Symbol
    base: str
    indices: tuple
    kind: LoadKind


class _Lowering:
    def __init__(self, param_ranks, sizes, equal_sizes=()):
        self.param_ranks = param_ranks   # name -> rank (params, derived, constants)
        self.sizes = sizes               # name -> tuple of SymPy size expressions
        self.equal_sizes = tuple(equal_sizes)   # (a, b): sizes checked equal at call time
        self.levels: list[_LevelDraft] = []
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
    def run(self, expr, size_subs, symmetric):
        energy = self.lower(expr, None)
        return self.freeze(energy, size_subs, symmetric)

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
            kind = LoadKind.X if expr.base == X else (
                LoadKind.VECTOR if base in self.vectors else LoadKind.PARAM)
            stem = "x" if kind is LoadKind.X else "p"
            store[key] = _LoadDraft(self.sym(stem), base, indices, kind)
        return store[key].symbol

    def reduction(self, expr, level):
        op = _REDUCERS[type(expr)]
        clauses = [(v, lo, hi + 1) for v, lo, hi in reversed(expr.limits)]
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
            new = _LevelDraft(next(self.level_ids), parent, clauses, mergeable=simple)
        body = self.lower(body_expr, new)
        if new not in self.levels:
            self.levels.append(new)
        result, value = self.sym("r" if op == "sum" else op), self.sym("v")
        # a body that is one load is reduced directly (no copy)
        new.reductions.append((op, body, result, body if body.is_Symbol else value))
        new.terms.append(_term_text(expr))
        self.seen[seen] = result
        if parent is None and level is not None:
            return self.outer(result, level)
        return result

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
        hl = _LevelDraft(next(self.level_ids), None, [clause], mergeable=False)
        body = self.lower(h, hl)
        self.levels.append(hl)
        name = f"_mv{len(self.vectors)}"
        rows, cols = self.sizes[matrix]
        value = self.sym("v")
        _, lo, hi = clause
        full = cols if row_major else rows
        whole = sp.expand(lo + offset) == 0 and sp.expand(hi + offset - full) == 0
        hl.matvec = (body, body if body.is_Symbol else value, matrix, row_major, offset,
                     name, rows if row_major else cols, hl.id, whole)
        hl.terms.append(f"({_term_text(h)}) @ {matrix}" if not row_major
                        else f"{matrix} @ ({_term_text(h)})")
        self.vectors[name] = hl.matvec
        self.param_ranks[name] = 1
        return self.load(sp.IndexedBase(name, real=True)[outer_ix], level)

    # -- the frozen program -----------------------------------------------------------------
    def freeze(self, energy, size_subs, symmetric):
        """The drafts as a frozen :class:`Program`, every load's addressing decided."""
        self.size_subs = dict(size_subs)
        vectors = {name: MatVec(*fields) for name, fields in self.vectors.items()}
        self.frozen_vectors = vectors
        frozen = {}
        for draft in sorted(self.levels, key=lambda d: d.id):   # parents first
            parent = frozen[draft.parent.id] if draft.parent is not None else None
            clauses = tuple(draft.clauses)
            loads = tuple(self.freeze_load(ld, draft) for ld in draft.loads.values())
            reductions = tuple(Reduction(*r) for r in draft.reductions)
            mv = vectors[draft.matvec[5]] if draft.matvec is not None else None
            frozen[draft.id] = Level(draft.id, parent, clauses, loads,
                                     tuple(draft.index_values.items()),
                                     tuple(draft.outer.items()), reductions, mv,
                                     tuple(draft.terms), self.tiled(loads, draft))
            if parent is not None and not frozen[draft.id].rectangular:
                for r in reductions:
                    if r.op != "sum":
                        name = {"lse": "logsumexp"}.get(r.op, r.op)
                        raise EnergySyntaxError(
                            f"a nested {name}(...) whose range depends on an outer index "
                            f"cannot be vectorised; make its range independent of the outer "
                            f"index (mask terms with where(...))")
        roots = tuple(self.freeze_load(ld, None) for ld in self.root_loads.values())
        return Program(energy, tuple(frozen[d.id] for d in self.levels), roots,
                       frozen_map(vectors), frozen_map(self.names), frozen_map(size_subs),
                       frozenset(symmetric), self.root_tiled(roots))

    def freeze_load(self, ld, level):
        """Decide how a load is addressed: an element at the root; in a one-range level a
        unit-stride slice (the whole axis when it covers it) or a strided slice
        ``base[k*i + c]`` (when every load of that base in the level has stride k, so
        that two of them meet only at a constant offset); else a gather."""
        if level is None:
            return Load(ld.symbol, ld.base, ld.indices, ld.kind, Addressing.ELEMENT)
        affine = self.affine(ld, level)
        if affine is None:
            return Load(ld.symbol, ld.base, ld.indices, ld.kind, Addressing.GATHER)
        stride, off = affine
        if stride != 1:
            same = {self.affine(other, level) is not None
                    and self.affine(other, level)[0] == stride
                    for other in level.loads.values() if other.base == ld.base}
            if same != {True}:      # mixed strides of one base: gathers, as before
                return Load(ld.symbol, ld.base, ld.indices, ld.kind, Addressing.GATHER)
            return Load(ld.symbol, ld.base, ld.indices, ld.kind, Addressing.STRIDED, off,
                        stride=stride)
        _, lo, hi = level.clauses[0]
        whole = sp.simplify(lo + off) == 0 and sp.simplify(hi + off - self.size_of(ld)) == 0
        return Load(ld.symbol, ld.base, ld.indices, ld.kind,
                    Addressing.WHOLE if whole else Addressing.SLICE, off)

    def affine(self, ld, level):
        """``(k, c)`` when a load reads ``base[k*i + c]`` in a one-range level, with ``k`` a
        positive integer constant and ``c`` free of the index; None otherwise."""
        if level.parent is not None or len(level.clauses) != 1 or len(ld.indices) != 1:
            return None
        if ld.kind is LoadKind.PARAM and self.param_ranks.get(ld.base, 1) != 1:
            return None
        var = level.clauses[0][0]
        index = sp.expand(ld.indices[0])
        stride = index.coeff(var)
        off = sp.expand(index - stride * var)
        if not (stride.is_Integer and stride > 0) or var in off.free_symbols or any(
                isinstance(a, (sp.Mod, sp.floor)) for a in sp.preorder_traversal(index)):
            return None
        sizes = {N} | {size_symbol(name, axis) for name in self.sizes for axis in (0, 1)}
        if off.free_symbols - sizes:
            return None
        return int(stride), off

    def tiled(self, loads, level):
        """The bases whose strided loads in ``level`` cover their axis exactly once: stride
        k, offsets c0 .. c0 + k - 1 with ``k*lo + c0 = 0`` and ``k*hi + c0`` the axis
        length, equal as written or by a size check (``2*(n // 2) == n``)."""
        out = set()
        for base in {ld.base for ld in loads if ld.addressing is Addressing.STRIDED}:
            mine = [ld for ld in loads if ld.base == base]
            k = mine[0].stride
            diffs = [sp.expand(ld.offset - mine[0].offset) for ld in mine]
            if len(mine) != k or not all(d.is_Integer for d in diffs):
                continue
            c0 = mine[0].offset + min(diffs)
            if {int(d - min(diffs)) for d in diffs} != set(range(k)):
                continue
            _, lo, hi = level.clauses[0]
            size = self.size_of(mine[0])
            if sp.expand(k * lo + c0) == 0 and self.known_equal(k * hi + c0, size):
                out.add(base)
        return frozenset(out)

    def root_tiled(self, roots):
        """The bases whose root loads read indices 0 .. m - 1 once each, m their length
        (``x[0]``, ``x[1]`` with n = 2 fixed by the definition)."""
        out = set()
        for base in {ld.base for ld in roots if ld.kind is LoadKind.X}:
            mine = [ld for ld in roots if ld.base == base and len(ld.indices) == 1]
            index = {ld.indices[0] for ld in mine}
            if (all(i.is_Integer for i in index) and len(index) == len(mine)
                    and index == set(range(len(mine)))
                    and self.known_equal(sp.Integer(len(mine)), self.size_of(mine[0]))):
                out.add(base)
        return frozenset(out)

    def known_equal(self, a, b) -> bool:
        """True when ``a == b`` as written or by one of the size checks."""
        if sp.expand(a - b) == 0:
            return True
        return any({sp.expand(a - u), sp.expand(b - v)} == {0} or
                   {sp.expand(a - v), sp.expand(b - u)} == {0}
                   for u, v in self.equal_sizes)

    def size_of(self, ld):
        """The length of the axis a one-index load reads."""
        if ld.kind is LoadKind.X:
            return N
        if ld.kind is LoadKind.VECTOR:
            return self.frozen_vectors[ld.base].length
        size = self.sizes[ld.base][0]
        return size.subs(self.size_subs) if self.size_subs else size


def _term_text(expr, limit=80) -> str:
    """A reduction as the formula says it, shortened to ``limit`` characters."""
    try:
        text = formula_from_sympy(expr)
    except EnergySyntaxError:
        text = str(expr)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def lower(expr: sp.Expr, param_ranks: dict, sizes: dict, size_subs=None,
          symmetric=frozenset(), equal_sizes=()) -> Program:
    """Lower a scalar energy to levels. ``sizes`` maps array names to size expressions;
    ``size_subs``, sizes checked equal to ``n`` (or another size); ``symmetric``, the
    matrices known to be symmetric; ``equal_sizes``, pairs ``(a, b)`` of size
    expressions the layout checks equal (the parser's size checks)."""
    try:
        return _Lowering(dict(param_ranks), sizes, equal_sizes).run(
            expr, size_subs or {}, symmetric)
    except RecursionError:
        raise EnergySyntaxError("the formula is nested too deeply to compile") from None


__all__ = ["lower"]
