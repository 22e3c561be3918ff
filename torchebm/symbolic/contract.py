"""Stage 4b, the batch-total kernel: matrix-vector products contracted over the batch.

A training loss that is linear in the energies (contrastive divergence without its
regulariser: ``mean E(data) - mean E(negatives)``) needs only the weighted total
``T = sum_b w_b E(x_b)`` and its parameter gradient, never the per-sample energies.
For a product ``y = h @ A`` of a parameter matrix ``A`` that costs a ``[B, n] x [n, n]``
matrix product in the forward sweep, and the batch-summed adjoint of ``A`` is a second
one, ``G = h^T (w ybar)`` (``ybar = dE/dy``). When the energy is affine in ``y``,

    ``E = E|_{y=0} + <y, ybar>``,  so  ``T = sum_b w_b E|_{y=0}(x_b) + <A, G>``,

and every other reader of ``y`` in the parameter sweep is a weighted sum
``sum_b w_b y_b = (w @ h) @ A`` (a vector parameter's adjoint, as the mean of a
quadratic form has). The forward product is then not needed at all: one matrix
product per batch instead of two (three through autograd, whose backward also
forms ``ybar @ A^T``). The Gaussian energy ``0.5 (x - m)^T P (x - m)`` is the case
that motivates it: its total is ``<P, G> / 2`` with ``G`` the weighted scatter matrix
of ``x - m``, which is also ``P``'s gradient.

:func:`total_kernel` rewrites an optimised ``parameter_gradient_sum`` kernel into
``parameter_gradient_total(x, weights)`` (``weights`` a tensor ``[...]``, no
``(a, c)`` pair: the weights of a loss linear in the energies do not depend on them)
whose ``'(energy)'`` output is ``T``, 0-d. It returns None when no product
qualifies (the module then has no such method and the runtime uses the batch-summed
kernel). Affinity is checked statement by statement: every value computed from
``y`` is affine in it jointly, read structurally (sums and products of degree at most 1,
``where`` whose condition does not read ``y``; a zero first partial is not enough:
``sign(y)`` and conditions on ``y`` have one), reductions of it are sums, and no
adjoint reads it except the weighted sums above. The value left once ``y`` is dropped
may be narrower (a number, a parameter): it keeps its own shape, and the reductions
broadcast it to their points.

Likewise an adjoint ``hbar = ybar @ A^T`` read only by a vector parameter's weighted
sum ``w @ hbar`` (the mean of a quadratic form whose matrix is not declared
symmetric) is contracted as ``(w @ ybar) @ A^T``: no ``[B, n] x [n, n]`` product.
"""

from __future__ import annotations

import dataclasses
import itertools

import sympy as sp

from .functions import Guard, Ratio, ScaledQuotient
from .ir import (Addressing, Assign, Broadcast, Kernel, LoadKind, LoadStmt, MatrixAdjoint,
                 MatVecStmt, ParameterAccumulate, ParameterScalar, Reduce, Shape)
from .optimise import _Symbols, prune

TOTAL_KERNEL = "parameter_gradient_total"


def _candidates(kernel):
    """Forward products of a matrix whose batch-summed adjoint the kernel forms anyway,
    of a per-sample vector: ``{vector name: MatVecStmt}``."""
    adjoint = {st.matvec.vector for st in kernel.body
               if isinstance(st, MatrixAdjoint) and st.summed and st.total is None}
    return {st.matvec.vector: st for st in kernel.body
            if isinstance(st, MatVecStmt) and not st.adjoint and st.matvec.vector in adjoint
            and kernel.shapes.get(st.matvec.value, Shape.SCALAR) is Shape.BOTH}


def _degree(expr, symbols):
    """The degree of ``expr`` in ``symbols`` jointly when it is 0 or 1, else None.

    A zero derivative is not enough: ``sign(y)``, a ``Piecewise`` whose condition reads
    ``y`` and a condition ``y > 0`` itself have first partials free of ``y`` (0 where they
    exist) yet change with it. So the expression is read structurally: sums and products
    of ``y``, and ``Piecewise`` whose conditions do not read ``y``."""
    if not isinstance(expr, sp.Expr):
        return 0 if not (expr.free_symbols & symbols) else None     # a condition
    if not (expr.free_symbols & symbols):
        return 0
    if expr in symbols:
        return 1
    if isinstance(expr, sp.Add):
        degrees = [_degree(a, symbols) for a in expr.args]
        return None if None in degrees else max(degrees)
    if isinstance(expr, sp.Mul):
        degrees = [_degree(a, symbols) for a in expr.args]
        return None if None in degrees or sum(degrees) > 1 else sum(degrees)
    if isinstance(expr, sp.Piecewise):
        degrees = []
        for value, cond in expr.args:
            if cond.free_symbols & symbols:
                return None                     # the branch taken depends on y
            degrees.append(_degree(value, symbols))
        return None if None in degrees else max(degrees)
    if isinstance(expr, (Guard, Ratio, ScaledQuotient)):
        # Guard(v, selected) is v; Ratio(a, r) is a/r and ScaledQuotient(a, r) a/r**2
        if any(a.free_symbols & symbols for a in expr.args[1:]):
            return None
        return _degree(expr.args[0], symbols)
    return None                                 # a power or function of y


def _is_affine(expr, symbols):
    """True if ``expr`` is affine in ``symbols`` jointly (see :func:`_degree`)."""
    return _degree(expr, set(symbols)) is not None


def _affine_values(kernel, products):
    """``(affine, reads)``: the symbols computed from the products' vectors (all affine
    in them) and the parameter accumulations that read a vector as ``c * y + rest``; or
    None when a value is not affine in them or is read some other way."""
    vectors = {st.matvec.symbol: name for name, st in products.items()}
    affine = set(vectors)
    reads = {}
    for k, st in enumerate(kernel.body):
        used = [u for u in st.uses() if u in affine]
        if not used:
            continue
        if isinstance(st, Assign):
            if not _is_affine(st.expr, used):
                return None             # a product of two, a function or condition of one
            affine.add(st.target)
        elif isinstance(st, Broadcast) or (isinstance(st, Reduce)
                                           and st.op in ("sum", "sum_all")):
            affine.add(st.target)
        elif (isinstance(st, LoadStmt) and st.load.kind is LoadKind.VECTOR and not st.load.tangent
              and st.load.base in products):
            affine.add(st.load.symbol)
        elif (isinstance(st, ParameterAccumulate) and st.summed and st.matvec is None
              and len(used) == 1 and used[0] in vectors and _is_affine(st.source, used)):
            y = used[0]
            c = st.source.diff(y)
            rest = sp.expand(st.source - c * y)
            if not c.is_Number or rest.free_symbols & affine:
                return None
            reads[k] = (vectors[y], c, rest)
        else:
            return None                 # a product, lse, norm, ... of y, or another reader
    return affine, reads


def _contracted_adjoints(kernel):
    """``{hbar: {statement index: (c, matvec)}}`` for the adjoints ``hbar = ybar @ A^T``
    of whole products read only as ``c * hbar`` by batch-summed accumulations of a whole
    vector parameter (the mean's ``sum_b w_b hbar_b`` in a quadratic form whose matrix is
    not declared symmetric): each becomes ``c (w @ ybar) @ A^T``, and the ``[B, n] x
    [n, n]`` product that forms hbar is not needed."""
    adjoints = {st.target: (k, st) for k, st in enumerate(kernel.body)
                if isinstance(st, MatVecStmt) and st.adjoint and st.matvec.whole}
    found = {}
    for hbar, (at, mv_st) in adjoints.items():
        readers = {}
        for k, st in enumerate(kernel.body):
            if hbar not in st.uses():
                continue
            if not (isinstance(st, ParameterAccumulate) and st.summed and st.matvec is None
                    and k > at and st.level is mv_st.level
                    and st.load.addressing is Addressing.WHOLE
                    and st.source.free_symbols == {hbar}):
                break
            c = st.source.diff(hbar)
            if not c.is_Number or sp.expand(st.source - c * hbar) != 0:
                break
            readers[k] = (c, mv_st.matvec)
        else:
            if readers:
                found[hbar] = readers
    return found


def _affine_subset(kernel, products):
    """``(products, _affine_values(...))`` for the largest set of the candidate products
    in which the energy is affine (largest first, then in order: ``x @ W @ x +
    sum(tanh(V @ x))`` contracts W's product and keeps V's), or None. Every subset is
    tried for up to 6 candidates, else only the leading ones (a formula rarely has more
    than two)."""
    names = list(products)
    if len(names) <= 6:
        subsets = (c for size in range(len(names), 0, -1)
                   for c in itertools.combinations(names, size))
    else:
        subsets = (names[k:] for k in range(len(names)))
    for subset in subsets:
        sub = {k: products[k] for k in subset}
        found = _affine_values(kernel, sub)
        if found is not None:
            return sub, found
    return None


def total_kernel(kernel: Kernel) -> Kernel | None:
    """The batch-total kernel of an optimised ``parameter_gradient_sum`` kernel (see the
    module's docstring), or None when no matrix-vector product can be contracted."""
    kernel = prune(kernel)      # statements nothing reads do not count as readers
    chosen = _affine_subset(kernel, _candidates(kernel))
    if chosen is None:
        return None
    products, (affine, reads) = chosen
    zero = {st.matvec.symbol for st in products.values()}   # values that are 0 at y = 0
    syms = _Symbols(kernel)
    contracted = _contracted_adjoints(kernel)
    body, shares = [], []
    for k, st in enumerate(kernel.body):
        if isinstance(st, MatVecStmt) and not st.adjoint and st.matvec.vector in products:
            continue                    # the forward product is what this kernel saves
        if isinstance(st, MatVecStmt) and st.adjoint and st.target in contracted:
            continue                    # hbar = ybar @ A^T: only its weighted sum is read
        if k in contracted.get(getattr(st, "source", None), {}):
            c, mv = contracted[st.source][k]
            body.append(dataclasses.replace(st, source=sp.S.Zero, scale=st.scale * c,
                                            matvec=mv, adjoint=True))
            continue
        if k in reads:
            name, c, rest = reads[k]
            mv = products[name].matvec
            body.append(dataclasses.replace(st, source=mv.value, scale=st.scale * c,
                                            matvec=mv))
            if rest != 0:
                body.append(dataclasses.replace(st, source=rest))
            continue
        if isinstance(st, MatrixAdjoint) and st.matvec.vector in products:
            share = syms.new("tot", Shape.SCALAR)
            shares.append(share)
            body.append(dataclasses.replace(st, total=share))
            continue
        if any(d in affine for d in st.defines()):
            # the value at y = 0: zeros are dropped, the rest computed as before
            if isinstance(st, Assign):
                expr = st.expr.xreplace({z: sp.S.Zero for z in zero})
                if expr == 0:
                    zero.add(st.target)
                    continue
                st = dataclasses.replace(st, expr=expr)
                # without y it may be narrower (a number, a parameter, per sample
                # only): the reductions that read it broadcast it to their points
                syms.shapes[st.target] = Shape.join(*[syms.shapes.get(s, Shape.SCALAR)
                                                      for s in expr.free_symbols])
            elif isinstance(st, (Reduce, Broadcast)) and st.source in zero:
                zero.add(st.target)
                continue
            elif isinstance(st, LoadStmt):
                zero.add(st.load.symbol)
                continue
        body.append(st)
    parts = list(shares)
    if kernel.energy not in zero:
        rest = syms.new("tot", Shape.SCALAR)
        body.append(ParameterScalar(None, rest, kernel.energy, True))
        parts.insert(0, rest)
    if len(parts) == 1:
        total = parts[0]
    else:
        total = syms.new("total", Shape.SCALAR)
        body.append(Assign(None, total, sp.Add(*parts)))
    outputs = tuple(total if o == kernel.energy else o for o in kernel.outputs)
    return syms.done(kernel, body, name=TOTAL_KERNEL, outputs=outputs, energy=total)
