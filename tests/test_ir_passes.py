"""The compiler's IR (``torchebm.symbolic.ir``) and its passes, one stage at a time.

Passes are pure functions ``Kernel -> Kernel``: each test builds a small kernel
by hand (or takes one from ``reverse_mode``), runs one pass, checks what the
pass promises by evaluating the statements, and checks the input is unchanged.
"""

import dataclasses

import pytest
import sympy as sp

from torchebm.symbolic.compiler import compile_spec, optimised, parameter_kernels
from torchebm.symbolic.derivatives import reverse_mode
from torchebm.symbolic.diagonal import hessian_diagonal
from torchebm.symbolic.emit import emit_module
from torchebm.symbolic.ir import (GRADIENT, HDIAG, HVP, Adjoint, Assign, EnergySpec, Free,
                                  Kernel, LoadKind, ParamDecl, Program, Reduce, Shape, Vector,
                                  VectorKind, frozen_map)
from torchebm.symbolic.optimise import (cse, entry_points, hoist_parameters, liveness,
                                        propagate_copies, prune, simplify)
from torchebm.symbolic.tangent import jvp

a, b, c, d, u, y = sp.symbols("a b c d u y", real=True)


def _kernel(body, outputs, shapes=None):
    program = Program(sp.S.Zero, (), (), frozen_map())
    return Kernel("k", ("x",), tuple(outputs), tuple(body), program, outputs[0],
                  frozen_map(shapes or {}))


def _run(kernel, inputs):
    """Evaluate a kernel of assignments on numbers: output symbol -> value."""
    env = dict(inputs)
    for st in kernel.body:
        env[st.target] = st.expr.xreplace(env)
    return {o: env[o] for o in kernel.outputs}


def _snapshot(kernel):
    return ([(type(st), st.defines(), st.uses()) for st in kernel.body], dict(kernel.shapes),
            kernel.outputs, kernel.next_symbol)


def test_ir_records_are_frozen():
    k = _kernel([Assign(None, c, a + b)], [c])
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.body = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.body[0].expr = a
    with pytest.raises(TypeError):
        k.shapes[c] = Shape.BATCH          # a read-only mapping
    assert isinstance(k.body, tuple)


def test_shape_join_is_the_lattice_of_batch_and_point():
    assert Shape.join() is Shape.SCALAR
    assert Shape.join(Shape.BATCH, Shape.POINT) is Shape.BOTH
    assert Shape.join(Shape.SCALAR, Shape.POINT) is Shape.POINT
    assert Shape.join(Shape.BATCH, Shape.SCALAR) is Shape.BATCH


def test_vector_keys_are_typed_and_tangents_are_named_by_rule():
    assert GRADIENT.tangent() == HVP
    mv = Vector(VectorKind.MATVEC, "_mv0")
    assert mv.tangent() == Vector(VectorKind.MATVEC, "_mv0_dot")
    assert not mv.x_like and GRADIENT.x_like and HDIAG.x_like
    assert Adjoint(GRADIENT) == Adjoint(Vector(VectorKind.GRADIENT))
    with pytest.raises(ValueError):
        HDIAG.tangent()


def test_cse_shares_a_subexpression_and_keeps_values():
    k = _kernel([Assign(None, c, sp.sin(a * b) + 1), Assign(None, d, sp.sin(a * b) ** 2)],
                [c, d], {a: Shape.BATCH})
    before = _snapshot(k)
    out = cse(k, prefix="_s")
    assert _snapshot(k) == before                      # the input is unchanged
    assert len(out.body) == 3                          # one temporary: sin(a*b)
    temp = out.body[0].target
    assert temp.name == "_s0" and out.body[0].expr == sp.sin(a * b)
    assert out.shapes[temp] is Shape.BATCH             # the temporary's shape is recorded
    point = {a: sp.Rational(3, 7), b: sp.Rational(-2, 5)}
    want = {c: sp.sin(-sp.Rational(6, 35)) + 1, d: sp.sin(-sp.Rational(6, 35)) ** 2}
    got = _run(out, point)
    assert all(sp.simplify(got[s] - want[s]) == 0 for s in want)


def test_prune_keeps_what_an_output_needs():
    k = _kernel([Assign(None, u, a + 1), Assign(None, c, u * 2), Assign(None, d, b * 3)],
                [c, d])
    before = _snapshot(k)
    only_c = prune(k, [c], "c_only")
    assert _snapshot(k) == before
    assert [st.target for st in only_c.body] == [u, c]
    assert only_c.outputs == (c,) and only_c.name == "c_only"
    assert [st.target for st in prune(k, [d]).body] == [d]


def test_propagate_copies_reads_the_source_and_renames_outputs():
    k = _kernel([Assign(None, u, a * b), Assign(None, c, u), Assign(None, d, c + 1)], [c, d])
    before = _snapshot(k)
    out = propagate_copies(k)
    assert _snapshot(k) == before
    assert [st.target for st in out.body] == [u, d]
    assert out.body[1].expr == u + 1 and out.outputs == (u, d)
    got = _run(out, {a: 3, b: 5})
    assert got == {u: 15, d: 16}


def test_liveness_frees_each_value_after_its_last_reader():
    k = _kernel([Assign(None, u, a * b), Assign(None, c, u + 1), Assign(None, y, c * 2),
                 Assign(None, d, y + a)], [d],
                {a: Shape.BATCH, u: Shape.BATCH, c: Shape.BATCH, y: Shape.BATCH,
                 d: Shape.BATCH})
    before = _snapshot(k)
    out = liveness(k)
    assert _snapshot(k) == before
    kinds = [(type(st).__name__, getattr(st, "target", None) or st.keys) for st in out.body]
    assert kinds == [("Assign", u), ("Assign", c), ("Free", (u,)), ("Assign", y),
                     ("Free", (c,)), ("Assign", d), ("Free", (y,))]   # never the output


def test_liveness_keeps_scalars_and_frees_a_reduction_with_its_source():
    k = _kernel([Assign(None, u, a * 2), Assign(None, c, u * b), Reduce(None, y, c, "sum_all"),
                 Assign(None, d, y + u)], [d],
                {u: Shape.SCALAR, b: Shape.BOTH, c: Shape.BOTH, y: Shape.BATCH,
                 d: Shape.BATCH})
    frees = [st.keys for st in liveness(k).body if isinstance(st, Free)]
    assert frees == [(c,), (y,)]            # u is a 0-d scalar: nothing worth freeing


def _spec(formula, params=()):
    return EnergySpec("IrCase", formula, tuple(params), summary="An IR test case.")


CASES = {
    "neighbours": ("sum(b*(x[i+1] - x[i]**2)**2 for i in range(n - 1))", [ParamDecl("b", 0, 1.0)]),
    "quadratic": ("0.5*(x - mu) @ A @ (x - mu)", [ParamDecl("mu", 1), ParamDecl("A", 2)]),
    "norm": ("norm(x) + x[0]*x[-1]", []),
}


def _stages(name):
    """A first-order compile: its pre-CSE kernel and adjoint info start the second order."""
    return compile_spec(_spec(*CASES[name]), second_order=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_stages_do_not_change_their_inputs(name):
    compiled = _stages(name)
    built, info = compiled.built, compiled.info
    before = _snapshot(built)
    hvp = jvp(built.replace(next_symbol=compiled.kernel.next_symbol))
    diagonal = hessian_diagonal(built.replace(next_symbol=hvp.next_symbol), info)
    cse(built)
    assert _snapshot(built) == before
    assert hvp.outputs == (Adjoint(HVP),) and hvp.inputs == ("x", "v")
    assert Adjoint(GRADIENT) in built.outputs
    if diagonal is not None:
        assert diagonal.outputs == (Adjoint(GRADIENT), Adjoint(HDIAG))
        # every symbol is defined once, across the kernels of one program
        defined = [s for k in (built, hvp, diagonal) for st in k.body for s in st.defines()
                   if isinstance(s, sp.Symbol) and st not in built.body]
        assert len(defined) == len(set(defined))


@pytest.mark.parametrize("name", sorted(CASES))
def test_free_stage_order_gives_the_same_source(name):
    """The tangent and the diagonal both start from the built kernel: computed in either
    order (each numbering its symbols where the compiler's order would), the module is
    the same, and equal to the compiler's own chaining."""
    compiled = _stages(name)
    built, info, parsed, spec = compiled.built, compiled.info, compiled.parsed, compiled.spec
    kernel = compiled.kernel
    second = jvp(built.replace(next_symbol=kernel.next_symbol))
    hvp = optimised(second, parsed, "_u")
    diag = hessian_diagonal(built.replace(next_symbol=hvp.next_symbol), info)
    # the other order: the diagonal first (told where the tangent's symbols end)
    diag_first = hessian_diagonal(built.replace(next_symbol=hvp.next_symbol), info)
    second_after = jvp(built.replace(next_symbol=kernel.next_symbol))
    hvp_after = optimised(second_after, parsed, "_u")
    # the parameter gradients are kernels of their own, printed after these (a
    # first-order compile leaves them to the second order, as it does the tangent)
    assert not any(k.name.startswith("parameter_gradient") for k in compiled.entries)
    params = parameter_kernels(compiled.program, parsed)
    one = emit_module(spec, parsed, entry_points(
        kernel, hvp, diag and optimised(diag, parsed, "_w")) + params).source
    two = emit_module(spec, parsed, entry_points(
        kernel, hvp_after, diag_first and optimised(diag_first, parsed, "_w")) + params).source
    assert one == two
    assert one == compile_spec(_spec(*CASES[name])).generated.source


def test_lower_resolves_addressing():
    compiled = _stages("neighbours")
    (level,) = compiled.built.program.levels
    kinds = {(ld.kind, ld.addressing.value, str(ld.offset)) for ld in level.loads}
    # x[i] over i in range(n - 1) is a slice from 0, x[i + 1] a slice from 1
    assert kinds == {(LoadKind.X, "slice", "0"), (LoadKind.X, "slice", "1")}


def test_reverse_mode_is_deterministic_and_pure():
    compiled = _stages("quadratic")
    program = compiled.built.program
    k1, _ = reverse_mode(program)
    k2, _ = reverse_mode(program)
    assert [repr(type(s)) + str(s.defines()) for s in k1.body] == \
        [repr(type(s)) + str(s.defines()) for s in k2.body]


def test_simplify_folds_scalings_and_drops_unit_factors():
    x0 = sp.Symbol("x0", real=True)
    k = _kernel([Assign(None, u, 2.0 * x0), Assign(None, c, 0.5 * u), Assign(None, d, c * y)],
                [d], {x0: Shape.BOTH, y: Shape.BOTH})
    before = _snapshot(k)
    out = simplify(k)
    assert _snapshot(k) == before
    # 0.5*(2.0*x0) is x0 exactly: d reads x0, and the copy c = x0 is gone
    assert [st.expr for st in out.body if st.target == d] == [x0 * y]
    assert c not in {st.target for st in out.body}


def test_hoist_parameters_moves_parameter_only_values_out_of_the_body():
    k = _kernel([Assign(None, u, 4 * a), Assign(None, c, 0.5 * a * b * y + u * y - b ** 2)],
                [c], {y: Shape.BOTH})
    out = hoist_parameters(k, {a, b})
    assert k.derived == {} and len(k.body) == 2                     # input unchanged
    assert [st.target for st in out.body] == [c]
    assert out.derived[u] == 4 * a
    values = {s: e for s, e in out.derived.items()}
    point = {a: sp.Rational(3), b: sp.Rational(5), y: sp.Rational(7)}
    got = out.body[0].expr.xreplace(values).xreplace(point)
    assert float(got) == 0.5 * 3 * 5 * 7 + 12 * 7 - 25
    # every body term reads at most one derived value per product
    assert all(len(t.free_symbols & values.keys()) <= 1
               for t in sp.Add.make_args(out.body[0].expr))


def test_the_gaussian_gradient_is_one_product():
    """A symmetric quadratic form's gradient: (x - mean) @ P, no scaling passes."""
    from pathlib import Path
    import torchebm.core._generated.gaussian as module
    source = Path(module.__file__).read_text()
    body = source.split("def _gradient(")[1].split("def ")[0]
    code = [ln.strip() for ln in body.splitlines()[2:] if ln.strip()
            and not ln.strip().startswith("#")]
    assert code == ['mean = der["mean"]', 'inverse_cov = der["inverse(cov)"]',
                    "h = x - mean", "mv0 = h @ inverse_cov", "del h", "grad = mv0",
                    "return grad"]
