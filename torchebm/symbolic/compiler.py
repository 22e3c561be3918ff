"""The pipeline: parse -> rewrite -> lower -> derivatives -> tangent, diagonal ->
optimise -> (contract, for the batch-total parameter kernel) -> emit.

:func:`compile_spec` is the one place where the stages are chained; each
stage is a module of its own with one entry function, and the stages hand each
other only the frozen types of ``ir.py`` (a :class:`ir.Program`, then
:class:`ir.Kernel` s), never their own state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


import sympy as sp

from ..errors import EnergySyntaxError
from . import budget
from .contract import total_kernel
from .derivatives import (PARAMETER_SYMBOLS, ParameterAdjointUnsupported, parameter_adjoints,
                          reverse_mode)
from .diagonal import hessian_diagonal
from .emit import emit_module
from .ir import AdjointInfo, EnergySpec, GeneratedSource, Kernel
from .lower import lower
from .optimise import (cse, entry_points, hoist_parameters, liveness, propagate_copies, prune,
                       simplify)
from .parse import MAX_TREE, Parsed, _tree_size, parse_formula
from .rewrite import stabilize
from .symbols import N, size_symbol
from .tangent import jvp


@dataclass(frozen=True)
class Compiled:
    """One compile: the module's source and the kernels it was printed from."""
    generated: GeneratedSource
    parsed: Parsed
    kernel: Kernel                      # energy and gradient, after CSE
    spec: EnergySpec | None = None
    built: Kernel | None = None         # before CSE: what the second-order stages start from
    info: AdjointInfo | None = None     # what the reverse sweep learnt
    hvp: Kernel | None = None           # Hessian-vector product (None: first order only)
    diagonal: Kernel | None = None      # direct Hessian diagonal (None: not structured)
    entries: tuple = ()                 # one kernel per generated method
    program: object = None              # the lowered ir.Program (parameter kernels start there)

    @property
    def has_second_order(self) -> bool:
        return self.hvp is not None


def array_ranks(parsed: Parsed) -> dict:
    ranks = {name: p.rank for name, p in parsed.params.items()}
    ranks.update({key: 1 for key in parsed.constants})
    ranks.update({key: (2 if d.op == "inverse" else 0) for key, d in parsed.derived.items()})
    return ranks


def array_sizes(parsed: Parsed) -> dict:
    sizes = {}
    for name in list(parsed.params) + list(parsed.constants):
        sizes[name] = (size_symbol(name, 0), size_symbol(name, 1))
    for key, d in parsed.derived.items():
        sizes[key] = (size_symbol(d.param, 0), size_symbol(d.param, 1))
    return sizes


def unify_sizes(parsed: Parsed) -> dict:
    """Replace each size that is checked equal to ``n`` (or another size) by it.

    ``x - mu`` makes the layout check ``len(mu) == n`` at call time, so the
    code may then use ``n`` for ``len(mu)``: ranges line up and unit-stride
    slices become whole tensors.
    """
    subs = {}
    for a, b, _ in parsed.size_checks:
        a, b = a.subs(subs), b.subs(subs)
        for big, small in ((a, b), (b, a)):
            if big.is_Symbol and big != N and big not in subs and big not in small.free_symbols:
                subs[big] = small
                break
    return subs


def compile_parsed(spec: EnergySpec, parsed: Parsed, second_order: bool = True) -> Compiled:
    """Run the stages after parsing; ``second_order=False`` leaves the Hessian-vector
    product, the Hessian diagonal and the parameter gradients to
    :func:`with_second_order` (generated on first use)."""
    with budget.guard(spec.origin):
        return _compile_parsed(spec, parsed, second_order)


def _compile_parsed(spec, parsed, second_order):
    size = _tree_size(parsed.expression)
    if size > MAX_TREE:
        raise EnergySyntaxError(
            f"{spec.origin}: the formula expands to {size} terms (local definitions are "
            f"inlined); the limit is {MAX_TREE}. Simplify it, or use fewer nested definitions")
    subs = unify_sizes(parsed)
    expr = stabilize(parsed.expression.subs(subs) if subs else parsed.expression)
    sizes = {k: tuple(s.subs(subs) for s in v) for k, v in array_sizes(parsed).items()}
    # a declared positive-definite matrix, and its inverse, are symmetric
    spd = spec.positive_definite
    symmetric = frozenset(spd | {k for k, d in parsed.derived.items()
                                 if d.op == "inverse" and d.param in spd})
    equal = tuple((a.subs(subs), b.subs(subs)) for a, b, _ in parsed.size_checks)
    if spec.max_dim is not None and spec.max_dim == spec.min_dim:     # n is fixed
        equal += ((N, sp.Integer(spec.max_dim)),)
    program = lower(expr, array_ranks(parsed), sizes, subs, symmetric, equal)
    budget.check_work(budget.gradient_work(expr), budget.MAX_GRADIENT_WORK, "the gradient")
    built, info = reverse_mode(program)
    budget.check_statements(built.body, "the gradient", budget.MAX_GRADIENT_NODES)
    # the parameter kernels cost about as much as the gradient: they are built with
    # the second order (on first use, for a deferred from_expression compile)
    compiled = Compiled(None, parsed, optimised(built, parsed), spec, built, info,
                        program=program)
    if second_order:
        return with_second_order(compiled)
    entries = entry_points(compiled.kernel)
    return dataclasses.replace(compiled, generated=emit_module(spec, parsed, entries),
                               entries=entries)


def parameter_kernels(program, parsed: Parsed) -> tuple:
    """The closed-form parameter gradients, per sample and batch-summed
    (``derivatives.parameter_adjoints``), optimised like every kernel; ``()`` when the
    formula has no parameters, uses one where no closed form is built, or its sweep
    exceeds the gradient's statement budget (the runtime then differentiates the
    energy with ``torch.func``). Costs about as much compile time as the gradient."""
    arrays = {p.name for p in parsed.params.values() if p.rank > 0}
    arrays |= {k for k, d in parsed.derived.items() if d.op == "inverse"}
    scalars = {sp.Symbol(p.name, real=True): p.name for p in parsed.params.values()
               if p.rank == 0}
    scalars.update({sp.Symbol(k, real=True): k for k, d in parsed.derived.items()
                    if d.op != "inverse"})
    if not arrays and not scalars:
        return ()
    out, first = [], PARAMETER_SYMBOLS   # the summed kernel numbers after the per-sample one
    for summed, prefix in ((False, "_g"), (True, "_s")):
        try:
            kernel = parameter_adjoints(program, arrays, scalars, summed, first)
        except ParameterAdjointUnsupported:
            return ()
        if not kernel.outputs:
            return ()
        try:
            budget.check_statements(kernel.body, "the parameter gradient",
                                    budget.MAX_GRADIENT_NODES)
        except EnergySyntaxError:
            return ()       # a formula within the energy's budget still compiles
        kernel = optimised(kernel, parsed, prefix=prefix)
        first = kernel.next_symbol + 1
        out.append(liveness(prune(kernel)))
    # a loss linear in the energies needs only their weighted total: the products it
    # can contract over the batch first (contract.py); none for most formulas
    total = total_kernel(kernel)
    if total is not None:
        out.append(liveness(prune(propagate_copies(total))))
    return tuple(out)


def optimised(kernel: Kernel, parsed: Parsed, prefix: str = "_t") -> Kernel:
    """The passes every kernel gets: CSE, copy propagation, simplification, then the
    parameter-only values moved to ``_derive``."""
    params = {sp.Symbol(p.name, real=True) for p in parsed.params.values() if p.rank == 0}
    return hoist_parameters(simplify(propagate_copies(cse(kernel, prefix))), params)


def with_second_order(compiled: Compiled) -> Compiled:
    """Add the Hessian-vector product and Hessian diagonal to a first-order compile.

    Energy and gradient keep their own CSE; second-order entry points are pruned
    from a second kernel, the same statements with their tangents, optimised together.
    """
    if compiled.has_second_order:
        return compiled
    built = compiled.built
    with budget.guard(compiled.spec.origin):
        budget.check_work(budget.tangent_work(built.body), budget.MAX_TANGENT_WORK,
                          "the Hessian-vector product")
        # each stage numbers its new symbols after the previous one's: unique across kernels
        second = jvp(built.replace(next_symbol=compiled.kernel.next_symbol))
        budget.check_statements(second.body, "the Hessian-vector product")
        hvp = optimised(second, compiled.parsed, prefix="_u")
        diagonal = hessian_diagonal(built.replace(next_symbol=hvp.next_symbol), compiled.info)
        if diagonal is not None:
            budget.check_statements(diagonal.body, "the Hessian diagonal")
            diagonal = optimised(diagonal, compiled.parsed, prefix="_w")
        parameters = parameter_kernels(compiled.program, compiled.parsed)
        entries = entry_points(compiled.kernel, hvp, diagonal) + parameters
        generated = emit_module(compiled.spec, compiled.parsed, entries)
    return dataclasses.replace(compiled, generated=generated, hvp=hvp, diagonal=diagonal,
                               entries=entries)


def compile_spec(spec: EnergySpec, second_order: bool = True) -> Compiled:
    """Compile a declared energy (a definition file or a from_expression call).

    Raises:
        EnergySyntaxError: the formula is outside the language, or its work exceeds
            the compile budget (``budget.py``), or it nests too deeply.
    """
    ranks = {p.name: p.rank for p in spec.params}
    with budget.guard(spec.origin):
        parsed = parse_formula(spec.formula, ranks, spec.origin, particles=spec.particles)
        return compile_parsed(spec, parsed, second_order)
