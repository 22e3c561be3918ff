"""Python names in generated code: the reserved ones and unique locals (cf. torch.fx)."""

from __future__ import annotations

import builtins
import keyword
import re

import sympy as sp

from .ir import Addressing, EnergySpec, LoadKind, Shape, Vector, VectorKind, tangent_vector_name
from .ir import GRADIENT, HDIAG, HVP, Broadcast, CoincidentAccumulate, LoadStmt
from .layout import python_max
from .printer import TorchEnergyPrinter
from .symbols import N, size_symbol

_FIXED = {GRADIENT: "grad", HVP: "hvp", HDIAG: "hdiag"}


def _module_attributes():
    import torch
    from ..core.base import CompiledEnergy
    return set(dir(CompiledEnergy)) | set(vars(torch.nn.Module()))


# Names a parameter cannot have in Python: keywords, builtins, the modules and
# locals of generated code, and attributes of the module class (buffers share
# their namespace: a parameter 'to' must not hide Module.to).
_RESERVED = (set(keyword.kwlist) | set(dir(builtins)) | _module_attributes() |
             {"torch", "math", "nn", "_rt", "_rt_points", "self", "x", "v", "n", "lay", "der", "weights",
              "grad", "hvp", "hdiag", "energy", "device", "dtype", "trainable", "EnergySyntaxError",
              "ShapeError", "CompiledEnergy"})
RESERVED = frozenset(_RESERVED)


class Namespace:
    """Unique, valid Python names that shadow no keyword, builtin or module (cf. torch.fx)."""

    def __init__(self):
        self.used = set(_RESERVED)

    def create(self, stem: str) -> str:
        stem = "".join(c if (c.isalnum() or c == "_") and c.isascii() else "_" for c in stem)
        stem = stem.lstrip("_") or "v"
        if stem[0].isdigit():
            stem = "v" + stem
        name, k = stem, 1
        while name in self.used:
            name = f"{stem}_{k}"
            k += 1
        self.used.add(name)
        return name


def python_name(name: str) -> str:
    """The identifier a parameter gets in Python (``lambda`` -> ``lambda_``)."""
    if keyword.iskeyword(name) or name in _RESERVED:
        return name + "_"
    return name


class ModuleNames:
    """The names, shapes and addressing facts of one generated module (all kernels)."""

    def __init__(self, spec: EnergySpec, parsed, entries):
        self.spec, self.parsed, self.entries = spec, parsed, tuple(entries)
        self.program = entries[0].program
        self.shapes = {s: sh for k in entries for s, sh in k.shapes.items()}
        self.tangent = frozenset().union(*[k.tangent for k in entries])
        self.tangent_vectors = {n: mv for k in entries for n, mv in k.tangent_vectors.items()}
        self.dense_roots = {v: s for k in entries for v, s in k.dense_roots.items()}
        self.coincident = list({st.key: st for k in entries for st in k.body
                                if isinstance(st, CoincidentAccumulate)}.values())
        self.derived_values = {}         # local -> code, printed in _derive when used
        # matrices declared positive definite: the generated code reads them as symmetric
        # (lower's ``symmetric``), so _derive hands it their symmetric part
        self.spd_params = spec.positive_definite
        self.ns = Namespace()
        self.names: dict = {N: "n"}
        self.pyscalars = {N}
        self.params = {}                 # user name -> local python name
        self._name_everything()

    # -- naming -------------------------------------------------------------------
    def _name_everything(self):
        arrays = {}
        for p in self.parsed.params.values():
            local = self.params[p.name] = self.ns.create(python_name(p.name))
            if p.rank == 0:
                self.names[sp.Symbol(p.name, real=True)] = local
            arrays[p.name] = local
        for key in self.parsed.constants:
            arrays[key] = self.params[key] = self.ns.create(key.lstrip("_"))
        for key, d in self.parsed.derived.items():
            local = self.params[key] = self.ns.create(f"{d.op}_{d.param}")
            if d.op != "inverse":
                self.names[sp.Symbol(key, real=True)] = local
            arrays[key] = self.params[d.param]      # sizes of inverse(S) are S's
        self.array_local = arrays
        for name, local in arrays.items():
            for axis in (0, 1):
                s = size_symbol(name, axis)
                self.names[s] = f"{local}.shape[{axis}]"
                self.pyscalars.add(s)
        for name, mv in {**self.program.vectors, **self.tangent_vectors}.items():
            self.names[mv.symbol] = self.params[name] = self.ns.create(name.lstrip("_"))
        self.accumulators = {}
        for name in list(self.program.vectors) + list(self.tangent_vectors):
            self.accumulator(Vector(VectorKind.MATVEC, name))
        stems = self.program.symbol_names
        self.derived = {s: e for k in self.entries for s, e in k.derived.items()}
        by_value = {}                    # one local per distinct parameter-only value
        for s, e in self.derived.items():
            if e not in by_value:
                by_value[e] = self.ns.create(s.name.lstrip("_").split("_")[0])
            self.names[s] = by_value[e]
        for k in self.entries:
            for st in k.body:
                alias = self.alias(st)
                for d in st.defines():
                    if isinstance(d, sp.Symbol) and d not in self.names:
                        self.names[d] = alias or self.ns.create(
                            stems.get(d) or d.name.lstrip("_").split("_")[0])
        sizes = {sym: 1 if sh is Shape.SCALAR else 2 if sh is Shape.BATCH else 3
                 for sym, sh in self.shapes.items()}
        sizes.update({sp.Symbol(p.name, real=True): 1 for p in self.parsed.params.values()
                      if p.rank == 0})
        # Integer context (slice bounds, layouts): n and sizes are Python ints.
        self.printer = TorchEnergyPrinter({"names": self.names, "sizes": sizes,
                                           "python_scalars": frozenset(self.pyscalars)})
        # Value context: n and sizes are float64 0-d tensors, so that 1/(n - 1) at
        # n = 1 is inf and log(n - 3) is nan, as torch computes, instead of a Python
        # exception; a 0-d tensor never changes the dtype of x's computation.
        self.as_float, vnames = {}, dict(self.names)
        for sym in self.pyscalars:
            local = self.ns.create("n_float" if sym == N else
                                   self.names[sym].replace(".shape[", "_size").rstrip("]"))
            self.as_float[local] = self.names[sym]
            vnames[sym] = local
            sizes[sym] = 1
        self.vprinter = TorchEnergyPrinter({"names": vnames, "sizes": sizes,
                                            "python_scalars": frozenset()})
        self.colnames = {(lv.id, var): f"_c{lv.id}_{var.name}"
                         for lv in self.program.levels for var in lv.all_vars}

    def alias(self, st):
        """The name a statement's value already has when printing it would only copy a
        reference: a load of a whole input or vector, a broadcast that is the identity."""
        if isinstance(st, LoadStmt) and st.load.addressing is Addressing.WHOLE:
            return self.base_local(st.load)
        if isinstance(st, Broadcast) and self.broadcast_code(st) == self.ref(st.source):
            return self.names.get(st.source)
        return None

    def code(self, expr) -> str:
        """An integer-context expression (bounds, sizes) as Python."""
        return self.printer.doprint(expr)

    def value(self, expr) -> str:
        """A value expression as torch code."""
        return self.vprinter.doprint(expr)

    def canon(self, e):
        return e.subs(self.program.size_subs) if self.program.size_subs else e

    @staticmethod
    def words(text: str) -> set:
        """The identifiers a piece of printed code uses (for its imports and locals)."""
        return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))

    # -- facts the printers share ------------------------------------------------------
    def points(self, lv) -> str:
        if lv.one_range:
            _, lo, hi = lv.clauses[0]
            return python_max(self, hi - lo, 0)
        return f'lay["P{lv.id}"]'

    def parent_points(self, lv) -> str:
        return "1" if lv.parent is None else self.points(lv.parent)

    def base_local(self, ld):
        if ld.tangent:
            return "v" if ld.kind is LoadKind.X else self.params[tangent_vector_name(ld.base)]
        if ld.kind is LoadKind.X:
            return "x"
        if ld.kind is LoadKind.DENSE:
            return self.accumulator(Vector(VectorKind.DENSE, ld.base))
        return self.params[ld.base]

    def accumulator(self, vector: Vector) -> str:
        """The local that holds the adjoint (or tangent, or diagonal) vector ``vector``."""
        if vector in _FIXED:
            return _FIXED[vector]
        name = self.accumulators.get(vector)
        if name is None:    # from the emitter's namespace: never a parameter's or a temporary's
            stem = (f"grad_{self.names[self.dense_roots[vector]]}"
                    if vector.kind is VectorKind.DENSE else f"adj_{self.params[vector.name]}")
            name = self.accumulators[vector] = self.ns.create(stem)
        return name

    def vector_length(self, vector: Vector) -> str:
        if vector.x_like:
            return "n"
        mv = self.program.vectors.get(vector.name) or self.tangent_vectors[vector.name]
        return self.code(mv.length)

    def base_size(self, ld) -> str:
        if ld.kind in (LoadKind.X, LoadKind.DENSE):
            return "n"
        if ld.kind is LoadKind.VECTOR:
            return self.code(self.program.vectors[ld.base].length)
        return f"{self.array_local[ld.base]}.shape[0]"

    def size_expr(self, ld):
        if ld.kind in (LoadKind.X, LoadKind.DENSE):
            return N
        if ld.kind is LoadKind.VECTOR:
            return self.program.vectors[ld.base].length
        d = self.parsed.derived.get(ld.base)
        return self.canon(size_symbol(d.param if d else ld.base, 0))

    def index_key(self, ld, k):
        return f"idx_{self.names[(ld.like or ld).symbol]}_{k}"

    def ref(self, e) -> str:
        return self.names[e] if e in self.names else self.value(e)

    def shape(self, e) -> Shape:
        return Shape.join(*[self.shapes.get(s, Shape.SCALAR) for s in e.free_symbols])

    def materialize(self, sym, lv, allow_point=False):
        """``sym`` as a ``[..., P]`` tensor (a ``[P]`` one too with ``allow_point``)."""
        code = self.ref(sym)
        if self.shape(sym) is Shape.BOTH or (allow_point and self.shape(sym) is Shape.POINT):
            return code
        return f"_rt_points({code}, {self.like(sym)}, {self.points(lv)})"

    def like(self, sym) -> str:
        """The input whose batch shape ``sym`` has: the tangent ``v`` or ``x``."""
        return "v" if sym in self.tangent else "x"

    def load_code(self, ld, lv) -> str:
        base = self.base_local(ld)
        pre = "" if ld.kind is LoadKind.PARAM else "..., "
        if ld.addressing is Addressing.ELEMENT:
            return f"{base}[{pre}{', '.join(self.code(i) for i in ld.indices)}]"
        if ld.addressing is Addressing.WHOLE:
            return base
        if ld.addressing is Addressing.SLICE:
            _, lo, hi = lv.clauses[0]
            return f"{base}[{pre}{self.code(lo + ld.offset)}:{self.stop(lo, hi, hi + ld.offset)}]"
        if ld.addressing is Addressing.STRIDED:
            return f"{base}[{pre}{self.strided_slice(ld, lv)}]"
        idx = ", ".join(f'lay["{self.index_key(ld, k)}"]' for k in range(len(ld.indices)))
        if pre and len(ld.indices) == 1:
            # one index tensor along the last axis: index_select, several times faster on
            # CPU than advanced indexing x[..., idx] (same values, autograd and vmap)
            return f"{base}.index_select(-1, {idx})"
        return f"{base}[{pre}{idx}]"

    def strided_slice(self, ld, lv) -> str:
        """``start:stop:k`` of a strided load ``base[k*i + c]`` over a one-range level;
        ``start::k`` when the level's loads tile the axis (the slice runs to its end)."""
        _, lo, hi = lv.clauses[0]
        k = ld.stride
        start = self.code(sp.expand(k * lo + ld.offset))
        if (ld.like or ld).base in lv.tiled:
            return f"{start}::{k}"
        return f"{start}:{self.stop(lo, hi, sp.expand(k * (hi - 1) + ld.offset + 1), start)}:{k}"

    def stop(self, lo, hi, stop, start=None) -> str:
        """A slice's stop for the points ``[lo, hi)``; ``max(stop, start)`` unless
        ``hi >= lo`` for every n >= 1: a negative stop would count from the end, and an
        empty range (``range(n - 11)`` at n = 10) must read nothing."""
        m = sp.Symbol("m", integer=True, nonnegative=True)
        if sp.expand(hi - lo).subs(N, m + 1).is_nonnegative:
            return self.code(stop)
        start = self.code(sp.expand(stop - hi + lo)) if start is None else start
        return f"max({self.code(stop)}, {start})"

    def broadcast_code(self, st) -> str:
        src, shape, lv = self.ref(st.source), self.shape(st.source), st.level
        if lv.parent is None:
            return f"{src}.unsqueeze(-1)" if shape.per_sample else src
        if shape is Shape.BATCH:        # a per-sample value, the same at every point
            return f"{src}.unsqueeze(-1)"
        # a value per point of the parent level
        return f'{src}.index_select(-1, lay["seg{lv.id}"])' if shape is not Shape.SCALAR else src

