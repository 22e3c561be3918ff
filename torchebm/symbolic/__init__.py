"""torchebm.symbolic: compile energy formulas into torch modules with closed-form gradients.

Pipeline, one module per stage::

    parse.py        formula text -> SymPy (ast whitelist, never eval)
    rewrite.py      numerically stable rewrites (log1p, logsumexp, safe sqrt)
    lower.py        SymPy -> vectorised levels (slices, gathers, matvec): ir.Program
    derivatives.py  closed-form gradient by the chain rule over levels: ir.Kernel
    tangent.py      Hessian-vector products (forward over reverse)
    diagonal.py     the Hessian diagonal in closed form
    optimise.py     Kernel -> Kernel passes: CSE, copies, simplify, prune, liveness
    emit.py         prints the nn.Module (emit_adjoints.py: the scatters and parameter
                    adjoints; layout.py, names.py; printer.py: one expression)

    ir.py holds every type one stage hands another, frozen.
    load.py         source -> class, kept for tracebacks and .source

Public: :func:`from_expression`, :class:`EnergySyntaxError`, and the SymPy
vocabulary ``x``, ``n`` to declare an energy in SymPy directly.
"""

from ..errors import EnergySyntaxError
from .api import from_expression
from .functions import LogSumExp, Sigmoid, Softplus
from .symbols import N as n
from .symbols import X as x
from .symbols import index_symbol

def _expression(formula, ranks, particles=None):
    from .parse import parse_formula
    return parse_formula(formula, ranks, particles=particles).expression


def _register_hooks():
    from ..core.base import register_compiler_hook
    from .api import _rebuild_instance
    register_compiler_hook("expression", _expression)
    register_compiler_hook("rebuild", _rebuild_instance)


_register_hooks()

#: Integer index symbols for ``sympy.Sum(x[i]**2, (i, 0, n - 1))``.
i, j, k = (index_symbol(s) for s in "ijk")

__all__ = ["from_expression", "EnergySyntaxError", "x", "n", "i", "j", "k",
           "Sigmoid", "Softplus", "LogSumExp"]
