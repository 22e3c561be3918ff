"""Where a NaN or inf first appears in a generated method: its statement and formula terms.

The generated methods are straight-line code, one assignment per line, each
group of lines under a comment naming the formula's terms it computes (the
line map: ``# level 0: ... : sum(cos(c*x[j]) ...)`` for the points of a sum,
``# per sample: <formula>`` for the per-sample lines outside every sum).
:func:`locate_nonfinite` runs one generated method under ``sys.settrace`` and,
after every line, checks the values that line assigned; the first one with a
NaN or inf is reported with the line, its code, and the comment above it.
"""

from __future__ import annotations

import linecache
import re
import sys
from dataclasses import dataclass

import torch

from ..errors import ArgumentError

#: public method -> (generated method, takes v, needs the second-order code)
METHODS = {
    "energy": ("_energy", False, False),
    "gradient": ("_gradient", False, False),
    "energy_and_gradient": ("_energy_and_gradient", False, False),
    "hessian_vector_product": ("_hessian_vector_product", True, True),
    "hessian_diagonal": ("_hessian_diagonal", False, True),
}

_TARGETS = re.compile(r"^\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:\[[^=]*\])?\s*[-+*/]?=(?!=)")


@dataclass(frozen=True)
class NonFinite:
    """The first generated statement whose value has a NaN or inf.

    Attributes:
        method: the public method run (``"gradient"``, ...).
        name: the local variable the statement assigned (``"x"``/``"v"`` for a
            non-finite input, a parameter's name for a non-finite parameter).
        line: the line number in the generated source (``energy.source``), or 0 for
            an input or parameter.
        statement: the line of generated code.
        terms: the comment above it: the formula's terms that statement computes.
        count: how many entries of the value are NaN or inf.
        nan: True if at least one of them is NaN (else they are all +-inf).
    """
    method: str
    name: str
    line: int
    statement: str
    terms: str
    count: int
    nan: bool

    def __str__(self) -> str:
        kind = "NaN" if self.nan else "inf"
        if not self.line:
            return f"{self.method}: the input {self.name} has {self.count} {kind} entries"
        return (f"{self.method}: first {kind} at line {self.line} of the generated code, "
                f"{self.statement!r} ({self.count} entries of {self.name}), computing {self.terms}")


def _bad(value):
    """``(count, any NaN)`` of a tensor's non-finite entries, or None when all are finite
    (or ``value`` is not a floating-point tensor)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return None
    return int((~finite).sum()), bool(torch.isnan(value).any())


def locate_nonfinite(energy, x, method="gradient", v=None):
    """Run ``energy``'s generated ``method`` on ``x`` and return a :class:`NonFinite` for
    the first input, parameter or statement whose value has a NaN or inf; None if the
    method's results are finite (a non-finite value in the branch of a ``where`` that
    is not taken is discarded by design). See ``CompiledEnergy.locate_nonfinite``."""
    if method not in METHODS:
        raise ArgumentError(f"method must be one of {', '.join(map(repr, METHODS))}, "
                         f"got {method!r}")
    name, takes_v, second = METHODS[method]
    if takes_v and v is None:
        raise ArgumentError(f"method={method!r} needs the direction v (v=..., shape of x)")
    if not takes_v and v is not None:
        raise ArgumentError(f"method={method!r} takes no direction v; pass v only with "
                         f"method='hessian_vector_product'")
    if method == "hessian_diagonal" and not energy.structured_hessian_diagonal:
        raise ArgumentError("this energy has no closed-form Hessian diagonal (it is computed "
                         "from Hessian-vector products); locate with "
                         "method='hessian_vector_product' instead")
    with torch.no_grad():
        x, lay, der = energy._inputs(x, second=second)
        inputs = [("x", x)]
        if takes_v:
            v = torch.as_tensor(v, dtype=x.dtype, device=x.device).expand_as(x)
            inputs.append(("v", v))
        for label, value in inputs:
            bad = _bad(value)
            if bad is not None:
                return NonFinite(method, label, 0, "", "", *bad)
        for key, value in (der or {}).items():
            bad = _bad(value)
            if bad is not None:
                return NonFinite(method, key, 0, "", "the parameter values", *bad)
        fn = getattr(energy, name)
        code = fn.__code__
        lines = linecache.getlines(code.co_filename)
        found, pending = [], []

        def check(frame):
            for target in pending:
                bad = _bad(frame.f_locals.get(target))
                if bad is not None and not found:
                    found.append((target, pending_line[0], bad))

        pending_line = [0]

        def local(frame, event, arg):
            if found:
                return None
            if event in ("line", "return"):
                check(frame)
                pending.clear()
                if event == "line":
                    text = lines[frame.f_lineno - 1] if frame.f_lineno <= len(lines) else ""
                    m = _TARGETS.match(text)
                    if m:
                        pending.extend(t.strip() for t in m.group(1).split(","))
                        pending_line[0] = frame.f_lineno
            return local

        def tracer(frame, event, arg):
            return local if frame.f_code is code else None

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            out = fn(x, v, lay, der) if takes_v else fn(x, lay, der)
        finally:
            sys.settrace(previous)
    results = (list(out.values()) if isinstance(out, dict) else
               list(out) if isinstance(out, tuple) else [out])
    if not found or all(_bad(r) is None for r in results):
        # finite results: a non-finite intermediate was discarded by a guard (the
        # branch of a where that is not taken, a collision's masked pair), by design
        return None
    target, line, bad = found[0]
    terms = ""
    for k in range(line - 2, -1, -1):       # the comment above: the line map
        text = lines[k].strip()
        if text.startswith("# level") or text.startswith("# per sample"):
            terms = text[2:]
            break
        if text.startswith("def "):
            break
    return NonFinite(method, target, line, lines[line - 1].strip(), terms, *bad)
