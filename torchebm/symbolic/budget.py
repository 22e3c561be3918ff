"""The compile budget: how much work one formula may ask of the compiler.

A formula of a few hundred characters can describe an expression too large
to differentiate in reasonable time (a product of a hundred factors, a
definition squared thirty times). The stages count the nodes of what they
build (not wall time, which depends on the machine) and stop with an
:class:`EnergySyntaxError` naming the stage and the sizes:

* the expanded energy: ``parse.MAX_TREE`` nodes;
* before differentiating, the product rule's work (:func:`gradient_work`): a
  product of k factors that depend on x has k partials of k - 1 factors each;
* the gradient's statements: :data:`MAX_GRADIENT_NODES` nodes;
* before the Hessian-vector product, the tangent's work (:func:`tangent_work`),
  and after it, and after the Hessian diagonal, :data:`MAX_NODES` nodes.

The limits sit 30 to 60 times above the largest formula of the test corpus
(literature energies, the built-ins). A product of 40 written-out factors
compiles its energy and gradient in under a second but its Hessian-vector
product is refused (at first use); one of 45 factors is refused at once.

Deep nesting that overflows Python's stack anywhere in the pipeline (SymPy
recurses on the expression tree) is reported the same way by :func:`guard`.
"""

from __future__ import annotations

import contextlib
import dataclasses

import sympy as sp

from ..errors import EnergySyntaxError
from .parse import _tree_size

#: Most expression nodes (counted as trees) in the statements of a second-order stage.
MAX_NODES = 200_000
#: Most nodes in the gradient's statements.
MAX_GRADIENT_NODES = 20_000
#: Most product-rule work (see gradient_work) in the energy.
MAX_GRADIENT_WORK = 10_000
#: Most tangent work (see tangent_work) in the gradient's statements.
MAX_TANGENT_WORK = 300_000

_ADVICE = ("write repeated factors as a reduction (prod(x[i % 3] + i for i in range(100)) "
           "instead of 100 written-out factors) or split the energy into smaller ones")


def gradient_work(expr) -> int:
    """Nodes the product rule will write: for each product of k > 1 factors that
    depend on x, k times its size as a tree."""
    from .symbols import depends_on_x
    total, memo = 0, {}
    for node in sp.postorder_traversal(expr):
        if node.is_Mul:
            k = sum(1 for a in node.args if depends_on_x(a))
            if k > 1:
                total += k * _tree_size(node, memo)
    return total


def _without_guard_conditions(expr):
    """``Guard(v, selected)`` counted as ``v``: forward mode differentiates ``v`` only,
    and the condition (one per ``where``, repeated in each guarded input) is shared."""
    from .functions import Guard
    if not expr.has(Guard):
        return expr
    return expr.replace(lambda e: isinstance(e, Guard), lambda e: e.args[0])


def tangent_work(statements) -> int:
    """Nodes forward mode will differentiate: each assignment's size times the number
    of symbol occurrences in it (each occurrence is a term of its tangent); the
    conditions of guarded ``where`` inputs are not differentiated and not counted."""
    total = 0
    for st in statements:
        expr = getattr(st, "expr", None)
        if isinstance(expr, sp.Basic) and expr.args:
            expr = _without_guard_conditions(expr)
            occurrences = sum(1 for a in sp.preorder_traversal(expr) if a.is_Symbol)
            total += _tree_size(expr, {}) * occurrences
    return total


def check_work(work: int, limit: int, what: str) -> None:
    if work > limit:
        raise EnergySyntaxError(
            f"{what} of this formula would write about {work} expression nodes; the compile "
            f"budget is {limit}. The formula is too large to differentiate in closed form: "
            f"{_ADVICE}")


def statement_nodes(statements) -> int:
    """Expression nodes held by a list of statements (each SymPy field, as a tree)."""
    memo: dict = {}
    total = 0
    for st in statements:
        for f in dataclasses.fields(st):
            value = getattr(st, f.name)
            if isinstance(value, sp.Basic):
                total += _tree_size(value, memo)
    return total


def check_statements(statements, what: str, limit: int | None = None) -> None:
    """Raise when ``statements`` hold more than ``limit`` (default MAX_NODES) nodes."""
    limit = MAX_NODES if limit is None else limit
    size = statement_nodes(statements)
    if size > limit:
        raise EnergySyntaxError(
            f"{what} of this formula has {size} expression nodes; the compile budget is "
            f"{limit}. The formula is too large to differentiate in closed form: {_ADVICE}")


@contextlib.contextmanager
def guard(origin: str = "<formula>"):
    """Turn a stack overflow inside the compiler into an EnergySyntaxError."""
    try:
        yield
    except RecursionError:
        raise EnergySyntaxError(
            f"{origin}: the formula is nested too deeply for the compiler (Python's recursion "
            f"limit was reached); flatten it, e.g. with local definitions") from None
