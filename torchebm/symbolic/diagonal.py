"""Stage 3d, the Hessian diagonal in closed form.

:func:`hessian_diagonal` builds ``diag(H)`` directly, in ``O(B P)`` for a
formula whose levels have ``P`` points, from the identity

    ``H = sum over nodes t of  adj(t) * J_t^T (d^2 f_t) J_t``

summed over the nonlinear nodes ``t = f_t(args)`` of the program (the
energy's root expression, each level's body, and ``logsumexp`` itself),
where ``adj(t)`` is the adjoint of the node from the gradient's reverse
sweep (:class:`ir.AdjointInfo`) and ``J_t`` the Jacobian of its arguments.
Its diagonal needs only products of rows of ``J_t`` at equal indices,
gathered at each point. The arguments it handles:

- loads ``x[idx(p)]``: one-hot rows; two loads meet where their indices
  coincide (proved never, or listed by the layout);
- per-sample results broadcast into a level: dense gradients, each from a
  reverse sweep of its own (``derivatives.seeded_gradient``);
- rows of matrix-vector products ``A h`` with ``h`` elementwise in x: a
  diagonal of ``A``;
- nested sums elementwise in x (a mixture's squared distances): their
  partials, accumulated from the nested points; a ``logsumexp`` over them
  is centred (see :meth:`_Diagonal.nested_centred`).

Formulas outside this form (products, deeper nesting, other uses of
matrix-vector products) give None, and the caller takes ``diag(H)`` from
Hessian-vector products instead.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from . import functions as F
from .derivatives import partial, seeded_gradient
from .ir import (GRADIENT, HDIAG, Accumulate, Addressing, Adjoint, AdjointInfo, Assign, Broadcast,
                 CoincidentAccumulate, DenseAccumulate, InitAdjoint, Kernel, LoadKind, LoadStmt,
                 MatrixDiagonal, PointShift, Reduce, Shape, Vector, VectorKind, frozen_map)
from .symbols import N
from .tangent import almost_everywhere


class Unstructured(Exception):
    """The formula is outside the form the direct Hessian diagonal handles."""


def _dense(result) -> Vector:
    return Vector(VectorKind.DENSE, result.name)


class _Diagonal:
    def __init__(self, kernel: Kernel, info: AdjointInfo):
        self.k = kernel
        self.info = info
        self.p = kernel.program
        self.counter = kernel.next_symbol
        self.shapes = dict(kernel.shapes)
        self.dense_roots: dict = {}
        self.inserted: dict = {}     # level -> second partials, placed with its forward code
        self.tail: list = []         # terms, gradient sweeps, accumulations
        self.swept: set = set()
        self.results = {r.result: r for lv in self.p.levels for r in lv.reductions}
        self.coincident = 0

    # helpers
    def sym(self, stem):
        self.counter += 1
        return sp.Symbol(f"_{stem}_{self.counter}", real=True)

    def shape_of(self, expr):
        return Shape.join(*[self.shapes.get(s, Shape.SCALAR) for s in expr.free_symbols])

    def is_x(self, s):
        return s in self.info.xdep

    def point_value(self, expr, lv, stem="h2"):
        """``expr`` as a symbol computed with ``lv``'s forward code (CSE'd with it)."""
        if expr.is_Number or expr.is_Symbol:
            return expr
        t = self.sym(stem)
        self.shapes[t] = self.shape_of(expr)
        self.inserted.setdefault(lv, []).append(Assign(lv, t, expr))
        return t

    def tail_assign(self, expr, lv, stem="h"):
        if expr.is_Number or expr.is_Symbol:
            return expr
        t = self.sym(stem)
        self.shapes[t] = self.shape_of(expr)
        self.tail.append(Assign(lv, t, expr))
        return t

    def gradient_of(self, result):
        """Statements for the dense gradient of the per-sample value ``result``."""
        name = _dense(result)
        if result in self.swept:
            return name
        self.swept.add(result)
        at = self.k.replace(shapes=frozen_map(self.shapes), next_symbol=self.counter)
        sweep, shapes, self.counter = seeded_gradient(at, self.info, result, name)
        self.shapes.update(shapes)
        for st in sweep:
            if isinstance(st, Accumulate | InitAdjoint) and st.vector != name:
                raise Unstructured("a per-sample value depends on a matrix-vector product")
        self.tail.extend(sweep)
        self.dense_roots[name] = result
        return name

    def kind(self, s, lv):
        if lv is None:
            for ld in self.p.root_loads:
                if ld.symbol == s and ld.kind is LoadKind.X:
                    return "X", ld
            if s in self.results and self.results[s].value in self.info.xdep:
                return "D", s
            raise Unstructured(f"root symbol {s}")
        for ld in lv.loads:
            if ld.symbol == s:
                if ld.kind is LoadKind.X:
                    return "X", ld
                if ld.kind is LoadKind.VECTOR:
                    return "V", ld
        for root_sym, bsym in lv.outer:
            if bsym == s:
                return "D", root_sym
        for child in self.p.levels:
            if child.parent is lv:
                for red in child.reductions:
                    if red.result == s:
                        return "N", (child, red)
        raise Unstructured(f"level symbol {s}")

    # the terms
    def run(self):
        for lv in self.p.levels:
            for r in lv.reductions:
                if r.value not in self.info.xdep:
                    continue
                if r.op == "prod":
                    raise Unstructured("product reduction")
                if lv.parent is not None and (r.op != "sum" or lv.parent.parent is not None):
                    raise Unstructured("nested reduction other than one sum inside a level")
        self.root_node()
        for lv in self.p.levels:
            owners = list(lv.reductions) + ([lv.matvec] if lv.matvec is not None else [])
            for owner in owners:
                w = self.info.point_adjoint.get(owner)
                if w is None or owner.value not in self.info.xdep:
                    continue
                self.level_node(lv, owner, w)

    def second_partials(self, body, owner=None, lv=None):
        """``{(a, c): d2 body / da dc}`` over x-dependent symbols, a <= c, nonzero only.

        Each first partial is differentiated only by the symbols it still
        contains, so a sum of many terms costs one diff per coupled pair.
        """
        moving = sorted((s for s in body.free_symbols if self.is_x(s)), key=str)
        rank = {s: k for k, s in enumerate(moving)}
        known = self.info.first_partials
        firsts = {a: known[(owner, a)] if (owner, a) in known else partial(body, a)
                  for a in moving}
        out = {}
        for a in moving:
            for c in sorted(firsts[a].free_symbols & rank.keys(), key=str):
                if rank[c] >= rank[a] and not self.never_meet(a, c, lv):
                    f = almost_everywhere(partial(firsts[a], c))
                    if f != 0:
                        out[(a, c)] = f
        return firsts, out

    def never_meet(self, a, c, lv):
        """True for two loads of x that never read the same index: their mixed
        second partial never reaches the diagonal (and is not computed)."""
        if a == c:
            return False
        (ka, la), (kc, lc) = self.kind(a, lv), self.kind(c, lv)
        return ka == kc == "X" and self.never_equal(la, lc, lv)

    def root_node(self):
        _, seconds = self.second_partials(self.p.energy)
        for (a, c), f in seconds.items():
            self.pair(None, None, a, c, (1 if a == c else 2) * f)

    def level_node(self, lv, owner, w):
        firsts, seconds = self.second_partials(owner.body, owner, lv)
        lse = getattr(owner, "op", None) == "lse"
        nested = self.centred_mixture(lv, firsts) if lse else None
        if nested is not None:
            for (a, c), f in seconds.items():
                self.pair(lv, w, a, c, (1 if a == c else 2) * self.point_value(f, lv))
            (a, fa), = firsts.items()
            self.nested_centred(lv, nested, owner, w, fa)
            return
        if lse:
            # log sum exp's own curvature: softmax-weighted products of the first partials
            moving = sorted(firsts, key=str)
            for k, a in enumerate(moving):
                for c in moving[k:]:
                    seconds[(a, c)] = seconds.get((a, c), 0) + firsts[a] * firsts[c]
        for (a, c), f in seconds.items():
            if f != 0:
                self.pair(lv, w, a, c, (1 if a == c else 2) * self.point_value(f, lv))
        if lse:
            # ... minus the square of the result's gradient, at the root
            abar = self.info.result_adjoint.get(owner, sp.S.One)
            g = self.gradient_of(owner.result)
            self.tail.append(DenseAccumulate(None, HDIAG, -abar, g, g))
        if getattr(owner, "op", None) == "norm":
            self.norm_curvature(lv, owner, firsts)

    def norm_curvature(self, lv, owner, firsts):
        """The norm's own curvature, ``(I - u u^T) / t`` with ``t = |v|``, ``u = v / t``:
        ``(abar / t) sum_p (dv_p/dx_i)^2`` at the points, minus ``(abar / t) (dt/dx_i)^2``
        at the root (``abar`` the adjoint of t; 0 where t = 0, the kink convention).
        When each ``x_i`` is read at one point (``norm(x)``, ``norm(sin(x))``) the two
        are one term, ``(abar / t) ((dv_i/dx_i)^2 - (dt/dx_i)^2)``: added separately, two
        values of order ``1/t`` would cancel in the diagonal and lose it entirely for
        tiny ``t`` (Ackley at n = 1 and |x| < 1e-50 gave 0)."""
        abar = self.info.result_adjoint.get(owner, sp.S.One)
        k = self.tail_assign(F.where_else_zero(sp.Ne(owner.result, 0), F.Ratio, abar,
                                               owner.result), None, stem="knorm")
        kw = self.to_level(k, lv)
        moving = sorted(firsts, key=str)
        if len(moving) == 1:
            kind, ld = self.kind(moving[0], lv)
            if kind == "X" and ld.addressing is Addressing.WHOLE:
                # each x_i is read at exactly one point: both terms are O(1/t) and cancel
                # exactly at n = 1 (u_i = +-1), so they are subtracted before they are
                # scaled by abar / t, never added separately into the diagonal
                g = self.gradient_of(owner.result)
                gl = self.sym("gload")
                self.shapes[gl] = Shape.BOTH
                self.tail.append(LoadStmt(lv, self.dense_load(gl, g, ld)))
                f = self.point_value(firsts[moving[0]] ** 2, lv)
                self.accumulate(lv, ld, kw * (f - gl ** 2))
                return
        for i, a in enumerate(moving):
            for c in moving[i:]:
                f = firsts[a] * firsts[c]
                if f != 0:
                    self.pair(lv, kw, a, c, (1 if a == c else 2) * self.point_value(f, lv))
        g = self.gradient_of(owner.result)
        self.tail.append(DenseAccumulate(None, HDIAG, -k, g, g))

    def pair(self, lv, w, a, c, f):
        (ka, la), (kc, lc) = self.kind(a, lv), self.kind(c, lv)
        if ka > kc:
            (ka, la), (kc, lc) = (kc, lc), (ka, la)
        weight = f if w is None else w * f
        if (ka, kc) == ("X", "X"):
            if la is lc:
                self.accumulate(lv, la, weight)
            elif not self.never_equal(la, lc, lv):
                src = self.tail_assign(weight, lv)
                self.coincident += 1
                where = "root" if lv is None else lv.id
                self.tail.append(CoincidentAccumulate(lv, HDIAG, la, lc, src,
                                                      key=f"co{where}_{self.coincident}"))
        elif (ka, kc) == ("D", "X"):
            g = self.gradient_of(la)
            t = self.sym("gload")
            self.shapes[t] = Shape.BATCH if lv is None else Shape.BOTH
            self.tail.append(LoadStmt(lv, self.dense_load(t, g, lc)))
            self.accumulate(lv, lc, weight * t)
        elif (ka, kc) == ("D", "D"):
            factor = self.tail_assign(weight, None) if lv is None else \
                self.sum_points(weight, lv)
            self.tail.append(DenseAccumulate(None, HDIAG, factor, self.gradient_of(la),
                                             self.gradient_of(lc)))
        elif (ka, kc) == ("V", "X"):
            self.accumulate(lv, lc, weight * self.matvec_entry(lv, la, lc))
        elif (ka, kc) == ("N", "N") and a == c:
            self.nested_square(lv, la, weight)
        else:
            raise Unstructured(f"{ka} x {kc}")

    def nested_partial(self, nested):
        """``(load, const, per_point, offset)`` of a nested sum elementwise in x.

        ``u(p) = sum_q v(p, q)`` with ``v`` reading x only as ``x[q + offset]``
        (distinct indices within each parent point p): ``d u(p) / d x_i`` is
        ``const * per_point`` at the one point q that reads ``x_i``.
        """
        child, red = nested
        if len(child.clauses) != 1:
            raise Unstructured("nested sum over several indices")
        (var, _, _), = child.clauses
        moving = [s for s in red.body.free_symbols if self.is_x(s)]
        loads = {ld.symbol: ld for ld in child.loads}
        if len(moving) != 1 or moving[0] not in loads or loads[moving[0]].kind is not LoadKind.X:
            raise Unstructured("nested sum that is not elementwise in x")
        ld = loads[moving[0]]
        off = sp.expand(ld.indices[0] - var)
        if var in off.free_symbols or off.has(sp.Mod, sp.floor) or \
                off.free_symbols & set(child.all_vars):
            raise Unstructured("nested sum whose x index is not its own index")
        if red.body == ld.symbol:
            return ld, sp.S.One, sp.S.One, off
        const, per_point = self.info.partials.get((red, ld.symbol), (sp.S.Zero, sp.S.Zero))
        return ld, const, per_point, off

    def to_level(self, value, child):
        """``value`` of a parent level broadcast to the points of ``child``."""
        if value.is_Number:
            return value
        t = self.sym("bw")
        self.shapes[t] = Shape.BOTH if self.shape_of(value).per_sample else Shape.POINT
        self.tail.append(Broadcast(child, t, value))
        return t

    def nested_square(self, lv, nested, weight):
        """``weight * (d u / d x_i)^2`` for a nested sum ``u`` (see :meth:`nested_partial`),
        accumulated from the nested level's points."""
        ld, const, per_point, _ = self.nested_partial(nested)
        bw = self.to_level(self.tail_assign(weight * const**2, lv), nested[0])
        self.accumulate(nested[0], ld, bw * per_point**2)

    def centred_mixture(self, lv, firsts):
        """The nested sum of ``logsumexp_k f(u_k)`` whose curvature can be centred, or None.

        That needs ``f`` to depend on x only through one nested sum ``u_k``
        that reads every ``x_i`` exactly once per k (a mixture's squared
        distance to its k-th mean).
        """
        if len(firsts) != 1:
            return None
        kind, nested = self.kind(next(iter(firsts)), lv)
        if kind != "N" or not nested[0].rectangular:
            return None
        try:
            _, _, _, off = self.nested_partial(nested)
        except Unstructured:
            return None
        (_, lo, hi), = nested[0].clauses
        covers = sp.simplify(lo + off) == 0 and sp.simplify(hi + off - N) == 0
        return nested if covers else None

    def nested_centred(self, lv, nested, owner, w, fa):
        """logsumexp's curvature ``sum_k w_k (J_ki - g_i)^2``, centred.

        With softmax weights ``s_k`` (``w = adjoint * s``) this equals
        ``adjoint * (sum_k s_k J_ki^2 - g_i^2)``, ``g = sum_k s_k J_k`` the
        result's gradient, but subtracts before squaring: far from every mean,
        where the ``J_ki`` are large and nearly equal, the uncentred form loses
        all of float32's digits. The weights are renormalised (divided by
        ``S = sum_k s_k``, 1 up to rounding), so that rounding in ``s`` does not
        come back as ``g^2 (S - 1)``.
        """
        child = nested[0]
        ld, const, per_point, _ = self.nested_partial(nested)
        g = self.gradient_of(owner.result)
        res = self.sym("res")
        self.shapes[res] = self.shapes.get(owner.result, Shape.BATCH)
        self.tail.append(Broadcast(lv, res, owner.result))
        total = self.sum_points(sp.exp(owner.value - res), lv)
        inv = self.to_level(self.tail_assign(1 / total, None), child)
        scale = self.to_level(self.tail_assign(fa * const, lv), child)
        weight = self.to_level(self.tail_assign(w, lv), child)
        gl = self.sym("gload")
        self.shapes[gl] = Shape.BOTH
        self.tail.append(LoadStmt(child, self.dense_load(gl, g, ld)))
        self.accumulate(child, ld, weight * inv * (scale * per_point - gl * inv) ** 2)

    @staticmethod
    def dense_load(symbol, vector, like):
        """A load of the dense gradient ``vector`` at the indices of the x load ``like``."""
        return dataclasses.replace(like, symbol=symbol, base=vector.name, kind=LoadKind.DENSE,
                                   like=like)

    def accumulate(self, lv, ld, expr):
        self.tail.append(Accumulate(lv, HDIAG, ld, self.tail_assign(expr, lv)))

    def sum_points(self, expr, lv):
        src = self.tail_assign(expr, lv)
        t = self.sym("hs")
        # a per-point source sums to a number; anything else is first broadcast to
        # [..., P] by the emitter, so its sum is per sample
        self.shapes[t] = Shape.SCALAR if self.shape_of(src) is Shape.POINT else Shape.BATCH
        self.tail.append(Reduce(lv, t, src, "sum_all"))
        return t

    def never_equal(self, la, lc, lv):
        """True if two loads of x provably read different indices at every point.

        ``x[i]`` and ``x[i + 1]`` differ by a constant; ``x[i]`` and ``x[j]``
        with ``j in range(i + 1, ...)`` differ by at least 1 (the pair sums).
        """
        if any(e.has(sp.Mod, sp.floor) for e in (la.indices[0], lc.indices[0])):
            return False
        d = sp.expand(la.indices[0] - lc.indices[0])
        if d.is_Number:
            return d != 0
        if lv is None:
            return False
        for var, lo, hi in lv.clauses:
            # d = c - var with var >= lo, or d = var - c: bound it by the clause's range
            for sign in (1, -1):
                rest = sp.expand(d - sign * var)
                if var in rest.free_symbols:
                    continue
                low = sp.expand(rest + sign * lo)            # d at var = lo
                high = sp.expand(rest + sign * (hi - 1))     # d at var = hi - 1
                if sign == 1 and low.is_positive:            # d >= rest + lo > 0
                    return True
                if sign == -1 and low.is_negative:           # d <= rest - lo < 0
                    return True
                if sign == 1 and high.is_negative:
                    return True
                if sign == -1 and high.is_positive:
                    return True
        return False

    def matvec_entry(self, lv, vld, xld):
        """``d y[r(p)] / d x[i(p)]`` at each point p of a one-range level.

        ``y = A h`` with ``h(j)`` reading x only as ``x[j + c']`` (a slice), so
        the derivative is ``A[r, i - c' + c] * dh/dx at j = i - c'``: a
        diagonal of A and a shifted slice of ``h``'s partial.
        """
        mv = self.p.vectors[vld.base]
        hl = self.p.level(mv.level)
        if lv.parent is not None or len(lv.clauses) != 1 or len(hl.clauses) != 1:
            raise Unstructured("matrix-vector product outside one-range levels")
        (var, lo, hi), = lv.clauses
        (hvar, hlo, hhi), = hl.clauses
        hx = [s for s in mv.body.free_symbols if self.is_x(s)]
        loads = {ld.symbol: ld for ld in hl.loads}
        if len(hx) != 1 or hx[0] not in loads or loads[hx[0]].kind is not LoadKind.X:
            raise Unstructured("matrix-vector product of a non-elementwise vector")
        hld = loads[hx[0]]
        off_a, off_r = sp.expand(xld.indices[0] - var), sp.expand(vld.indices[0] - var)
        c_h = sp.expand(hld.indices[0] - hvar)
        for off in (off_a, off_r, c_h):
            if off.free_symbols & {var, hvar} or off.has(sp.Mod, sp.floor):
                raise Unstructured("strided matrix-vector access")
        # j = i - c_h must stay inside h's range at every point: lo + off_a - c_h >= hlo ...
        first, last = sp.expand(lo + off_a - c_h - hlo), sp.expand(hhi - (hi + off_a - c_h))
        if not (first.is_nonnegative and last.is_nonnegative):
            raise Unstructured("matrix-vector range not provably covering")
        const, per_point = self.info.partials.get((mv, hld.symbol), (sp.S.Zero, sp.S.Zero))
        if mv.body == hld.symbol:
            const, per_point = sp.S.One, sp.S.One
        if per_point.free_symbols & {s for s, shape in self.shapes.items() if shape.per_point}:
            shifted = self.sym("hx")
            self.shapes[shifted] = self.shape_of(per_point)
            self.tail.append(PointShift(lv, shifted, per_point, hl, first))
        else:
            shifted = per_point
        entry = self.sym("aii")
        self.shapes[entry] = Shape.POINT
        row0 = lo + off_r
        col0 = lo + off_a - c_h + mv.offset
        if not mv.row_major:
            row0, col0 = col0, row0
        self.tail.append(MatrixDiagonal(lv, entry, mv.matrix, row0, col0))
        return const * entry * shifted


def hessian_diagonal(kernel: Kernel, info: AdjointInfo) -> Kernel | None:
    """``kernel``'s statements with the direct Hessian diagonal (``Adjoint(HDIAG)``), or None.

    ``kernel`` is the energy-and-gradient kernel of :func:`derivatives.reverse_mode`
    (before CSE) and ``info`` what its reverse sweep learnt. Second partials join
    the forward code of their level (so CSE shares them with the energy's terms);
    the terms that need the gradient's adjoints follow the reverse sweep. None: the
    formula is outside the handled form (see the module docstring). New symbols are
    numbered from ``kernel.next_symbol``.
    """
    d = _Diagonal(kernel, info)
    try:
        d.run()
    except Unstructured:
        return None
    body = list(kernel.body)
    first_backward = next(k for k, st in enumerate(body) if isinstance(st, InitAdjoint))
    last = {st.level: k for k, st in enumerate(body[:first_backward])}  # last forward stmt
    out = []
    for k, st in enumerate(body[:first_backward]):
        out.append(st)
        if last[st.level] == k and st.level in d.inserted:
            out.extend(d.inserted.pop(st.level))
    for stmts in d.inserted.values():
        out.extend(stmts)
    out.extend(body[first_backward:])
    out.append(InitAdjoint(None, HDIAG))
    out.extend(d.tail)
    return kernel.replace(name="gradient_and_hessian_diagonal",
                          outputs=(Adjoint(GRADIENT), Adjoint(HDIAG)), body=tuple(out),
                          shapes=frozen_map(d.shapes),
                          dense_roots=frozen_map({**kernel.dense_roots, **d.dense_roots}),
                          next_symbol=d.counter)
