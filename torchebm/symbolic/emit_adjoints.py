"""Stage 5b, emit (continued): printing the accumulation of adjoints.

The gradient's scatters back into ``x`` (whole vectors, slices, strided views,
gathers, interleaved levels) and the parameters' adjoints (per sample, or the
batch contracted with ``weights``) as one mixin of ``emit.ModuleEmitter``: it
prints what ``lower`` and the derivative stages decided, one ``_emit_<Stmt>``
method per statement type.
"""

from __future__ import annotations

from .ir import (Accumulate, Addressing, Assign, Broadcast, LoadKind, LoadStmt, Shape, Vector,
                 VectorKind)


class AdjointPrinting:
    """``_emit_<Stmt>`` for the statements that accumulate adjoints."""

    def _emit_InitAdjoint(self, st):
        return []  # the first accumulation creates the adjoint (see _emit_Accumulate)

    def _emit_Accumulate(self, st):
        adj, ld, lv = self.accumulator(st.vector), st.load, st.level
        src, size, like = self.ref(st.source), self.vector_length(st.vector), st.like
        first = adj not in self.initialised
        self.initialised.add(adj)
        if first and lv is not None and ld.addressing is Addressing.WHOLE:
            line, alias = self._start_whole(st, adj, src, size, like)
            printed = [line]
        else:
            printed, alias = self._accumulate(st, adj, ld, lv, src, size, like, first), False
        if not alias:
            self.owned.add(adj)     # a fresh tensor of our own, not an alias of a value
        return printed

    def _start_whole(self, st, adj, src, size, like):
        """``(line, alias)`` creating a vector from its first whole contribution; ``alias``:
        the vector is the source itself (or a view of it), not a tensor of its own. Later
        accumulations are out of place, so only an alias that is returned (the gradient)
        or later updated needs a copy."""
        if (self.shape(st.source) is Shape.BOTH and not self._is_view(st.source)
                and not self._used_later(st.source)):
            return f"{adj} = {src}", True
        if st.vector.kind is VectorKind.MATVEC and not self._accumulated_later(st.vector):
            # a product's adjoint, only read from here on (never returned, never
            # written in place): the alias or broadcast view serves as it is
            return f"{adj} = _rt_points({src}, {like}, {size})", True
        return f"{adj} = _rt_points({src}, {like}, {size}).clone()", False

    def _accumulate(self, st, adj, ld, lv, src, size, like, first):
        """The lines of one accumulation (a first whole one: :meth:`_start_whole`);
        ``first``: the vector does not exist yet."""
        zeros = (f"torch.zeros_like({like})" if st.vector.x_like else
                 f"{like}.new_zeros({like}.shape[:-1] + ({size},))")
        if lv is None:
            idx = ", ".join(self.code(i) for i in ld.indices)
            return ([f"{adj} = {zeros}"] if first else []) + [f"{adj}[..., {idx}] += {src}"]
        if ld.addressing is Addressing.WHOLE:
            return [f"{adj} = {adj} + {src}"]
        if ld.addressing is Addressing.STRIDED:
            sl = self.strided_slice(ld, lv)
            src = self.materialize(st.source, lv)
            if first:     # zeros of our own: the slices are written in place
                return [f"{adj} = {zeros}", f"{adj}[..., {sl}] = {src}"]
            if adj in self.owned:   # memory no other value shares or has saved
                return [f"{adj}[..., {sl}] += {src}"]
            start, stop, step = (part or "None" for part in sl.split(":"))
            return [f"{adj} = {adj}.slice_scatter({adj}[..., {sl}] + {src}, -1, {start}, "
                    f"{stop}, {step})"]
        if ld.addressing is Addressing.SLICE:
            _, lo, hi = lv.clauses[0]
            src = self.materialize(st.source, lv)
            bounds = f"{self.code(lo + ld.offset)}, {self.code(hi + ld.offset)}"
            if first:
                return [f"{adj} = _rt.pad_slice({src}, {bounds}, "
                        f"{self.code(self.size_expr(ld))})"]
            # the sum in the slice between the untouched ends: no padded copy, and
            # compiled code without per-element bounds tests (see _rt.add_slice)
            return [f"{adj} = _rt.add_slice({adj}, {src}, {bounds})"]
        k = f'lay["{self.index_key(ld, 0)}"]'
        return ([f"{adj} = {zeros}"] if first else []) + [
            f"{adj} = {adj}.index_add(-1, {k}, {self.materialize(st.source, lv)})"]

    def _emit_Interleave(self, st):
        adj = self.accumulator(st.vector)
        self.initialised.add(adj)
        if st.level is None:        # per-sample values: one column each
            return [f"{adj} = torch.stack([{', '.join(map(self.ref, st.sources))}], -1)"]
        parts = ", ".join(self.materialize(s, st.level) for s in st.sources)
        return [f"{adj} = torch.stack([{parts}], -1).flatten(-2)"]

    def _accumulated_later(self, vector):
        """True if a statement after the current one accumulates into ``vector``."""
        return any(isinstance(st, Accumulate) and st.vector == vector
                   for st in self.body[self.position + 1:])

    def _used_later(self, sym):
        """True if a statement after the current one reads ``sym`` (an in-place update of
        an accumulator that aliases it would change that statement's input)."""
        return any(sym in st.uses() for st in self.body[self.position + 1:])

    def _is_view(self, sym):
        """True if ``sym`` may share memory with an input or be a broadcast view (a load,
        a broadcast, a copy of one, or an input itself); False for computed values."""
        if not sym.is_Symbol:
            return True
        for st in self.body:
            if sym in st.defines():
                if isinstance(st, LoadStmt):
                    return st.load.kind is not LoadKind.VECTOR    # our own product's: fresh
                if isinstance(st, Assign):
                    return st.expr.is_Symbol and self._is_view(st.expr)
                return isinstance(st, Broadcast)
        return True

    def _emit_ParameterAccumulate(self, st):
        adj, ld, lv = self.accumulator(st.vector), st.load, st.level
        theta = self.params[ld.base]
        lines, first = [], adj not in self.initialised
        self.initialised.add(adj)
        # a batch contraction of a whole vector is a fresh [n] tensor: it starts the adjoint
        fresh = (st.summed and lv is not None and ld.addressing is Addressing.WHOLE
                 and (st.matvec is not None or self.shape(st.source).per_point))
        if first and not fresh:
            lines.append(f"{adj} = torch.zeros_like({theta})" if st.summed else
                         f"{adj} = x.new_zeros(x.shape[:-1] + {theta}.shape)")
        if lv is None:                   # a root load at constant indices
            idx = ", ".join(self.code(i) for i in ld.indices)
            src = self.ref(st.source)
            if st.summed:
                src = (f"(weights * {src}).sum()" if self.shape(st.source).per_sample
                       else f"weights.sum() * {src}")
                return lines + [f"{adj}[{idx}] += {src}"]
            return lines + [f"{adj}[..., {idx}] += {src}"]
        if st.matvec is not None and st.adjoint:     # (w @ ybar) @ A^T: hbar never formed
            mv = st.matvec
            ybar = self.accumulator(Vector(VectorKind.MATVEC, mv.vector))
            if ybar not in self.initialised:         # nothing reads the product: no share
                return [f"{adj} = torch.zeros_like({theta})"] if first else []
            src = (f"(weights.reshape(-1) @ {ybar}.flatten(0, -2)) @ "
                   f"{self.matrix_code(mv, transpose=False)}" + ("" if mv.row_major else ".mT"))
        elif st.matvec is not None:      # (w @ h) @ A: the batch contracted before the product
            h = self.ref(st.source)
            src = (f"(weights.reshape(-1) @ {h}.flatten(0, -2)) @ "
                   f"{self.matrix_code(st.matvec)}")
        elif st.summed and self.shape(st.source) is Shape.POINT:
            src = f"weights.sum() * {self.ref(st.source)}"
        else:
            src = self.materialize(st.source, lv)
            if st.summed:                # the batch contracted first: one GEMV (P may be 0)
                src = f"weights.reshape(-1) @ {src}.flatten(0, -2)"
        if st.scale != 1:                # on the contracted [*theta.shape] result
            src = f"{self.code(st.scale)}*({src})"
        if ld.addressing is Addressing.WHOLE:
            return lines + [f"{adj} = {src}" if first and fresh else f"{adj} = {adj} + {src}"]
        if ld.addressing is Addressing.SLICE:
            _, lo, hi = lv.clauses[0]
            return lines + [f"{adj} = {adj} + _rt.pad_slice({src}, {self.code(lo + ld.offset)}, "
                            f"{self.code(hi + ld.offset)}, {self.code(self.size_expr(ld))})"]
        if ld.addressing is not Addressing.GATHER:
            raise RuntimeError(f"torchebm: a parameter load addressed {ld.addressing} inside "
                               "a sum; please report a bug")
        keys = [f'lay["{self.index_key(ld, k)}"]' for k in range(len(ld.indices))]
        if len(keys) == 1:
            return lines + [f"{adj} = {adj}.index_add(-1, {keys[0]}, {src})"]
        flat = f"{keys[0]} * {theta}.shape[1] + {keys[1]}"
        return lines + [f"{adj} = {adj}.flatten(-2).index_add(-1, {flat}, {src})"
                        f".unflatten(-1, {theta}.shape)"]

    def _emit_MatrixAdjoint(self, st):
        mv, adj = st.matvec, self.accumulator(st.vector)
        ybar = self.accumulator(Vector(VectorKind.MATVEC, mv.vector))
        lines = []
        if ybar not in self.initialised:     # nothing reads the product: no adjoint
            if st.total is not None:
                lines.append(f"{self.names[st.total]} = x.new_zeros(())")
            return lines
        first = adj not in self.initialised
        self.initialised.add(adj)
        if adj in self.factored:            # per sample: the rank-one factors, not h ybar^T
            u, v = (self.ref(mv.value), ybar) if not mv.row_major else (ybar, self.ref(mv.value))
            if st.scale != 1:
                u = f"{self.code(st.scale)}*{u}"
            pair = f"(({u}, {v}),)"
            return lines + [f"{adj} = {pair}" if first else f"{adj} = {adj} + {pair}"]
        if first and not mv.whole:          # else the (fresh) product starts the adjoint
            theta = self.params[mv.matrix]
            lines.append(f"{adj} = torch.zeros_like({theta})" if st.summed else
                         f"{adj} = x.new_zeros(x.shape[:-1] + {theta}.shape)")
        h = self.ref(mv.value)
        if st.summed:
            # [B, P] by flatten, not reshape(-1, P): an empty level (P = 0) is ambiguous there
            hh, yy = f"{h}.flatten(0, -2)", f"(weights.unsqueeze(-1) * {ybar}).flatten(0, -2)"
            prod = f"{yy}.mT @ {hh}" if mv.row_major else f"{hh}.mT @ {yy}"
            if st.scale != 1:              # on the [n, n] product, not on the [B, n] vector
                prod = f"{self.code(st.scale)}*({prod})"
        else:
            prod = (f"{ybar}.unsqueeze(-1) * {h}.unsqueeze(-2)" if mv.row_major
                    else f"{h}.unsqueeze(-1) * {ybar}.unsqueeze(-2)")
        def share(gram):       # <A, G>: the product's share of the weighted total energy
            if st.total is None:
                return []
            return [f"{self.names[st.total]} = "
                    f"({self.matrix_code(mv, transpose=False)} * {gram}).sum()"]
        if first and mv.whole:              # the product is the adjoint so far
            return lines + [f"{adj} = {prod}"] + share(adj)
        total = []
        if st.total is not None:                    # G is read twice: named
            gram = self.ns.create("gram")
            lines.append(f"{gram} = {prod}")
            prod, total = gram, share(gram) + [f"del {gram}"]
        if mv.whole:
            return lines + [f"{adj} = {adj} + {prod}"] + total
        return lines + [f"{adj}[..., {self.matrix_part(mv)}] += {prod}"] + total

    def _emit_ParameterScalar(self, st):
        t, src = self.names[st.target], self.ref(st.source)
        if st.summed:
            return [f"{t} = (weights * {src}).sum()" if self.shape(st.source).per_sample
                    else f"{t} = weights.sum() * {src}"]
        if self.shape(st.source).per_sample:
            return [f"{t} = {src}"]
        return [f"{t} = x.new_ones(x.shape[:-1]) * {src}"]
