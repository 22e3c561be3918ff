"""Stage 4, optimise: share work (CSE) and drop what an entry point does not need.

CSE runs once over the whole statement list, per run of elementwise
assignments of one level (values of one shape), so energy, partials and
gradient terms of a level share their subexpressions. Each entry point
(``forward``, ``gradient``, ``energy_and_gradient``) is then the same list
with dead statements removed, which makes ``energy_and_gradient`` equal to
``forward`` and ``gradient`` bit for bit: they run the same arithmetic.
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from .ir import (GRADIENT, HDIAG, Accumulate, Addressing, Adjoint, Assign, Broadcast, Free,
                 IndexValue, InitAdjoint, Interleave, Kernel, LoadKind, LoadStmt, MatrixAdjoint,
                 MatrixDiagonal, MatVec, MatVecStmt, ParameterAccumulate, PointShift, Shape,
                 Vector, VectorKind, frozen_map, tangent_vector_name)


def cse(kernel: Kernel, prefix: str = "_t") -> Kernel:
    """Common-subexpression elimination over each run of same-level assignments.

    ``prefix`` names the temporaries; kernels optimised separately use different ones.
    Returns a new kernel (``kernel`` is not changed).
    """
    out, run = [], []
    names = sp.numbered_symbols(prefix, real=True)
    shapes, tangent = dict(kernel.shapes), set(kernel.tangent)

    def flush():
        if not run:
            return
        exprs = [a.expr for a in run]
        temps, reduced = sp.cse(exprs, symbols=names, optimizations=None)
        level = run[0].level
        for t, e in temps:
            shapes[t] = Shape.join(*[shapes.get(s, Shape.SCALAR) for s in e.free_symbols])
            if e.free_symbols & tangent:
                tangent.add(t)
        items = [Assign(level, t, e) for t, e in temps]
        items += [Assign(level, a.target, e) for a, e in zip(run, reduced)]
        out.extend(_dependency_order(items))
        run.clear()

    for st in kernel.body:
        if isinstance(st, Assign) and (not run or run[0].level is st.level):
            run.append(st)
            continue
        flush()
        if isinstance(st, Assign):
            run.append(st)
        else:
            out.append(st)
    flush()
    return kernel.replace(body=tuple(out), shapes=frozen_map(shapes),
                          tangent=frozenset(tangent))


def _dependency_order(items: list) -> list:
    """``items`` (assignments) reordered so each follows what it uses, else as given.

    ``sp.cse`` puts every shared temporary first, but a temporary may use a
    value that an earlier assignment of the same run defines (a chain of
    tangents); Kahn's algorithm with the original position as priority keeps
    the order wherever it is already valid.
    """
    import heapq
    where = {a.target: k for k, a in enumerate(items)}
    waiting = {k: {where[s] for s in a.expr.free_symbols if s in where and where[s] != k}
               for k, a in enumerate(items)}
    users: dict = {}
    for k, deps in waiting.items():
        for d in deps:
            users.setdefault(d, []).append(k)
    ready = [k for k, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(items[k])
        for u in users.get(k, ()):
            waiting[u].discard(k)
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(order) != len(items):
        raise RuntimeError("torchebm: cyclic assignments after CSE; please report a bug")
    return order


def prune(kernel: Kernel, outputs=None, name: str | None = None) -> Kernel:
    """Keep only the statements that ``outputs`` (default: the kernel's) depend on
    (dead-code elimination): an entry point that computes part of a kernel."""
    outputs = kernel.outputs if outputs is None else tuple(outputs)
    needed = set(outputs)
    kept = []
    for st in reversed(kernel.body):
        if any(d in needed for d in st.defines()):
            kept.append(st)
            needed.update(st.uses())
    kept.reverse()
    return kernel.replace(name=name or kernel.name, outputs=outputs, body=tuple(kept))


# -- copies and liveness ---------------------------------------------------------------
def _rename(st, mapping):
    """``st`` with the symbols it reads renamed by ``mapping`` (a new statement if any)."""
    changes = {}
    for f in dataclasses.fields(st):
        value = getattr(st, f.name)
        if isinstance(value, sp.Basic):
            new = value.xreplace(mapping)
        elif isinstance(value, tuple) and value and all(isinstance(v, sp.Basic) for v in value):
            new = tuple(v.xreplace(mapping) for v in value)
        elif isinstance(value, MatVec):
            new = dataclasses.replace(value, value=value.value.xreplace(mapping))
        else:
            continue
        if new is not value and new != value:
            changes[f.name] = new
    return dataclasses.replace(st, **changes) if changes else st


def propagate_copies(kernel: Kernel) -> Kernel:
    """Drop copies ``a = b`` (left by CSE) and read ``b`` wherever ``a`` was read.

    Every symbol is assigned once, so the rename is exact; outputs and the
    recorded roots of dense gradients are renamed too.
    """
    mapping = {}
    for st in kernel.body:
        if isinstance(st, Assign) and st.expr.is_Symbol:
            mapping[st.target] = mapping.get(st.expr, st.expr)
    if not mapping:
        return kernel
    body = tuple(_rename(st, mapping) for st in kernel.body
                 if not (isinstance(st, Assign) and st.target in mapping))
    outputs = tuple(o.xreplace(mapping) if isinstance(o, sp.Basic) else o
                    for o in kernel.outputs)
    return kernel.replace(body=body, outputs=outputs, energy=kernel.energy.xreplace(mapping),
                          dense_roots=frozen_map({v: s.xreplace(mapping)
                                                  for v, s in kernel.dense_roots.items()}))


def _storage(st, key, root):
    """The value whose memory ``key`` (defined by ``st``) holds: itself when it owns
    fresh memory, the owner when it is a view or the same tensor, None for inputs,
    parameters and layout tensors (never freed)."""
    def of(k):
        return root.get(k)
    if isinstance(key, Adjoint):
        if key in root:
            return root[key]
        if isinstance(st, Accumulate) and st.load.addressing is Addressing.WHOLE:
            return of(st.source) or key     # the first value may be the source itself
        return key
    if isinstance(st, Assign):
        return of(st.expr) if st.expr.is_Symbol else key
    if isinstance(st, LoadStmt):
        ld = st.load
        if ld.addressing is Addressing.GATHER:
            return key
        if ld.kind is LoadKind.VECTOR:
            name = tangent_vector_name(ld.base) if ld.tangent else ld.base
            return of(sp.Symbol(name, real=True))
        if ld.kind is LoadKind.DENSE:
            return of(Adjoint(Vector(VectorKind.DENSE, ld.base)))
        return None
    if isinstance(st, (IndexValue, MatrixDiagonal)):
        return None
    if isinstance(st, Broadcast):       # a view (the gather case is decided by liveness)
        return of(st.source)
    if isinstance(st, PointShift):
        return of(st.source) if st.source.is_Symbol else key
    return key          # reductions, products, matrix-vector products: fresh tensors


def liveness(kernel: Kernel) -> Kernel:
    """Insert :class:`ir.Free` statements: each value that owns memory is released
    (with its views) after the last statement that reads it, so the peak memory is
    that of the values alive at once, not of every temporary (as torch.fx does).
    Outputs, inputs, parameters and per-sample values of scalar shape are kept."""
    root, members, last = {}, {}, {}
    for k, st in enumerate(kernel.body):
        for key in st.defines() if not isinstance(st, InitAdjoint) else ():
            if key not in root:
                if (isinstance(st, Broadcast) and st.level.parent is not None
                        and kernel.shapes.get(st.source, Shape.SCALAR).per_point):
                    root[key] = key             # a gather over the parent's points
                else:
                    root[key] = _storage(st, key, root)
            r = root[key]
            if r is not None:
                members.setdefault(r, [])
                if key not in members[r]:
                    members[r].append(key)
                last[r] = k
        for key in st.uses():
            r = root.get(key)
            if r is not None:
                last[r] = k
    keep = {root.get(o, o) for o in kernel.outputs}
    frees: dict = {}
    for r, k in last.items():
        shape = Shape.BOTH if isinstance(r, Adjoint) else kernel.shapes.get(r, Shape.SCALAR)
        if r in keep or shape is Shape.SCALAR:
            continue
        frees.setdefault(k, []).extend(members[r])
    body = []
    for k, st in enumerate(kernel.body):
        body.append(st)
        if k in frees:
            body.append(Free(None, tuple(frees[k])))
    return kernel.replace(body=tuple(body))


def entry_points(kernel: Kernel, hvp: Kernel | None = None,
                 diagonal: Kernel | None = None) -> tuple:
    """One kernel per generated method, each pruned to its outputs and with its
    values freed after their last use."""
    energy, grad = kernel.energy, Adjoint(GRADIENT)
    entries = [prune(kernel, [energy], "energy"), prune(kernel, [grad], "gradient"),
               prune(kernel, [energy, grad], "energy_and_gradient")]
    if hvp is not None:
        entries.append(prune(hvp, name="hessian_vector_product"))
        if diagonal is not None:
            entries += [prune(diagonal, [Adjoint(HDIAG)], "hessian_diagonal"),
                        prune(diagonal, name="gradient_and_hessian_diagonal")]
    return tuple(liveness(k) for k in entries)


# -- simplification ------------------------------------------------------------------------
class _Symbols:
    """New symbols for a pass, numbered after the kernel's (unique across kernels)."""

    def __init__(self, kernel):
        self.counter = kernel.next_symbol
        self.shapes = dict(kernel.shapes)
        self.tangent = set(kernel.tangent)

    def new(self, stem, shape, like=()):
        self.counter += 1
        s = sp.Symbol(f"_{stem}_{self.counter}", real=True)
        self.shapes[s] = shape
        if any(u in self.tangent for u in like):
            self.tangent.add(s)
        return s

    def done(self, kernel, body, **changes):
        return kernel.replace(body=tuple(body), shapes=frozen_map(self.shapes),
                              tangent=frozenset(self.tangent), next_symbol=self.counter,
                              **changes)


def _whole_vector_loads(kernel):
    """A load of a whole matrix-vector product's vector is that vector: read it by its
    symbol, so that algebra sees ``y`` and the load of ``y`` as one value."""
    mapping = {}
    for st in kernel.body:
        if (isinstance(st, LoadStmt) and st.load.kind is LoadKind.VECTOR
                and st.load.addressing is Addressing.WHOLE):
            name = tangent_vector_name(st.load.base) if st.load.tangent else st.load.base
            mapping[st.load.symbol] = sp.Symbol(name, real=True)
    if not mapping:
        return kernel
    return kernel.replace(body=tuple(_rename(st, mapping) for st in kernel.body),
                          outputs=tuple(o.xreplace(mapping) if isinstance(o, sp.Basic) else o
                                        for o in kernel.outputs))


def _pull_matvec_scales(kernel):
    """``y = (c*u) @ A`` with ``c`` a number becomes ``y' = u @ A`` and ``y = c*y'``
    where ``y`` is read, so that ``c`` can meet the other constants of its readers
    (a quadratic form's ``0.5`` and its gradient's ``2``) and cancel."""
    defs = {st.target: (k, st) for k, st in enumerate(kernel.body) if isinstance(st, Assign)}
    scale = {}
    for st in kernel.body:
        if isinstance(st, MatVecStmt) and not st.adjoint and st.matvec.value in defs:
            expr = defs[st.matvec.value][1].expr
            if not isinstance(expr, sp.Expr):
                continue
            c, rest = sp.factor_terms(expr).as_coeff_Mul()
            if c.is_Number and c != 1 and c != 0 and not rest.is_Number:
                scale[st.matvec.symbol] = (c, rest)
    if not scale:
        return kernel
    syms = _Symbols(kernel)
    body, mapping, unscaled = [], {}, {}
    for st in kernel.body:
        st = _rename(st, mapping)
        if isinstance(st, MatVecStmt) and not st.adjoint and st.matvec.symbol in scale:
            c, rest = scale[st.matvec.symbol]
            h = syms.new("h", kernel.shapes.get(st.matvec.value, Shape.BOTH),
                         like=[st.matvec.value])
            body.append(Assign(st.level, h, rest))
            body.append(dataclasses.replace(st, matvec=dataclasses.replace(st.matvec, value=h)))
            unscaled[st.matvec.symbol] = (c, h)
            y = st.matvec.symbol
            scaled = syms.new("y", Shape.BOTH, like=[y])
            body.append(Assign(st.level, scaled, c * y))
            mapping[y] = scaled
            continue
        if (isinstance(st, MatrixAdjoint) and st.summed
                and st.matvec.symbol in unscaled):
            # the batch-summed adjoint (c*h)^T (w ybar) as c * (h^T (w ybar)): the scaling
            # on the [n, n] result, the forward's h read again (no scaled [B, n] copy)
            c, h = unscaled[st.matvec.symbol]
            st = dataclasses.replace(st, matvec=dataclasses.replace(st.matvec, value=h),
                                     scale=c * st.scale)
        body.append(st)
    return syms.done(kernel, body)


def _merge_accumulations(kernel):
    """Whole-vector accumulations into one adjoint become one assignment of their sum
    (``grad = a; grad = grad + b`` -> ``grad = a + b``, which algebra can simplify)."""
    groups: dict = {}
    for k, st in enumerate(kernel.body):
        if isinstance(st, Accumulate):
            groups.setdefault(st.vector, []).append(k)
    merge = {}
    for vector, positions in groups.items():
        stmts = [kernel.body[k] for k in positions]
        if len(stmts) < 2 or any(s.level is None or s.level.parent is not None
                                 or s.load.addressing is not Addressing.WHOLE for s in stmts):
            continue
        key = Adjoint(vector)
        first, last = positions[0], positions[-1]
        if any(key in st.uses() and not isinstance(st, Accumulate)
               for st in kernel.body[first:last]):
            continue          # read between its accumulations
        merge[vector] = positions
    if not merge:
        return kernel
    syms = _Symbols(kernel)
    drop = {k for positions in merge.values() for k in positions[:-1]}
    body = []
    for k, st in enumerate(kernel.body):
        if k in drop:
            continue
        if isinstance(st, Accumulate) and st.vector in merge:
            sources = [kernel.body[j].source for j in merge[st.vector]]
            total = syms.new("acc", Shape.join(*[syms.shapes.get(s, Shape.SCALAR)
                                                 for s in sources]), like=sources)
            body.append(Assign(st.level, total, sp.Add(*sources)))
            st = dataclasses.replace(st, source=total)
        body.append(st)
    return syms.done(kernel, body)


def _merge_parameter_accumulations(kernel):
    """Batch-summed accumulations of numeric multiples of one value into a vector
    parameter's adjoint (a quadratic form's mean, read on both sides of the form:
    ``adj += w @ (c1*u)``, ``adj += w @ (c2*u)``) become one contraction
    ``adj += (c1 + c2) * (w @ u)``: one GEMV, the scaling on the ``[n]`` result, no
    scaled ``[B, n]`` copies. Only whole-vector accumulations in root-parented levels
    (the full vector, so each source is ``[..., n]``) of sources of one shape."""
    defs = {st.target: st.expr for st in kernel.body if isinstance(st, Assign)}
    uses: dict = {}
    for st in kernel.body:
        for key in st.uses():
            uses[key] = uses.get(key, 0) + 1
    groups: dict = {}
    for k, st in enumerate(kernel.body):
        if not (isinstance(st, ParameterAccumulate) and st.summed and st.level is not None
                and st.level.parent is None and st.load.addressing is Addressing.WHOLE
                and st.source.is_Symbol
                and uses.get(st.source) == 1):
            continue
        expr = defs.get(st.source)
        c, u = expr.as_coeff_Mul() if isinstance(expr, sp.Expr) else (None, None)
        if kernel.shapes.get(st.source) is None:
            continue
        if (c is None or not c.is_Number or not u.is_Symbol
                or kernel.shapes.get(u) != kernel.shapes.get(st.source)):
            c, u = sp.S.One, st.source      # (chains of scalings are one: _fold_scales ran)
        groups.setdefault((st.vector, u), []).append((k, c * st.scale))
    merge = {}
    for (vector, u), members in groups.items():
        positions = [k for k, _ in members]
        if len(members) < 2 and members[0][1] == 1:
            continue
        key = Adjoint(vector)
        if any(key in st.uses() and not isinstance(st, ParameterAccumulate)
               for st in kernel.body[positions[0]:positions[-1]]):
            continue          # read between its accumulations
        merge[positions[-1]] = (u, sp.Add(*[c for _, c in members]))
        merge.update({k: None for k in positions[:-1]})
    if not merge:
        return kernel
    body = []
    for k, st in enumerate(kernel.body):
        if k in merge:
            if merge[k] is None:
                continue
            u, scale = merge[k]
            st = dataclasses.replace(st, source=u, scale=scale)
        body.append(st)
    return kernel.replace(body=tuple(body))


def _unit_factors(expr):
    """``expr`` without multiplications by exactly 1.0 (``1.0*u`` is ``u``)."""
    if not expr.has(sp.Float):
        return expr
    return expr.replace(lambda e: e.is_Mul and e.args[0].is_Float and float(e.args[0]) == 1.0,
                        lambda e: sp.Mul(*e.args[1:]))


def _interleave(kernel):
    """Accumulations into an x-like vector from strided loads that tile it (``x[2*i]`` and
    ``x[2*i + 1]`` over ``i in range(n // 2)``, n even) become one :class:`ir.Interleave`:
    the vector is the contributions interleaved (``torch.stack(..., -1).flatten(-2)``),
    written once, not zeros plus one scatter per load. Per-sample values into each of
    ``x[0] .. x[n - 1]`` once, n fixed by the definition, are stacked the same way."""
    groups: dict = {}
    for k, st in enumerate(kernel.body):
        if any(isinstance(d, Adjoint) for d in st.defines()) and not isinstance(st, InitAdjoint):
            for d in st.defines():
                if isinstance(d, Adjoint):
                    groups.setdefault(d.vector, []).append(k)
    merge = {}
    for vector, positions in groups.items():
        stmts = [kernel.body[k] for k in positions]
        first = stmts[0]
        if not (vector.x_like and all(isinstance(s, Accumulate) for s in stmts)):
            continue
        loads = [s.load for s in stmts]
        if first.level is None:        # per-sample values into x[0], x[1], ... of a fixed n
            k = len(stmts)
            if not all(s.level is None and ld.addressing is Addressing.ELEMENT
                       and (ld.like or ld).base in kernel.program.root_tiled
                       and kernel.shapes.get(s.source, Shape.SCALAR) is Shape.BATCH
                       for s, ld in zip(stmts, loads)):
                continue
            diffs = [ld.indices[0] for ld in loads]
            if set(diffs) != set(range(k)):
                continue
        else:
            if not first.level.one_range:
                continue
            k = first.load.stride
            if not all(s.level is first.level and ld.addressing is Addressing.STRIDED
                       and ld.stride == k and (ld.like or ld).base in first.level.tiled
                       for s, ld in zip(stmts, loads)):
                continue
            diffs = [sp.expand(ld.offset - loads[0].offset) for ld in loads]
        if len(stmts) != k or not all(d.is_Integer for d in diffs) or len(set(diffs)) != k:
            continue
        key = Adjoint(vector)
        if any(key in st.uses() for st in kernel.body[positions[0]:positions[-1] + 1]
               if not isinstance(st, Accumulate) or st.vector != vector):
            continue              # read between its accumulations
        order = sorted(range(k), key=lambda j: int(diffs[j]))
        merge[positions[-1]] = Interleave(first.level, vector,
                                          tuple(stmts[j].source for j in order), first.like)
        merge.update({p: None for p in positions[:-1]})
    if not merge:
        return kernel
    body = [merge.get(k, st) for k, st in enumerate(kernel.body)]
    return kernel.replace(body=tuple(st for st in body if st is not None))


def _fold_scales(kernel):
    """Substitute ``u = c*s`` (c a number) into the assignments that read ``u``:
    ``2.0*(0.5*u)`` is ``u``; a chain of scalings is one multiplication. A scaling of
    a sum read nowhere else is distributed into it (``0.5*(4*x**3 - 32*x + 5)`` is one
    pass, not two)."""
    uses: dict = {}
    for st in kernel.body:
        for key in st.uses():
            uses[key] = uses.get(key, 0) + 1
    sums = {st.target: st.expr for st in kernel.body if isinstance(st, Assign)
            and isinstance(st.expr, sp.Add) and uses.get(st.target) == 1
            and st.target not in kernel.outputs}
    scaled, body = {}, []
    for st in kernel.body:
        if isinstance(st, Assign):
            expr = st.expr.xreplace(scaled) if st.expr.free_symbols & scaled.keys() else st.expr
            c, rest = expr.as_coeff_Mul() if isinstance(expr, sp.Expr) else (None, None)
            if c is not None and c.is_Number and rest in sums:
                expr = sp.expand_mul(c * sums[rest], deep=False)
            expr = _unit_factors(expr)
            if expr != st.expr:
                st = dataclasses.replace(st, expr=expr)
            c, rest = expr.as_coeff_Mul() if isinstance(expr, sp.Expr) else (None, None)
            if c is not None and c.is_Number and rest.is_Symbol \
                    and st.target not in kernel.outputs:
                scaled[st.target] = expr
        body.append(st)
    return kernel.replace(body=tuple(body))


def _passes(expr) -> int:
    """Elementwise operations ``expr`` prints as (the printer's forms: ``u**2`` is one
    ``torch.square``, ``u**3`` is ``u*u*u``, another integer power one ``torch.pow``)."""
    if expr.is_Atom:
        return 0
    own = len(expr.args) - 1 if isinstance(expr, (sp.Add, sp.Mul)) else 1
    if isinstance(expr, sp.Mul) and expr.args[0] == -1:
        own -= 1 if len(expr.args) > 2 else 0
    if expr.is_Pow and expr.exp == 3:
        own = 2
    return own + sum(_passes(a) for a in expr.args)


def _horner(kernel):
    """A polynomial of degree >= 3 in one full-size value, with per-sample or constant
    coefficients, in Horner form when that prints fewer passes:
    ``4*u**3 - 12*u - 0.5`` is ``u*(4*u**2 - 12) - 0.5`` (5 passes over u, not 6)."""
    body, changed = [], False
    for st in kernel.body:
        if isinstance(st, Assign) and isinstance(st.expr, sp.Add):
            full = [s for s in st.expr.free_symbols
                    if kernel.shapes.get(s, Shape.SCALAR).per_point]
            if len(full) == 1:
                u = full[0]
                try:
                    poly = sp.Poly(st.expr, u)
                except sp.PolynomialError:
                    poly = None
                if poly is not None and poly.degree() >= 3:
                    new = sp.horner(st.expr, wrt=u)
                    if _passes(new) < _passes(st.expr):
                        st, changed = dataclasses.replace(st, expr=new), True
        body.append(st)
    return kernel.replace(body=tuple(body)) if changed else kernel


def _sum_terms(expr):
    """``{monomial: coefficient}`` of a sum (``1`` keys its constant term)."""
    return dict(expr.as_coefficients_dict())


def _factor_sum(expr, target, terms):
    """``expr`` (a sum) with ``c*t_1 + ... + c*t_k`` replaced by ``c*target`` where
    ``target = t_1 + ... + t_k`` (``terms``: its :func:`_sum_terms`); None unless ``expr``
    holds the same numeric multiple ``c`` of every term, the constant one included."""
    have = _sum_terms(expr)
    monomials = [m for m in terms if m != 1]
    if len(monomials) < 1 or len(terms) < 2 or any(m not in have for m in monomials):
        return None
    c = have[monomials[0]] / terms[monomials[0]]
    if c == 0 or not c.is_finite or any(have[m] != c * terms[m] for m in monomials):
        return None
    if have.get(1, 0) != c * terms.get(1, 0):
        return None
    rest = [a * m for m, a in have.items() if m not in terms]
    return sp.Add(*rest) + c * target


def _reuse_sums(kernel):
    """A sum that holds a numeric multiple of every term of an earlier sum of its level
    reads that sum: with ``t = x0 + x1**2 - 7``, the chain rule's ``2*(x0 + x1**2 - 7) +
    4*u*x0``, which SymPy expands into ``2*x0 + 2*x1**2 + 4*u*x0 - 14`` (a number times a
    sum is distributed), is ``2*t + 4*u*x0`` again: 4 passes instead of 7, the
    factored form of the derivative (Himmelblau's gradient). Applied to every sum
    inside an assignment, only where it prints fewer passes, and only from sums that
    something else reads."""
    readers: dict = {}
    for st in kernel.body:
        for key in st.uses():
            readers[key] = readers.get(key, 0) + 1
    sums, body, changed = [], [], False
    for st in kernel.body:
        if isinstance(st, Assign) and isinstance(st.expr, sp.Expr) and st.expr.has(sp.Add):
            expr = st.expr
            for target, level, terms in sums:
                if level is not st.level:
                    continue

                def swap(e, target=target, terms=terms):
                    new = _factor_sum(e, target, terms)
                    return e if new is None or _passes(new) >= _passes(e) else new
                expr = expr.replace(lambda e: e.is_Add, swap)
            if expr != st.expr:
                st, changed = dataclasses.replace(st, expr=expr), True
        if isinstance(st, Assign) and isinstance(st.expr, sp.Add) and (
                readers.get(st.target) or st.target in kernel.outputs):
            # only a sum that is computed anyway (an earlier pass may have folded a
            # sum into its one reader, leaving it dead: reading it would revive it)
            sums.append((st.target, st.level, _sum_terms(st.expr)))
        body.append(st)
    return kernel.replace(body=tuple(body)) if changed else kernel


def simplify(kernel: Kernel) -> Kernel:
    """Algebraic identities on the statements, each a ``Kernel -> Kernel`` step:
    whole-vector loads read as the vector; numeric factors pulled out of
    matrix-vector products (and out of the batch-summed adjoint of their matrix);
    whole-vector accumulations merged into one sum; accumulations from strided loads
    that tile a vector interleaved into it; chains of numeric scalings folded
    (``2.0*(0.5*u) = u``, ``1.0*u = u``); batch-summed parameter accumulations of
    multiples of one value merged into one scaled contraction; polynomials of one
    full-size value in Horner form; numeric multiples of an earlier sum's terms read
    as that sum (:func:`_reuse_sums`); then copies propagated. The symmetric quadratic
    form's gradient ``2 * (0.5*(x - m)) @ P`` becomes ``(x - m) @ P``: one product, no
    scaling pass."""
    for step in (_whole_vector_loads, _pull_matvec_scales, _merge_accumulations, _interleave,
                 _fold_scales, _merge_parameter_accumulations, _horner, _reuse_sums,
                 propagate_copies):
        kernel = step(kernel)
    return kernel


# -- parameter-only values ------------------------------------------------------------------
def _hoist_factor(term, params, derived, syms):
    """``term`` with its parameter-only factor (``0.5*k`` of ``0.5*k*r``) replaced by a
    derived symbol (one per distinct factor)."""
    if not term.is_Mul:
        return term
    others = term.free_symbols - params - derived.keys()
    if not others:
        return term
    factor, rest = term.as_independent(*others, as_Add=False)
    if factor.is_Number or factor.is_Symbol or not factor.free_symbols:
        return term
    return _derived_symbol(factor, derived, syms) * rest


def _derived_symbol(expr, derived, syms):
    expr = expr.xreplace(dict(derived))
    for s, e in derived.items():
        if e == expr:
            return s
    s = syms.new("c", Shape.SCALAR)
    derived[s] = expr
    return s


def hoist_parameters(kernel: Kernel, params) -> Kernel:
    """Parameter-only values move out of the body into ``kernel.derived`` (the generated
    ``_derive``, computed once per parameter value and dtype, not per call): whole
    assignments (``4*barrier_height``, ``-square(b)``) and the parameter-only factor of
    a product (``0.5*k`` in ``0.5*k*r``). ``params``: the scalar parameters' symbols
    (never ``n`` or sizes, which ``_derive`` does not know)."""
    params = frozenset(params)
    derived = dict(kernel.derived)
    syms = _Symbols(kernel)
    body = []
    for st in kernel.body:
        if isinstance(st, Assign) and isinstance(st.expr, sp.Expr) and params:
            free = st.expr.free_symbols
            if free and free <= params | derived.keys() and st.target not in kernel.outputs:
                derived[st.target] = st.expr.xreplace(derived)
                continue
            terms = sp.Add.make_args(st.expr)
            fixed = [t for t in terms if t.free_symbols and t.free_symbols <= params
                     | derived.keys()]
            rest = [t for t in terms if t not in fixed]
            if len(fixed) > 1 or (fixed and not fixed[0].is_Symbol):
                # the parameter-only terms of a sum, one value (``-square(b)``)
                rest.append(_derived_symbol(sp.Add(*fixed), derived, syms))
            else:
                rest += fixed
            expr = sp.Add(*[_hoist_factor(t, params, derived, syms) for t in rest])
            if expr != st.expr:
                st = dataclasses.replace(st, expr=expr)
        body.append(st)
    if len(derived) == len(kernel.derived):
        return kernel
    return syms.done(kernel, body, derived=frozen_map(derived))
