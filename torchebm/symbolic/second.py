"""Stage 3c, second derivatives: Hessian-vector products and the Hessian diagonal.

Two transformations of the statements that :mod:`derivatives` builds:

* :func:`tangent` is forward mode over the energy-and-gradient statements
  (forward-over-reverse): every statement gets a tangent statement, the
  derivative of its value along ``x + t v`` at ``t = 0``. The tangent of the
  gradient is ``H v``. Assignments are differentiated with ``sympy.diff`` on
  their symbols; loads, broadcasts, sums and matrix-vector products are
  linear and are repeated on the tangents; ``prod``, ``logsumexp`` and the
  products of the other terms have their own closed forms. One product
  ``H v`` costs a few gradients, whatever ``n``; the full Hessian is ``H I``,
  the same code run on ``n`` tangents at once.
* :func:`hessian_diagonal` builds ``diag(H)`` directly, in ``O(B P)`` for a
  formula whose levels have ``P`` points, from the identity

      ``H = sum over nodes t of  adj(t) * J_t^T (d^2 f_t) J_t``

  summed over the nonlinear nodes ``t = f_t(args)`` of the program (the
  energy's root expression and each level's body), where ``adj(t)`` is the
  adjoint of the node from the gradient's reverse sweep and ``J_t`` the
  Jacobian of its arguments. Arguments are loads ``x[idx(p)]`` (one-hot
  rows), per-sample reduction results broadcast into the level (dense
  gradients, each from a reverse sweep of its own) and rows of matrix-vector
  products. Its diagonal needs only the products of these rows at equal
  indices, gathered at each point. Formulas outside this form (nested
  reductions, products, some uses of matrix-vector products) return None and
  the caller takes ``diag(H)`` from Hessian-vector products instead.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from .derivatives import (Accumulate, Assign, Broadcast, IndexValue, InitAdjoint, LoadStmt,
                          MatVecStmt, OthersProduct, Reduce, Statements, Unary, tangent_name)
from .lower import Load


@dataclasses.dataclass(eq=False)
class OthersProductTangent(Unary):
    """Tangent of the product of the other terms of each segment, exact with zeros."""
    tangent: sp.Symbol = None

    def uses(self):
        return (self.source, self.tangent)


TANGENT_X = "x.dot"          # the adjoint vector whose tangent is H v
HDIAG = "hdiag"              # the vector that collects diag(H)


def almost_everywhere(expr):
    """``expr`` with ``DiracDelta`` terms (from differentiating ``sign``, ``abs``'s
    derivative, steps) set to 0: the derivative everywhere but on a null set,
    as torch's autograd computes it."""
    if expr.has(sp.DiracDelta):
        expr = expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    return expr


# -- forward over reverse -----------------------------------------------------------------
class _Tangent:
    def __init__(self, stmts: Statements):
        self.s = stmts
        self.b = stmts.builder
        self.dot: dict = {}
        self.out: list = []
        self.vectors: dict = {}      # primal vector name -> tangent MatVec

    def new(self, stem, shape):
        t = self.b.sym(stem)
        self.s.shapes[t] = shape
        self.s.tangent.add(t)
        return t

    def shape(self, sym):
        return self.s.shapes.get(sym, "scalar")

    def run(self):
        """The primal statements, each followed by its tangent statements."""
        interleaved = []
        for st in self.s.body:
            interleaved.append(st)
            self.statement(st)
            interleaved.extend(self.out)
            self.out.clear()
        return interleaved

    def statement(self, st):
        lv = st.level
        if isinstance(st, LoadStmt):
            ld = st.load
            if ld.kind == "x" or (ld.kind == "vector" and ld.base in self.vectors):
                t = self.new("xdot" if ld.kind == "x" else "ydot",
                             "batch" if lv is None else "both")
                self.out.append(LoadStmt(lv, Load(t, ld.base, ld.indices, ld.kind, lv,
                                                  tangent=True, like=ld)))
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
            d = almost_everywhere(sp.Add(*[sp.diff(expr, s) * self.dot[s]
                                           for s in sorted(moving, key=str)]))
            if d == 0:
                return
            if d.is_Symbol:
                self.dot[st.target] = d
                return
            t = self.new("dot", self.shape(st.target) if self.shape(st.target) != "scalar"
                         else "batch")
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
            if st.vector == "x" or st.vector in self.vectors:
                self.out.append(InitAdjoint(lv, tangent_name(st.vector)))
        elif isinstance(st, Accumulate):
            if st.source in self.dot:
                self.out.append(Accumulate(lv, tangent_name(st.vector), st.load,
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
            others = self.b.sym("others")
            self.s.shapes[others] = self.shape(src)
            self.out.append(OthersProduct(lv, others, src))
            w = self.new("w", "both")
            self.out.append(Assign(lv, w, others * dsrc))
            t = self.new("dot", shape)
            self.out.append(Reduce(lv, t, w, "sum"))
        else:   # lse: d log sum exp(v) = sum softmax(v) * dv
            res = self.b.sym("res")
            self.s.shapes[res] = "both"
            self.out.append(Broadcast(lv, res, st.target))
            w = self.new("w", "both")
            self.out.append(Assign(lv, w, sp.exp(src - res) * dsrc))
            t = self.new("dot", shape)
            self.out.append(Reduce(lv, t, w, "sum"))
        self.dot[st.target] = t

    def matvec(self, st):
        mv = st.matvec
        if not st.adjoint:
            if mv.value not in self.dot:
                return
            tmv = dataclasses.replace(mv, value=self.dot[mv.value],
                                      vector=tangent_name(mv.vector))
            self.vectors[mv.vector] = tmv
            self.s.tangent_vectors[tmv.vector] = tmv
            self.s.shapes[tmv.symbol] = "both"
            self.s.tangent.add(tmv.symbol)
            self.out.append(MatVecStmt(st.level, tmv))
            self.dot[mv.symbol] = tmv.symbol
        elif mv.vector in self.vectors:
            tmv = self.vectors[mv.vector]
            t = self.new("dot", "both")
            self.out.append(MatVecStmt(st.level, tmv, adjoint=True, target=t))
            self.dot[st.target] = t


def tangent(stmts: Statements) -> Statements:
    """``stmts`` (energy and gradient, before CSE) with tangent statements along ``v``.

    Each tangent statement follows its primal one, so CSE shares work between
    them. The result also defines ``adj:x.dot`` (:data:`TANGENT_X`), the
    Hessian-vector product ``H v``. It must run before CSE: the tangent of a
    shared temporary would be computed outside the ``where`` that guards it
    (``sqrt(x)`` in ``where(x > 0, sqrt(x), -x)``), and its NaN would leak.
    """
    return dataclasses.replace(stmts, body=_Tangent(stmts).run())
