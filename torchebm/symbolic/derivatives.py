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

Shape classes of a value: :class:`ir.Shape`.
"""

from __future__ import annotations

import sympy as sp

from . import functions as F
from .ir import (GRADIENT, Accumulate, Adjoint, AdjointInfo, Assign, Broadcast, IndexValue, InitAdjoint,
                 Kernel, Level, LoadKind, LoadStmt, MatrixAdjoint, MatVecStmt, OthersProduct,
                 ParameterAccumulate, ParameterScalar, Program, Reduce, Shape, Vector, VectorKind,
                 frozen_map)



#: The key of the energy in the batch-summed parameter kernel's result (not an
#: identifier: a parameter named ``energy`` keeps its own key).
ENERGY_KEY = "(energy)"

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
    kink convention), NaN everywhere when the norm is NaN.

    The guard is on the norm alone, a per-sample scalar: ``value / where(norm != 0,
    norm, inf)``. A norm of 0 has every component 0, so the quotient is 0 there, and
    its derivatives (``1/inf``, ``-value/inf**2``) are 0 too: no NaN under autograd,
    and one pass over the full-size ``value`` instead of three guarded ones."""
    return F.Ratio(value, sp.Piecewise((norm, sp.Ne(norm, 0)), (sp.oo, True)))


def masked_factors_out(d, finite):
    """``where(c, a * f, 0)`` as ``where(c, a, 0) * f`` when ``f`` is finite wherever
    its symbols are (``finite``: symbols known finite for finite x, such as loads of x).

    A pair energy under ``where(d_ij > 0, ..., inf)`` has partials
    ``where(c, w * (x_i - x_j), 0)``, one per coordinate; split this way, the
    per-pair weight ``where(c, w, 0)`` is one shared value (CSE) and each coordinate
    costs one product instead of a product and a ``where``. The value is unchanged:
    where ``c`` fails, ``0 * f`` is 0 because ``f`` is finite."""
    if not (isinstance(d, sp.Piecewise) and len(d.args) == 2 and d.args[1].cond == sp.true
            and d.args[1].expr == 0 and isinstance(d.args[0].expr, sp.Mul)):
        return d
    (expr, cond), _ = d.args
    out = [f for f in expr.args if not f.is_Number and _finite(f, finite)]
    if not out:
        return d
    keep = sp.Mul(*[f for f in expr.args if not any(f is o for o in out)])
    sign = -1 if keep.could_extract_minus_sign() else 1     # the sign stays outside, so
    return sign * sp.Mul(sp.Piecewise((sign * keep, cond), (0, True)), *out)  # x_i, x_j share


def _ratio(a, b):
    """``a / b`` simplified for sign, common factors cancelled first (a ``where`` factor
    shared by both would otherwise be inverted into ``where(c, 1/w, zoo)``)."""
    fa, fb = list(sp.Mul.make_args(a)), list(sp.Mul.make_args(b))
    for f in list(fa):
        if f in fb and not f.is_Number:
            fa.remove(f)
            fb.remove(f)
    return sp.signsimp(sp.Mul(*fa) / sp.Mul(*fb))


def _finite(e, finite) -> bool:
    """True when ``e`` is finite wherever the symbols in ``finite`` are (a polynomial in
    them, read through guards)."""
    if e.is_Number:
        return bool(e.is_finite)
    if e.is_Symbol:
        return e in finite
    if isinstance(e, F.Guard):
        return _finite(e.args[0], finite)
    if isinstance(e, (sp.Add, sp.Mul)):
        return all(_finite(a, finite) for a in e.args)
    if isinstance(e, sp.Pow):
        return (e.exp.is_Integer and e.exp > 0) and _finite(e.base, finite)
    return False


class _Builder:
    def __init__(self, program: Program, first_symbol: int = 0):
        self.p = program
        self.out: list = []
        self.shapes: dict = {}
        self.xdep: set = set()
        self.counter = first_symbol
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
        return Shape.join(*[self.shapes.get(s, Shape.SCALAR) for s in expr.free_symbols])

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
        for ld in lv.loads:
            if ld.kind is LoadKind.X:
                shape = Shape.BOTH
                self.xdep.add(ld.symbol)
            elif ld.kind is LoadKind.VECTOR:
                vec = self.p.vectors[ld.base]
                dep = vec.symbol in self.xdep
                shape = Shape.BOTH if dep else Shape.POINT
                if dep:
                    self.xdep.add(ld.symbol)
            else:
                shape = Shape.POINT
            self.emit(LoadStmt(lv, ld), shape)
        for var, s in lv.index_values:
            self.emit(IndexValue(lv, s, var), Shape.POINT)
        for root_sym, s in lv.outer:
            self.emit(Broadcast(lv, s, root_sym), self.shapes.get(root_sym, Shape.SCALAR))
            if root_sym in self.xdep:
                self.xdep.add(s)
        bodies = [(r.value, r.body, r) for r in lv.reductions]
        if lv.matvec is not None:
            bodies.append((lv.matvec.value, lv.matvec.body, lv.matvec))
        varying = {s for s, shape in self.shapes.items() if shape.per_point}
        for value, body, owner in bodies:
            if not body.is_Symbol:      # else the body is a load itself, reduced directly
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
                    masked = masked_factors_out(per_point, self.finite_symbols(lv))
                    if masked is not per_point:
                        more, per_point = masked.as_independent(*varying, as_Add=False)
                        const = const * more
                    self.partials[(owner, s)] = self.shared_partial(const, per_point, lv,
                                                                    computed)
        for r in lv.reductions:
            # a source that is not per point is first broadcast to [..., P] (emit's
            # materialize), so only a parameter-only [P] source reduces to a scalar
            has_batch = self.shape_of(r.value) is not Shape.POINT
            shape = (Shape.BATCH if has_batch else Shape.SCALAR) if lv.parent is None else (
                Shape.BOTH if has_batch else Shape.POINT)
            self.emit(Reduce(lv, r.result, r.value, r.op), shape)
            if r.value in self.xdep:
                self.xdep.add(r.result)
        if lv.matvec is not None:
            mv = lv.matvec
            self.emit(MatVecStmt(lv, mv), Shape.BOTH if mv.value in self.xdep else Shape.POINT)
            if mv.value in self.xdep:
                self.xdep.add(mv.symbol)

    def finite_symbols(self, lv):
        """Symbols of ``lv`` finite for finite x: its loads of x (per-sample inputs)."""
        return {ld.symbol for ld in lv.loads if ld.kind is LoadKind.X}

    def shared_partial(self, const, per_point, lv, computed):
        """``(const, symbol)`` for a partial, reusing an earlier one of the same body that
        differs by a constant factor: for ``f(x[j] - x[i])``, ``d/dx[i] = -d/dx[j]``, so
        pair energies compute one per-point derivative, not two (and so do their tangents).
        """
        for other, sym in computed:
            ratio = _ratio(per_point, other)
            if ratio.is_Number and ratio.is_finite and ratio != 0:
                return const * ratio, sym
        sym = self.assign("d", per_point, lv)
        computed.append((per_point, sym))
        return const, sym

    def forward_root(self):
        for ld in self.p.root_loads:
            if ld.kind is LoadKind.X:
                self.xdep.add(ld.symbol)
            self.emit(LoadStmt(None, ld), Shape.BATCH if ld.kind is LoadKind.X else Shape.SCALAR)
        energy = self.assign("energy", self.p.energy, None)
        root_partials = {}
        for s in sorted(self.p.energy.free_symbols & self.xdep, key=str):
            d = partial(self.p.energy, s)
            self.first_partials[(None, s)] = d
            if d != 0:
                root_partials[s] = self.assign("d", d, None)
        return energy, root_partials

    # -- backward -------------------------------------------------------------------
    def backward(self, root_partials, seeded=False, into=GRADIENT):
        """The reverse sweep from ``root_partials`` (root symbol -> adjoint).

        ``seeded``: a sweep for the gradient of one per-sample value (the
        Hessian diagonal needs them) rather than of the energy, accumulated
        into ``into``; it records nothing and stops at matrix-vector products.
        """
        self.into = into
        contrib: dict = {}
        for s, d in root_partials.items():
            contrib.setdefault(s, []).append(d)
        self.emit(InitAdjoint(None, into))
        for name, mv in self.p.vectors.items():
            if mv.symbol in self.xdep and not seeded:
                self.emit(InitAdjoint(None, Vector(VectorKind.MATVEC, name)))
        for ld in self.p.root_loads:
            if ld.kind is LoadKind.X and ld.symbol in contrib:
                self.emit(Accumulate(None, into, ld, self.sum_contrib(contrib.pop(ld.symbol),
                                                                       None)))
        for lv in reversed(self.p.levels):
            self.backward_level(lv, contrib, seeded)

    def sum_contrib(self, parts, level):
        if len(parts) == 1:
            return parts[0]
        return self.assign("a", sp.Add(*parts), level)

    def broadcast(self, value, lv):
        shape = self.shape_of(value)
        if shape is Shape.SCALAR or (lv.parent is None and not value.is_Symbol):
            return value          # numbers and parameters broadcast by themselves
        target = self.sym("bc")
        self.emit(Broadcast(lv, target, value),
                  self.shapes.get(value, Shape.SCALAR) if lv.parent is None else
                  Shape.join(self.shapes.get(value, Shape.SCALAR), Shape.POINT))
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
        if mv is not None and mv.symbol in self.xdep and not seeded:
            ratio = self.symmetric_quadratic_form(lv, mv)
            if ratio is not None:
                self.shapes[mv.symbol] = Shape.BOTH
                hbar = self.assign("hbar", ratio * mv.symbol, lv)
            else:
                hbar = self.sym("hbar")
                self.emit(MatVecStmt(lv, mv, adjoint=True, target=hbar), Shape.BOTH)
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
        acc = [st for st in self.out if isinstance(st, Accumulate)
               and st.vector == Vector(VectorKind.MATVEC, mv.vector)]
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
        if any(self.shapes.get(s, Shape.SCALAR).per_point for s in ratio.free_symbols) \
                or any(isinstance(s, tuple) for s in ratio.free_symbols):
            return None
        return ratio

    def canonical(self, expr, level, rename):
        """``expr`` with level temporaries expanded and loads named by what they read."""
        loads = {ld.symbol: sp.Symbol(f"{ld.base}[{ld.indices[0].xreplace(rename)}]", real=True)
                 for ld in level.loads if len(ld.indices) == 1}
        for _ in range(50):
            expanded = expr.xreplace({s: self.defs[s] for s in expr.free_symbols
                                      if s in self.defs})
            if expanded == expr:
                break
            expr = expanded
        out = expr.xreplace(loads)
        if any(self.shapes.get(s, Shape.SCALAR).per_point for s in out.free_symbols):
            return None
        return out

    def route(self, s, total, lv, contrib):
        for ld in lv.loads:
            if ld.symbol == s:
                vector = self.into if ld.kind is LoadKind.X else Vector(VectorKind.MATVEC,
                                                                        ld.base)
                self.emit(Accumulate(lv, vector, ld, total))
                return
        for root_sym, b in lv.outer:
            if b == s:
                target = self.sym("rs")
                shape = self.shape_of(total)
                self.emit(Reduce(lv, target, total, "sum_all"),
                          Shape.SCALAR if shape is Shape.POINT else Shape.BATCH)
                contrib.setdefault(root_sym, []).append(target)
                return
        contrib.setdefault(s, []).append(total)   # a nested level's result


def reverse_mode(program: Program, name: str = "energy_and_gradient"):
    """Forward statements, then the reverse sweep (reverse-mode accumulation).

    Returns ``(kernel, info)``: a kernel whose outputs are the energy and the
    gradient (``Adjoint(GRADIENT)``), and what the sweep learnt that the Hessian
    diagonal reuses (:class:`ir.AdjointInfo`).
    """
    b = _Builder(program)
    for lv in program.levels:
        b.forward_level(lv)
    energy, root_partials = b.forward_root()
    b.backward(root_partials)
    info = AdjointInfo(frozen_map(b.point_adjoint), frozen_map(b.result_adjoint),
                       frozen_map(b.first_partials), frozen_map(b.partials), frozenset(b.xdep))
    kernel = Kernel(name, ("x",), (energy, Adjoint(GRADIENT)), tuple(b.out), program, energy,
                    frozen_map(b.shapes), next_symbol=b.counter)
    return kernel, info


def seeded_gradient(kernel: Kernel, info: AdjointInfo, result: sp.Symbol, into: Vector):
    """The reverse sweep of the gradient of one per-sample value ``result`` (a root
    reduction's result), accumulated into ``into``.

    Returns ``(statements, shapes, next_symbol)``: the sweep, the shapes of the
    symbols it defines, and the number of the next new symbol (new symbols are
    numbered from ``kernel.next_symbol``).
    """
    b = _Builder(kernel.program, kernel.next_symbol)
    b.shapes = dict(kernel.shapes)
    b.xdep = set(info.xdep)
    b.partials = dict(info.partials)
    b.defs = {st.target: st.expr for st in kernel.body if isinstance(st, Assign)}
    b.backward({result: sp.S.One}, seeded=True, into=into)
    new = {s: shape for s, shape in b.shapes.items() if s not in kernel.shapes}
    return tuple(b.out), new, b.counter


class ParameterAdjointUnsupported(Exception):
    """The formula uses a parameter where :func:`parameter_adjoints` has no closed form
    (a matrix-vector product whose vector does not depend on ``x``); the runtime then
    differentiates the generated energy with ``torch.func`` instead."""


#: the first number of the parameter kernels' new symbols: past those of the gradient,
#: HVP and diagonal kernels (each numbers after the previous), so no symbol of another
#: kernel of the module is reused with another meaning
PARAMETER_SYMBOLS = 10**7


class _ParameterBuilder(_Builder):
    """The reverse sweep with the parameters as inputs beside ``x``.

    Parameter loads (``mu[i]``, ``W[i, j]``, ``inverse(S)[i, j]``) and scalar
    parameters (``k``, ``logdet(S)``) are differentiable symbols: their partials are
    taken with those of ``x``, and their adjoints are routed to
    :class:`ir.ParameterAccumulate` (arrays), :class:`ir.MatrixAdjoint` (the matrix of
    a matrix-vector product) or :class:`ir.ParameterScalar` (scalars) instead of the
    gradient of ``x``, which is not formed.
    """

    def __init__(self, program, arrays, scalars, summed, first_symbol):
        super().__init__(program, first_symbol)
        # [..., 1] broadcasts of per-sample values -> the values: the backward's own and
        # the forward's (a level's outer values, sum(x**2) in sum(x**2 * x)), so a factor
        # pulled out of a reduction is never the [..., 1] view at the root
        self.broadcast_source: dict = {s: root_sym for lv in program.levels
                                       if lv.parent is None for root_sym, s in lv.outer}
        self.arrays, self.scalars, self.summed = frozenset(arrays), dict(scalars), summed
        self.xdep |= set(self.scalars)
        for ld in list(program.root_loads) + [ld for lv in program.levels for ld in lv.loads]:
            if ld.kind is LoadKind.PARAM and ld.base in self.arrays:
                self.xdep.add(ld.symbol)
        for lv in program.levels:
            mv = lv.matvec
            if mv is not None and mv.matrix in self.arrays:
                # the forward marks the product per sample when its vector is in xdep:
                # a vector of parameters alone would be mislabelled
                if not (mv.body.free_symbols & {ld.symbol for ld in lv.loads
                                                 if ld.kind in (LoadKind.X,
                                                                LoadKind.VECTOR)}):
                    raise ParameterAdjointUnsupported(mv.matrix)

    def broadcast(self, value, lv):
        target = super().broadcast(value, lv)
        if target is not value and lv.parent is None:
            self.broadcast_source[target] = value      # [..., 1] of a [...] value
        return target

    def param_vector(self, base):
        return Vector(VectorKind.PARAMETER, base)

    def backward_params(self, root_partials):
        contrib: dict = {}
        for s, d in root_partials.items():
            contrib.setdefault(s, []).append(d)
        for name, mv in self.p.vectors.items():
            if mv.symbol in self.xdep:
                self.emit(InitAdjoint(None, Vector(VectorKind.MATVEC, name)))
        for ld in self.p.root_loads:
            parts = contrib.pop(ld.symbol, None)
            if parts and ld.kind is LoadKind.PARAM and ld.base in self.arrays:
                self.emit(ParameterAccumulate(None, self.param_vector(ld.base), ld,
                                              self.sum_contrib(parts, None), self.summed))
        for lv in reversed(self.p.levels):
            mv = lv.matvec
            if mv is not None and mv.matrix in self.arrays:
                # every reader of the product's vector is in a later level or the
                # root, already swept: its adjoint is complete here
                self.emit(MatrixAdjoint(lv, self.param_vector(mv.matrix), mv, self.summed))
            self.backward_level(lv, contrib)
        outputs = {}
        for s, name in self.scalars.items():
            parts = contrib.pop(s, None)
            if parts:
                total = self.sum_contrib(parts, None)
                target = self.sym("pbar")
                self.emit(ParameterScalar(None, target, total, self.summed),
                          Shape.SCALAR if self.summed else Shape.BATCH)
                outputs[name] = target
        return outputs

    def route(self, s, total, lv, contrib):
        for ld in lv.loads:
            if ld.symbol == s:
                if ld.kind is LoadKind.X:
                    return          # the gradient of x is not an output here
                if ld.kind is LoadKind.PARAM:
                    self.emit(ParameterAccumulate(lv, self.param_vector(ld.base), ld, total,
                                                  self.summed))
                    return
                break
        if s in self.scalars and all(b != s for _, b in lv.outer):
            # sum_p c * f_p = c * sum_p f_p for a factor c the same at every point: the
            # reduction reads f, and the product is per sample, not per point
            # (root-parented levels only: a per-sample factor is its broadcast's source)
            factor, rest = sp.S.One, total
            expr = self.defs.get(total)
            if isinstance(expr, sp.Mul) and lv.parent is None:
                varying = [u for u in expr.free_symbols
                           if self.shapes.get(u, Shape.SCALAR).per_point]
                factor, rest = expr.as_independent(*varying, as_Add=False)
                # the factor is read at the root: the per-sample values, not their [..., 1]
                # broadcasts; the rest stays at the level's points, broadcasts and all
                factor = factor.xreplace(self.broadcast_source)
                for _ in range(8):      # per-sample temporaries of this level, expanded
                    inner = {u: self.defs[u] for u in factor.free_symbols
                             if u in self.defs and self.shapes.get(u) is Shape.BATCH}
                    if not inner:
                        break
                    factor = factor.xreplace(inner).xreplace(self.broadcast_source)
                if rest.is_Number or not varying or any(
                        self.shapes.get(u, Shape.SCALAR).per_point or u in self.broadcast_source
                        for u in factor.free_symbols):
                    factor, rest = sp.S.One, total
            if not rest.is_Symbol:
                rest = self.assign("g", rest, lv)
            target = self.sym("rs")
            shape = self.shape_of(rest)
            self.emit(Reduce(lv, target, rest, "sum_all"),
                      Shape.SCALAR if shape is Shape.POINT else Shape.BATCH)
            contrib.setdefault(s, []).append(self.assign("a", factor * target, None)
                                             if factor != 1 else target)
            return
        super().route(s, total, lv, contrib)


def parameter_adjoints(program: Program, arrays, scalars, summed: bool = False,
                       first_symbol: int = PARAMETER_SYMBOLS):
    """The kernel of ``dE/dtheta`` for every parameter, in closed form.

    ``arrays``: the bases of vector and matrix parameters and of derived arrays
    (``'inverse(S)'``); ``scalars``: symbol -> name of scalar parameters and scalar
    derived values (``logdet(S)``). The sweep is :func:`reverse_mode`'s, with these
    as inputs: one forward pass, one backward pass, all parameters at once.

    ``summed=False``: the kernel ``parameter_gradient(x)`` whose outputs are per
    sample, ``[..., *theta.shape]``. ``summed=True``: ``parameter_gradient_sum(x, w)``,
    ``sum_b w_b dE(x_b)/dtheta`` with the batch contracted inside the kernel (a
    matrix's adjoint is one ``h^T (w ybar)`` product, not ``B`` outer products), and
    the per-sample energy as the output ``energy`` (a reserved name, never a
    parameter's). ``w`` may be a pair ``(a, c)``, meaning ``w = a + c * E(x)``: the
    weights of a loss quadratic in the energies (contrastive divergence's regulariser),
    formed once the energy is known.

    ``first_symbol``: new symbols are numbered from it, past every other kernel's
    (they share the program's loads and one module namespace; the second-order
    stages number after the gradient's, so the default leaves room for them).

    Returns the kernel; its ``output_names`` are the outputs' parameter names (or
    derived keys, which the runtime chains to the parameters through ``_derive``).

    Raises:
        ParameterAdjointUnsupported: a construct without a closed form here.
    """
    b = _ParameterBuilder(program, arrays, scalars, summed, first_symbol)
    for lv in program.levels:
        b.forward_level(lv)
    energy, root_partials = b.forward_root()
    scalar_out = b.backward_params(root_partials)
    # the energy's key is not an identifier, so no parameter name can collide with it
    outputs, names = ([energy], [ENERGY_KEY]) if summed else ([], [])
    for base in sorted(b.arrays):
        vec = b.param_vector(base)
        if any(Adjoint(vec) in st.defines() for st in b.out):
            outputs.append(Adjoint(vec))
            names.append(base)
    for name, target in scalar_out.items():
        outputs.append(target)
        names.append(name)
    kernel = Kernel("parameter_gradient_sum" if summed else "parameter_gradient",
                    ("x", "weights") if summed else ("x",), tuple(outputs), tuple(b.out), program,
                    energy if summed else sp.S.Zero, frozen_map(b.shapes), next_symbol=b.counter,
                    output_names=tuple(names))
    return kernel
