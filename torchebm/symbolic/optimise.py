"""Stage 4, optimise: share work (CSE) and drop what an entry point does not need.

CSE runs once over the whole statement list, per run of elementwise
assignments of one level (values of one shape), so energy, partials and
gradient terms of a level share their subexpressions. Each entry point
(``forward``, ``gradient``, ``energy_and_gradient``) is then the same list
with dead statements removed, which makes ``energy_and_gradient`` equal to
``forward`` and ``gradient`` bit for bit: they run the same arithmetic.
"""

from __future__ import annotations

import sympy as sp

from .derivatives import Assign, Statements, join


def cse(statements: Statements) -> Statements:
    """Common-subexpression elimination over each run of same-level assignments."""
    out, run = [], []
    names = sp.numbered_symbols("_t", real=True)

    def flush():
        if not run:
            return
        exprs = [a.expr for a in run]
        temps, reduced = sp.cse(exprs, symbols=names, optimizations=None)
        level = run[0].level
        for t, e in temps:
            statements.shapes[t] = join(*[statements.shapes.get(s, "scalar")
                                          for s in e.free_symbols])
            out.append(Assign(level, t, e))
        for a, e in zip(run, reduced):
            out.append(Assign(level, a.target, e))
        run.clear()

    for st in statements.body:
        if isinstance(st, Assign) and (not run or run[0].level is st.level):
            run.append(st)
            continue
        flush()
        if isinstance(st, Assign):
            run.append(st)
        else:
            out.append(st)
    flush()
    return Statements(out, statements.energy, statements.shapes, statements.program)


def prune(body: list, outputs) -> list:
    """Keep only the statements that the outputs depend on (dead-code elimination)."""
    needed = set(outputs)
    kept = []
    for st in reversed(body):
        if any(d in needed for d in st.defines()):
            kept.append(st)
            needed.update(st.uses())
    kept.reverse()
    return kept
