"""Stage 3c, tangent: forward mode over the gradient (forward-over-reverse).

:func:`jvp` gives every statement of the energy-and-gradient kernel a tangent
statement, the derivative of its value along ``x + t v`` at ``t = 0``. The
tangent of the gradient is the Hessian-vector product ``H v``. Assignments are
differentiated with ``sympy.diff`` on their symbols; loads, broadcasts, sums
and matrix-vector products are linear and are repeated on the tangents;
``prod``, ``logsumexp``, ``norm`` and the products of the other terms have
their own closed forms. One product ``H v`` costs a few gradients, whatever
``n``; the full Hessian is ``H I``, the same code run on ``n`` tangents at once.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from . import functions as F
from .derivatives import norm_weight, partial
from .ir import (GRADIENT, HVP, Accumulate, Adjoint, Assign, Broadcast, IndexValue, InitAdjoint,
                 Kernel, LoadKind, LoadStmt, MatVecStmt, OthersProduct,
                 OthersProductTangent, Reduce, Shape, frozen_map,
                 tangent_vector_name)


def almost_everywhere(expr):
    """``expr`` with ``DiracDelta`` terms (from differentiating ``sign``, ``abs``'s
    derivative, steps) set to 0: the derivative everywhere but on a null set,
    as torch's autograd computes it."""
    if expr.has(sp.DiracDelta):
        expr = expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    if expr.has(sp.Derivative):
        # sign(u) of a u SymPy cannot prove real (b/n - x: n might be 0) is left as an
        # unevaluated Derivative; it is 0 wherever it exists, like DiracDelta above
        expr = expr.replace(lambda e: isinstance(e, sp.Derivative)
                            and isinstance(e.expr, (sp.sign, F.Sign)), lambda e: sp.S.Zero)
    return expr


def _collect_proportional(terms, limit=4):
    """``sum(d * t for d, t in terms)``, with partials equal up to a constant factored out.

    ``f(x[j] - x[i])`` has ``d/dx[i] = -d/dx[j]``: its tangent is computed as
    ``f' * (t_j - t_i)``, one product instead of two. Only for a few terms
    (``limit``): the comparison is quadratic in their number.
    """
    terms = [(d, t) for d, t in terms if d != 0]
    if len(terms) > limit:
        return sp.Add(*[d * t for d, t in terms])
    groups = []                        # [base partial, [(factor, tangent), ...]]
    for d, t in terms:
        for group in groups:
            ratio = sp.signsimp(d / group[0])
            if ratio.is_Number and ratio.is_finite and ratio != 0:
                group[1].append((ratio, t))
                break
        else:
            groups.append([d, [(sp.S.One, t)]])
    return sp.Add(*[base * sp.Add(*[c * t for c, t in members]) for base, members in groups])


class _Tangent:
    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.counter = kernel.next_symbol
        self.shapes = dict(kernel.shapes)
        self.tangent: set = set(kernel.tangent)
        self.tangent_vectors: dict = {}
        self.dot: dict = {}
        self.out: list = []
        self.vectors: dict = {}      # primal vector name -> tangent MatVec

    def sym(self, stem):
        self.counter += 1
        return sp.Symbol(f"_{stem}_{self.counter}", real=True)

    def new(self, stem, shape):
        t = self.sym(stem)
        self.shapes[t] = shape
        self.tangent.add(t)
        return t

    def shape(self, sym):
        return self.shapes.get(sym, Shape.SCALAR)

    def run(self):
        """The primal statements, each followed by its tangent statements."""
        interleaved = []
        for st in self.k.body:
            interleaved.append(st)
            self.statement(st)
            interleaved.extend(self.out)
            self.out.clear()
        return interleaved

    def statement(self, st):
        lv = st.level
        if isinstance(st, LoadStmt):
            ld = st.load
            if ld.kind is LoadKind.X or (ld.kind is LoadKind.VECTOR and ld.base in self.vectors):
                t = self.new("xdot" if ld.kind is LoadKind.X else "ydot",
                             Shape.BATCH if lv is None else Shape.BOTH)
                self.out.append(LoadStmt(lv, dataclasses.replace(ld, symbol=t, tangent=True,
                                                                 like=ld)))
                self.dot[ld.symbol] = t
        elif isinstance(st, IndexValue):
            return
        elif isinstance(st, Assign):
            expr = st.expr
            moving = [s for s in expr.free_symbols if s in self.dot]
            if not moving:
                return
            if expr.is_Symbol:
                self.dot[st.target] = self.dot[expr]
                return
            d = almost_everywhere(_collect_proportional(
                [(partial(expr, s), self.dot[s]) for s in sorted(moving, key=str)]))
            if d == 0:
                return
            if d.is_Symbol:
                self.dot[st.target] = d
                return
            shape = self.shape(st.target)
            t = self.new("dot", shape if shape is not Shape.SCALAR else Shape.BATCH)
            self.out.append(Assign(lv, t, d))
            self.dot[st.target] = t
        elif isinstance(st, Broadcast):
            if st.source in self.dot:
                t = self.new("dot", self.shape(st.target))
                self.out.append(Broadcast(lv, t, self.dot[st.source]))
                self.dot[st.target] = t
        elif isinstance(st, Reduce):
            self.reduce(st)
        elif isinstance(st, OthersProduct):
            if st.source in self.dot:
                t = self.new("dot", self.shape(st.target))
                self.out.append(OthersProductTangent(lv, t, st.source,
                                                     tangent=self.dot[st.source]))
                self.dot[st.target] = t
        elif isinstance(st, MatVecStmt):
            self.matvec(st)
        elif isinstance(st, InitAdjoint):
            if st.vector == GRADIENT or st.vector.name in self.vectors:
                self.out.append(InitAdjoint(lv, st.vector.tangent()))
        elif isinstance(st, Accumulate):
            if st.source in self.dot:
                self.out.append(Accumulate(lv, st.vector.tangent(), st.load,
                                           self.dot[st.source], like="v"))
        else:
            raise RuntimeError(f"torchebm: no tangent rule for {st!r}; please report a bug")

    def reduce(self, st):
        if st.source not in self.dot:
            return
        lv, src, dsrc = st.level, st.source, self.dot[st.source]
        shape = self.shape(st.target)
        if st.op in ("sum", "sum_all"):
            t = self.new("dot", shape)
            self.out.append(Reduce(lv, t, dsrc, st.op))
        elif st.op == "prod":
            # d prod = sum_i (product of the others)_i * dv_i: exact when a factor is zero
            others = self.sym("others")
            self.shapes[others] = Shape.BOTH     # the emitter broadcasts the source to [..., P]
            self.out.append(OthersProduct(lv, others, src))
            w = self.new("w", Shape.BOTH)
            self.out.append(Assign(lv, w, others * dsrc))
            t = self.new("dot", shape)
            self.out.append(Reduce(lv, t, w, "sum"))
        else:
            # norm: d |v| = sum (v / |v|) * dv; lse: d log sum exp(v) = sum softmax(v) * dv
            res = self.sym("res")
            self.shapes[res] = self.shape(st.target)     # [..., 1]: a per-sample value
            self.out.append(Broadcast(lv, res, st.target))
            # the body may be per sample too (logsumexp(sum(x**2) for k in range(3))):
            # the shape class says so, and the emitter then broadcasts it to the points
            w = self.new("w", Shape.join(self.shape(src), self.shape(res), self.shape(dsrc)))
            weight = norm_weight(src, res) if st.op == "norm" else sp.exp(src - res)
            self.out.append(Assign(lv, w, weight * dsrc))
            t = self.new("dot", shape)
            self.out.append(Reduce(lv, t, w, "sum"))
        self.dot[st.target] = t

    def matvec(self, st):
        mv = st.matvec
        if not st.adjoint:
            if mv.value not in self.dot:
                return
            tmv = dataclasses.replace(mv, value=self.dot[mv.value],
                                      vector=tangent_vector_name(mv.vector))
            self.vectors[mv.vector] = tmv
            self.tangent_vectors[tmv.vector] = tmv
            self.shapes[tmv.symbol] = Shape.BOTH
            self.tangent.add(tmv.symbol)
            self.out.append(MatVecStmt(st.level, tmv))
            self.dot[mv.symbol] = tmv.symbol
        elif mv.vector in self.vectors:
            tmv = self.vectors[mv.vector]
            t = self.new("dot", Shape.BOTH)
            self.out.append(MatVecStmt(st.level, tmv, adjoint=True, target=t))
            self.dot[st.target] = t


def jvp(kernel: Kernel) -> Kernel:
    """``kernel`` (energy and gradient, before CSE) with tangent statements along ``v``.

    Each tangent statement follows its primal one, so CSE shares work between
    them. The result's output is ``Adjoint(HVP)``, the Hessian-vector product
    ``H v``; its inputs are ``x`` and ``v``. Run it before CSE: the tangent of a
    shared temporary would be computed outside the ``where`` that guards it
    (``sqrt(x)`` in ``where(x > 0, sqrt(x), -x)``), and its NaN would leak.
    """
    t = _Tangent(kernel)
    body = t.run()
    return kernel.replace(name="hessian_vector_product", inputs=("x", "v"),
                          outputs=(Adjoint(HVP),), body=tuple(body),
                          shapes=frozen_map(t.shapes), tangent=frozenset(t.tangent),
                          tangent_vectors=frozen_map({**kernel.tangent_vectors,
                                                      **t.tangent_vectors}),
                          next_symbol=t.counter)


__all__ = ["jvp", "almost_everywhere"]
