"""The generated ``_layout`` and ``_derive`` methods: what depends only on sizes or parameters.

``_layout(n, device, dtype)`` holds the size checks (an out-of-range
``x[i + 1]`` is reported here, once per ``n``) and the index tensors of the
gathers, cached per ``n`` by the base class. ``_derive()`` holds parameter-only
values (``inverse(S)``, ``4*barrier_height``), cached per parameter value,
dtype and device. Both print from the lowered program; ``emit`` calls them.
"""

from __future__ import annotations

import textwrap

import sympy as sp

from . import gate
from .ir import Addressing, LoadKind
from .printer import TorchEnergyPrinter


#: addressings that are basic slices of their base (views; no index tensors)
_SLICES = (Addressing.SLICE, Addressing.WHOLE, Addressing.STRIDED)


def python_max(em, *args) -> str:
    """``max(...)`` of integer expressions, simplified first (``max(n, max(n, 0))`` is n)."""
    e = sp.Max(*args)
    if isinstance(e, sp.Max):
        return "max(" + ", ".join(em.code(a) for a in e.args) + ")"
    return em.code(e)


def describe(lv) -> str:
    """A comment line for a level: its range, where it lives, and the formula's terms."""
    ranges = ", ".join(f"{v.name} in range({lo}, {hi})" for v, lo, hi in lv.clauses)
    where = "per sample" if lv.parent is None else f"inside level {lv.parent.id}"
    terms = f": {'; '.join(lv.terms)}" if lv.terms else ""
    return f"level {lv.id}: {ranges} ({where}){terms}"


def what(ld, program) -> str:
    """The load as the user wrote it: ``x[(i + 1) % n]``."""
    if ld.kind is LoadKind.VECTOR:
        mv = program.vectors[ld.base]
        return f"row {ld.indices[0]} of the matrix-vector product with {mv.matrix}"
    base = "x" if ld.kind is LoadKind.X else ld.base
    return f"{base}[{', '.join(_index_text(i) for i in ld.indices)}]"


def _index_text(e) -> str:
    if isinstance(e, sp.Mod):
        m = e.args[1]
        mod = _index_text(m) if m.is_Atom else f"({_index_text(m)})"
        return f"({_index_text(e.args[0])}) % {mod}"
    if isinstance(e, sp.floor):
        num, den = e.args[0].as_numer_denom()
        return f"({num}) // {den}"
    return str(e)


def _size_checks(em):
    """The parser's size checks, each pair once (in either order)."""
    seen, lines = set(), []
    for a, b, msg in em.parsed.size_checks:
        key = frozenset((em.code(a), em.code(b)))
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"_rt.check_size({em.code(a)}, {em.code(b)}, "
                     f"{msg!r}.format(a={em.code(a)}, b={em.code(b)}))")
    return lines


def _range_check(em, ld, lv):
    """A slice's range check; none for a slice that is the whole axis or strided slices that
    tile it (in range for every n once the size checks passed)."""
    if ld.addressing is Addressing.WHOLE or (ld.addressing is Addressing.STRIDED
                                             and ld.base in lv.tiled):
        return []
    _, lo, hi = lv.clauses[0]
    first, end = lo + ld.offset, hi + ld.offset        # [first, end): the indices read
    if ld.addressing is Addressing.STRIDED:
        first, end = ld.stride * lo + ld.offset, ld.stride * (hi - 1) + ld.offset + 1
    return [f"_rt.check_range({em.code(sp.expand(first))}, {em.code(sp.expand(end))}, "
            f"{em.base_size(ld)}, {what(ld, em.program)!r}, n)"]


def _matvec_check(em, lv):
    mv = lv.matvec
    _, lo, hi = lv.clauses[0]
    d = em.parsed.derived.get(mv.matrix)
    base_name = d.param if d else mv.matrix
    axis = 1 if mv.row_major else 0
    full = em.canon(sp.Symbol(f"{base_name}.shape[{axis}]", integer=True, nonnegative=True))
    if sp.expand(lo + mv.offset) == 0 and sp.expand(hi + mv.offset - full) == 0:
        return []          # the whole axis: the size checks cover it
    size = f"{em.array_local[base_name]}.shape[{axis}]"
    return [f"_rt.check_range({em.code(lo + mv.offset)}, {em.code(hi + mv.offset)}, "
            f"{size}, {'the matrix-vector product with ' + mv.matrix!r}, n)"]


def _gathers(em, lv, lines):
    """Index tensors of a level that is not all slices: its points, segments, columns."""
    if lv.parent is None:
        lines.append("_count = 1")
        cols = {}
    else:
        lines.append(f'_count = lay["P{lv.parent.id}"]')
        cols = {v: em.colnames[(lv.parent.id, v)] for v in lv.parent.all_vars}
    colprinter = TorchEnergyPrinter({"names": {**em.names, **cols},
                                     "python_scalars": frozenset(em.pyscalars)})
    first = True
    for var, lo, hi in lv.clauses:
        colprinter.names = {**em.names, **cols}
        lines.append(f"_s, _j = _rt.expand(_count, {colprinter.doprint(lo)}, "
                     f"{colprinter.doprint(hi)}, device)")
        for v, c in cols.items():
            newc = em.colnames[(lv.id, v)]
            lines.append(f"{newc} = {c}[_s]")
            cols[v] = newc
        cols[var] = em.colnames[(lv.id, var)]
        lines.append(f"{cols[var]} = _j")
        if lv.parent is not None:   # the parent point of each point
            lines.append("_seg = _s" if first else "_seg = _seg[_s]")
        first = False
        lines.append("_count = _j.numel()")
    lines.append(f'lay["P{lv.id}"] = _count')
    if lv.parent is not None:
        lines.append(f'lay["seg{lv.id}"] = _seg')
        if lv.rectangular:   # points per parent point, also when there are none
            per = sp.Mul(*[sp.Max(hi - lo, 0) for _, lo, hi in lv.clauses])
            lines.append(f'lay["Q{lv.id}"] = {em.code(per)}')
    colprinter.names = {**em.names, **cols}
    for var, _ in lv.index_values:
        lines.append(f'lay["iv{lv.id}_{var.name}"] = {cols[var]}.to(dtype)')
    for ld in lv.loads:
        if ld.addressing in _SLICES:
            lines.extend(_range_check(em, ld, lv))
            continue
        for k, i in enumerate(ld.indices):
            size = em.base_size(ld) if ld.kind is not LoadKind.PARAM else \
                f"{em.array_local[ld.base]}.shape[{k}]"
            lines.append(f'lay["{em.index_key(ld, k)}"] = _rt.check_index('
                         f'_rt.as_index({colprinter.doprint(i)}, _count, device), '
                         f'{size}, {what(ld, em.program)!r}, n)')
    for st in em.coincident:
        if st.level is lv:
            ia = colprinter.doprint(st.load.indices[0])
            ic = colprinter.doprint(st.other.indices[0])
            lines.append(f"_ia = _rt.as_index({ia}, _count, device)")
            lines.append(f"_ic = _rt.as_index({ic}, _count, device)")
            lines.append(f'lay["{st.key}"] = torch.nonzero(_ia == _ic).flatten()')
            lines.append(f'lay["{st.key}_at"] = _ia[lay["{st.key}"]]')


def layout_method(em) -> str:
    """The ``_layout(n, device, dtype)`` method of the module ``em`` prints."""
    lines = _size_checks(em)
    spec = em.spec
    cls = gate.identifier(spec.class_name, "class name")
    if spec.min_dim and spec.min_dim == spec.max_dim:
        lo = gate.integer(spec.min_dim, "min_dim")
        lines.append(f"if n != {lo}:\n    raise ShapeError("
                     f"f\"{cls} needs x of dimension n = {lo}, got n = {{n}}\")")
    elif spec.min_dim:
        lo = gate.integer(spec.min_dim, "min_dim")
        lines.append(f"if n < {lo}:\n    raise ShapeError("
                     f"f\"{cls} needs x of dimension n >= {lo}, got n = {{n}}\")")
    if spec.max_dim is not None and spec.max_dim != spec.min_dim:
        hi = gate.integer(spec.max_dim, "max_dim")
        lines.append(f"if n > {hi}:\n    raise ShapeError("
                     f"f\"{cls} needs x of dimension n <= {hi}, got n = {{n}}\")")
    for ld in em.program.root_loads:
        for k, i in enumerate(ld.indices):
            size = "n" if ld.kind is LoadKind.X else f"{em.array_local[ld.base]}.shape[{k}]"
            lines.append(f"_rt.check_range({em.code(i)}, {em.code(i)} + 1, {size}, "
                         f"{what(ld, em.program)!r}, n)")

    def depth(lv):
        return 0 if lv.parent is None else 1 + depth(lv.parent)
    parents = {lv.parent.id for lv in em.program.levels if lv.parent is not None}
    for lv in sorted(em.program.levels, key=depth):
        level_lines = []
        if (lv.one_range and not lv.index_values and lv.id not in parents
                and all(ld.addressing in _SLICES for ld in lv.loads)):
            for ld in lv.loads:      # basic slices only: no index tensors
                level_lines.extend(_range_check(em, ld, lv))
        else:
            _gathers(em, lv, level_lines)
        if lv.matvec is not None:
            level_lines.extend(_matvec_check(em, lv))
        if level_lines:
            lines += [f"# {describe(lv)}"] + level_lines
    # the most points of any level: tangents of n directions at once (hessian) have
    # batch * n * width elements, which the base class checks against its limit
    slices = [sp.Max(lv.clauses[0][2] - lv.clauses[0][1], 0)
              for lv in em.program.levels if lv.one_range]
    gathered = [f'lay["P{lv.id}"]' for lv in em.program.levels if not lv.one_range]
    width = python_max(em, sp.Symbol("n", integer=True, nonnegative=True), *slices)
    if gathered:
        width = f"max({', '.join([width] + gathered)})"
    lines.append(f'lay["width"] = {width}')
    if getattr(em, "n_float", False):      # n in values: a float64 0-d tensor (names.py)
        lines.append('lay["n_float"] = torch.tensor(n, dtype=torch.float64, device=device)')
    arrays = [f"{local} = self.{local}" for name, local in em.params.items()
              if (name in em.parsed.constants or (name in em.parsed.params
                                                  and em.parsed.params[name].rank > 0))]
    body = "\n".join(["lay = {}"] + arrays + lines + ["return lay"])
    used = em.words(body)
    body = "\n".join(["lay = {}"] + [a for a in arrays if a.split(" ")[0] in used] + lines
                     + ["return lay"])
    return ("    def _layout(self, n, device, dtype):\n"
            "        \"\"\"Index tensors and size checks for dimension n (cached per n).\"\"\"\n"
            + textwrap.indent(body, " " * 8) + "\n")


def derive_method(em) -> str:
    """The ``_derive()`` method, or '' when there is nothing to derive: parameter-only
    values (linear algebra, the parameters themselves and products of them), which the
    runtime computes once per parameter value and casts to x's dtype and device."""
    def call(d):
        # a positive-definite matrix is read as its symmetric part (see names.py) and
        # inverted through its Cholesky factor (inverse_spd); a general one by LU, whose
        # gradient holds at every value, symmetric ones included
        local = f"self.{em.params[d.param]}"
        if d.param not in em.spd_params:
            return f"_rt.{d.op}({local})"
        op = "inverse_spd" if d.op == "inverse" else d.op
        return f"_rt.{op}(_rt.symmetric({local}))"
    items = [f'"{key}": {call(d)},' for key, d in em.parsed.derived.items()]
    items += [f'"{key}": {code},' for key, code in sorted(em.derived_values.items())]
    if not items:
        return ""
    return ("    def _derive(self):\n"
            "        \"\"\"Parameter-only quantities, recomputed when a parameter changes.\"\"\"\n"
            "        return {\n" + textwrap.indent("\n".join(items), " " * 12) + "\n        }\n")
