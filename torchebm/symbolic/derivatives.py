"""Stage 3b, derivatives: levels -> straight-line statements for energy and gradient.

Forward, each level evaluates its bodies and, next to them, the partial
derivative of each body with respect to each of its symbols (``sympy.diff``
on plain symbols: one symbol per load, per nested result). Backward applies
the chain rule level by level in reverse (reverse-mode accumulation): the
adjoint of a reduction result is broadcast back to the level's points,
multiplied by the partials, and either accumulated into the gradient of
``x`` (a slice add or an ``index_add_``), reduced into the adjoint of an
outer result, or handed to a nested level. The result is a list of
statements, each tagged with the level whose shape it has, that the
optimise stage shares (CSE) and the emit stage prints.

Shape classes of a value: ``scalar`` (a number or a parameter), ``batch``
(``[...]``, per sample), ``point`` (``[P]``, per point of a level, the same
for every sample) and ``both`` (``[..., P]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import functions as F
from .lower import Level, Load, MatVec, Program


def partial(expr, s):
    """``d expr / d s``; of a sum, only the terms that contain ``s`` are differentiated.

    A flat root expression of many terms (``x[0]**2 + x[1]**2 + ...``) then costs
    one small diff per term and symbol instead of one whole-sum diff per symbol.
    """
    if isinstance(expr, sp.Add):
        return sp.Add(*[sp.diff(t, s) for t in expr.args if s in t.free_symbols])
    return sp.diff(expr, s)


def norm_weight(value, norm):
    """``value / norm``, the derivative of a norm in one term; 0 where the norm is 0 (the
    kink convention), NaN everywhere when the norm is NaN."""
    return F.where_else_zero(sp.Ne(norm, 0), F.Ratio, value, norm)


def tangent_name(vector: str) -> str:
    """Name of the tangent of an adjoint or matrix-vector vector (second order)."""
    return "x.dot" if vector == "x" else vector + "_dot"


# -- statements ------------------------------------------------------------------
@dataclass(eq=False)
class Stmt:
    level: Level | None

    def defines(self):
        return ()

    def uses(self):
        return ()


@dataclass(eq=False)
class Assign(Stmt):
    target: sp.Symbol
    expr: sp.Expr

    def defines(self):
        return (self.target,)

    def uses(self):
        return tuple(self.expr.free_symbols)


@dataclass(eq=False)
class LoadStmt(Stmt):
    load: Load

    def defines(self):
        return (self.load.symbol,)

    def uses(self):
        if self.load.kind == "dense":       # a gradient vector (second order)
            return ("adj:" + self.load.base,)
        if self.load.kind != "vector":
            return ()
        return (tangent_name(self.load.base) if self.load.tangent else self.load.base,)


@dataclass(eq=False)
class IndexValue(Stmt):
    target: sp.Symbol
    var: sp.Symbol

    def defines(self):
        return (self.target,)


@dataclass(eq=False)
class Unary(Stmt):
    """``target = f(source)`` for a non-elementwise f (the subclass says which)."""
    target: sp.Symbol
    source: sp.Symbol

    def defines(self):
        return (self.target,)

    def uses(self):
        return (self.source,)


@dataclass(eq=False)
class Broadcast(Unary):
    """A value of the enclosing level (or the root) repeated over this level's points."""


@dataclass(eq=False)
class Reduce(Unary):
    """Reduce ``source`` over this level's own points into the enclosing level.

    ``op``: 'sum' | 'prod' | 'lse', or 'sum_all' over every point of the level
    (an adjoint contribution to a per-sample value).
    """
    op: str = "sum"


@dataclass(eq=False)
class OthersProduct(Unary):
    """Product of all other terms of each segment (prod's gradient, exact with zeros)."""


@dataclass(eq=False)
class MatVecStmt(Stmt):
    matvec: MatVec
    adjoint: bool = False      # False: y = h @ A ; True: hbar = ybar @ A^T
    target: sp.Symbol | None = None

    def defines(self):
        return (self.target,) if self.adjoint else (self.matvec.vector, self.matvec.symbol)

    def uses(self):
        return (("adj:" + self.matvec.vector,) if self.adjoint else (self.matvec.value,))


@dataclass(eq=False)
class InitAdjoint(Stmt):
    vector: str                # 'x' or a matvec vector name

    def defines(self):
        return ("adj:" + self.vector,)


@dataclass(eq=False)
class Accumulate(Stmt):
    """``adj:vector[load's indices] += source``; ``like`` names the input whose shape it has."""
    vector: str
    load: Load
    source: sp.Symbol
    like: str = "x"

    def defines(self):
        return ("adj:" + self.vector,)

    def uses(self):
        return ("adj:" + self.vector, self.source)


@dataclass
class Statements:
    body: list
    energy: sp.Symbol
    shapes: dict = field(default_factory=dict)      # symbol -> shape class
    program: Program | None = None
    builder: "_Builder | None" = None                # for the second-order stages
    tangent: set = field(default_factory=set)        # symbols shaped like the tangent v
    tangent_vectors: dict = field(default_factory=dict)   # tangent vector name -> MatVec
    second: list = field(default_factory=list)       # statements of the second-order entry points
    diagonal: list | None = None                     # ... of the direct Hessian diagonal
    dense_roots: dict = field(default_factory=dict)  # 'x@r' -> r, gradients of per-sample values


def join(*classes):
    batch = any(c in ("batch", "both") for c in classes)
    point = any(c in ("point", "both") for c in classes)
    return {(False, False): "scalar", (True, False): "batch",
            (False, True): "point", (True, True): "both"}[(batch, point)]


class _Builder:
    def __init__(self, program: Program):
        self.p = program
        self.out: list = []
        self.shapes: dict = {}
        self.xdep: set = set()
        self.counter = 0
        self.partials: dict = {}      # (owner, symbol) -> (constant factor, per-point symbol)
        self.defs: dict = {}          # symbol -> expression, for every Assign
        # recorded by the energy's reverse sweep, for the Hessian diagonal:
        self.point_adjoint: dict = {}   # reduction or matvec -> adjoint of its body per point
        self.result_adjoint: dict = {}  # reduction -> adjoint of its result
        self.first_partials: dict = {}  # (owner or None for the root, symbol) -> derivative

    def sym(self, stem):
        self.counter += 1
        return sp.Symbol(f"_{stem}_{self.counter}", real=True)

    def emit(self, stmt, shape=None):
        self.out.append(stmt)
        if isinstance(stmt, Assign):
            self.defs[stmt.target] = stmt.expr
        for d in stmt.defines():
            if isinstance(d, sp.Symbol) and shape is not None:
                self.shapes[d] = shape

    def shape_of(self, expr):
        return join(*[self.shapes.get(s, "scalar") for s in expr.free_symbols])

    def assign(self, stem, expr, level, target=None):
        """Emit ``target = expr``; a number or a bare symbol is returned as is (no copy)."""
        if target is None and (expr.is_Number or expr.is_Symbol):
            return expr
        target = target or self.sym(stem)
        self.emit(Assign(level, target, expr), self.shape_of(expr))
        if expr.free_symbols & self.xdep:
            self.xdep.add(target)
        return target

    # -- forward ------------------------------------------------------------------
    def forward_level(self, lv: Level):
        for ld in lv.loads.values():
            if ld.kind == "x":
                shape = "both"
                self.xdep.add(ld.symbol)
            elif ld.kind == "vector":
                vec = self.p.vectors[ld.base]
                dep = vec.vector in self.xdep
                shape = "both" if dep else "point"
                if dep:
                    self.xdep.add(ld.symbol)
            else:
                shape = "point"
            self.emit(LoadStmt(lv, ld), shape)
        for var, s in lv.index_values.items():
            self.emit(IndexValue(lv, s, var), "point")
        for root_sym, s in lv.outer.items():
            self.emit(Broadcast(lv, s, root_sym), self.shapes.get(root_sym, "scalar"))
            if root_sym in self.xdep:
                self.xdep.add(s)
        bodies = [(r.value, r.body, r) for r in lv.reductions]
        if lv.matvec is not None:
            bodies.append((lv.matvec.value, lv.matvec.body, lv.matvec))
        varying = {s for s, shape in self.shapes.items() if shape in ("point", "both")}
        for value, body, owner in bodies:
            if body.is_Symbol:      # the body is a load itself: reduce it directly
                owner.value = body
            else:
                self.assign("v", body, lv, target=value)
            computed = []     # (per-point factor, its symbol) of this body's partials
            for s in sorted(body.free_symbols & self.xdep, key=str):
                d = sp.factor_terms(partial(body, s))
                self.first_partials[(owner, s)] = d
                if d != 0:
                    # split off the factor that is the same at every point (parameters,
                    # per-sample values): the backward pass folds it into the adjoint,
                    # which is [..., 1], instead of multiplying a [..., P] tensor by it
                    const, per_point = d.as_independent(*varying, as_Add=False)
                    self.partials[(owner, s)] = self.shared_partial(const, per_point, lv,
                                                                    computed)
        for r in lv.reductions:
            # a source that is not per point is first broadcast to [..., P] (emit's
            # materialize), so only a parameter-only [P] source reduces to a scalar
            has_batch = self.shape_of(r.value) != "point"
            shape = ("batch" if has_batch else "scalar") if lv.parent is None else (
                "both" if has_batch else "point")
            self.emit(Reduce(lv, r.result, r.value, r.op), shape)
            if r.value in self.xdep:
                self.xdep.add(r.result)
        if lv.matvec is not None:
            mv = lv.matvec
            self.emit(MatVecStmt(lv, mv), "both" if mv.value in self.xdep else "point")
            if mv.value in self.xdep:
                self.xdep.add(mv.vector)

    def shared_partial(self, const, per_point, lv, computed):
        """``(const, symbol)`` for a partial, reusing an earlier one of the same body that
        differs by a constant factor: for ``f(x[j] - x[i])``, ``d/dx[i] = -d/dx[j]``, so
        pair energies compute one per-point derivative, not two (and so do their tangents).
        """
        for other, sym in computed:
            ratio = sp.signsimp(per_point / other)
            if ratio.is_Number and ratio.is_finite and ratio != 0:
                return const * ratio, sym
        sym = self.assign("d", per_point, lv)
        computed.append((per_point, sym))
        return const, sym

    def forward_root(self):
        for ld in self.p.root_loads.values():
            if ld.kind == "x":
                self.xdep.add(ld.symbol)
            self.emit(LoadStmt(None, ld), "batch" if ld.kind == "x" else "scalar")
        energy = self.assign("energy", self.p.energy, None)
        root_partials = {}
        for s in sorted(self.p.energy.free_symbols & self.xdep, key=str):
            d = partial(self.p.energy, s)
            self.first_partials[(None, s)] = d
            if d != 0:
                root_partials[s] = self.assign("d", d, None)
        return energy, root_partials

    # -- backward -------------------------------------------------------------------
    def backward(self, root_partials, seeded=False):
        """The reverse sweep from ``root_partials`` (root symbol -> adjoint).

        ``seeded``: a sweep for the gradient of one per-sample value (the
        Hessian diagonal needs them) rather than of the energy; it records
        nothing and stops at matrix-vector products.
        """
        contrib: dict = {}
        for s, d in root_partials.items():
            contrib.setdefault(s, []).append(d)
        self.emit(InitAdjoint(None, "x"))
        for name, mv in self.p.vectors.items():
            if mv.vector in self.xdep and not seeded:
                self.emit(InitAdjoint(None, name))
        for ld in self.p.root_loads.values():
            if ld.kind == "x" and ld.symbol in contrib:
                self.emit(Accumulate(None, "x", ld, self.sum_contrib(contrib.pop(ld.symbol),
                                                                      None)))
        for lv in reversed(self.p.levels):
            self.backward_level(lv, contrib, seeded)

    def sum_contrib(self, parts, level):
        if len(parts) == 1:
            return parts[0]
        return self.assign("a", sp.Add(*parts), level)

    def broadcast(self, value, lv):
        shape = self.shape_of(value)
        if shape == "scalar" or (lv.parent is None and not value.is_Symbol):
            return value          # numbers and parameters broadcast by themselves
        target = self.sym("bc")
        self.emit(Broadcast(lv, target, value),
                  self.shapes.get(value, "scalar") if lv.parent is None else
                  join(self.shapes.get(value, "scalar"), "point"))
        return target

    def backward_level(self, lv: Level, contrib, seeded=False):
        weights = []   # (owner, adjoint of the body at the level's points)
        for r in lv.reductions:
            parts = contrib.pop(r.result, None)
            if not parts or r.value not in self.xdep:
                continue
            abar = self.sum_contrib(parts, lv.parent)
            if not seeded:
                self.result_adjoint[r] = abar
            bbar = self.broadcast(abar, lv)
            if r.op == "prod":
                others = self.sym("others")
                self.emit(OthersProduct(lv, others, r.value), self.shape_of(r.value))
                bbar = self.assign("w", bbar * others, lv)
            elif r.op == "lse":
                res = self.broadcast(r.result, lv)
                bbar = self.assign("w", bbar * sp.exp(r.value - res), lv)
            elif r.op == "norm":
                # d norm / d v_i = v_i / norm (at most 1: no overflow), 0 at norm 0
                res = self.broadcast(r.result, lv)
                bbar = self.assign("w", bbar * norm_weight(r.value, res), lv)
            weights.append((r, bbar))
        mv = lv.matvec
        if mv is not None and mv.vector in self.xdep and not seeded:
            ratio = self.symmetric_quadratic_form(lv, mv)
            if ratio is not None:
                self.shapes[mv.symbol] = "both"
                hbar = self.assign("hbar", ratio * mv.symbol, lv)
            else:
                hbar = self.sym("hbar")
                self.emit(MatVecStmt(lv, mv, adjoint=True, target=hbar), "both")
            self.xdep.add(hbar)
            weights.append((mv, hbar))
        if not weights:
            return
        if not seeded:
            self.point_adjoint.update(weights)
        symbols = set()
        for owner, _ in weights:
            symbols |= {s for (o, s) in self.partials if o is owner}
        for s in sorted(symbols, key=str):
            terms = []
            for o, w in weights:
                if (o, s) in self.partials:
                    const, per_point = self.partials[(o, s)]
                    terms.append(self.assign("w", w * const, lv) * per_point)
            total = self.assign("g", sp.Add(*terms), lv)
            self.route(s, total, lv, contrib)

    def symmetric_quadratic_form(self, lv, mv):
        """``c`` when the adjoint of ``y = A h`` is ``c * h`` and ``A`` is symmetric.

        Then ``A^T (c h) = c y``: the gradient of ``h^T A h`` reuses the forward
        product instead of a second matrix product (the Gaussian's case).
        """
        if mv.matrix not in self.p.symmetric:
            return None
        acc = [st for st in self.out if isinstance(st, Accumulate) and st.vector == mv.vector]
        if len(acc) != 1 or acc[0].level is None or acc[0].level.parent is not None:
            return None
        ld, other = acc[0].load, acc[0].level
        (var, lo, hi), = lv.clauses
        if len(other.clauses) != 1:
            return None
        (ovar, olo, ohi), = other.clauses
        if (lo + mv.offset, hi + mv.offset) != (0, mv.length) or (olo, ohi) != (0, mv.length):
            return None
        if ld.indices != (ovar,):
            return None
        rename = {ovar: var}
        adj = self.canonical(acc[0].source, other, rename)
        h = self.canonical(mv.value if mv.value in self.defs else mv.body, lv, {})
        if adj is None or h is None or h == 0:
            return None
        ratio = sp.simplify(adj / h)
        if any(self.shapes.get(s) in ("point", "both") for s in ratio.free_symbols) \
                or any(isinstance(s, tuple) for s in ratio.free_symbols):
            return None
        return ratio

    def canonical(self, expr, level, rename):
        """``expr`` with level temporaries expanded and loads named by what they read."""
        loads = {ld.symbol: sp.Symbol(f"{ld.base}[{ld.indices[0].xreplace(rename)}]", real=True)
                 for ld in level.loads.values() if len(ld.indices) == 1}
        for _ in range(50):
            expanded = expr.xreplace({s: self.defs[s] for s in expr.free_symbols
                                      if s in self.defs})
            if expanded == expr:
                break
            expr = expanded
        out = expr.xreplace(loads)
        if any(self.shapes.get(s) in ("point", "both") for s in out.free_symbols):
            return None
        return out

    def route(self, s, total, lv, contrib):
        for ld in lv.loads.values():
            if ld.symbol == s:
                self.emit(Accumulate(lv, "x" if ld.kind == "x" else ld.base, ld, total))
                return
        for root_sym, b in lv.outer.items():
            if b == s:
                target = self.sym("rs")
                shape = self.shape_of(total)
                self.emit(Reduce(lv, target, total, "sum_all"),
                          "scalar" if shape == "point" else "batch")
                contrib.setdefault(root_sym, []).append(target)
                return
        contrib.setdefault(s, []).append(total)   # a nested level's result


def build(program: Program) -> Statements:
    """Forward statements, then the reverse sweep, for one lowered program."""
    b = _Builder(program)
    for lv in program.levels:
        b.forward_level(lv)
    energy, root_partials = b.forward_root()
    b.backward(root_partials)
    return Statements(b.out, energy, b.shapes, program, builder=b)
