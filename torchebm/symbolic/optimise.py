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

from .ir import Assign, Kernel, Shape, frozen_map


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
