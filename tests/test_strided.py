"""Strided addressing: ``x[k*i + c]`` with a constant stride is a basic slice (a view).

``lower`` decides it (``Addressing.STRIDED``); when the strided loads of a
level tile x (``x[2*i]``, ``x[2*i + 1]`` over ``i in range(n // 2)`` with n
checked even) the gradient is the contributions interleaved
(``torch.stack(..., -1).flatten(-2)``), else zeros with the slices written in.
Values are checked against autograd of independent plain-torch formulas, at
even and odd n (where the strides do not tile x).
"""

import pytest
import sympy as sp
import torch

from torchebm.symbolic import from_expression
from torchebm.symbolic.compiler import array_ranks, array_sizes
from torchebm.symbolic.ir import Addressing
from torchebm.symbolic.lower import lower
from torchebm.symbolic.parse import parse_formula


def _program(formula, particles=None):
    parsed = parse_formula(formula, particles=particles)
    equal = tuple((a, b) for a, b, _ in parsed.size_checks)
    return lower(parsed.expression, array_ranks(parsed), array_sizes(parsed),
                 equal_sizes=equal)


def _loads(program):
    return {str(ld.indices[0]): ld for lv in program.levels for ld in lv.loads}


# -- lowering: the addressing --------------------------------------------------------------
def test_an_affine_index_with_a_constant_stride_is_a_strided_load():
    loads = _loads(_program("sum(x[2*i]*x[2*i + 1] for i in range(n // 2))"))
    assert {k: (ld.addressing, ld.stride, ld.offset) for k, ld in loads.items()} == {
        "2*i": (Addressing.STRIDED, 2, 0), "2*i + 1": (Addressing.STRIDED, 2, 1)}


def test_strided_loads_tile_x_only_when_a_size_check_makes_n_a_multiple_of_the_stride():
    free = _program("sum(x[2*i]*x[2*i + 1] for i in range(n // 2))")
    assert free.levels[0].tiled == frozenset()          # n may be odd: x[n - 1] unread
    particles = _program("sum(x[i, 0]*x[i, 1] for i in range(N))", particles=2)
    assert particles.levels[0].tiled == frozenset({"x"})
    one_offset = _program("sum(x[i, 0]**2 for i in range(N))", particles=2)
    assert one_offset.levels[0].tiled == frozenset()    # x[2*i + 1] is never read


def test_mixed_strides_of_one_base_stay_gathers():
    loads = _loads(_program("sum(x[i]*x[2*i] for i in range(n // 2))"))
    assert loads["2*i"].addressing is Addressing.GATHER
    assert loads["i"].addressing is Addressing.SLICE


# -- printed code ------------------------------------------------------------------------------
def test_tiling_strided_loads_print_as_views_and_an_interleaved_gradient():
    src = from_expression("sum(x[i, 0]**4 + x[i, 0]*x[i, 1] for i in range(N))",
                          particles=2).source
    grad = src[src.index("def _gradient("):src.index("def _energy_and_gradient(")]
    assert "x[..., 0::2]" in grad and "x[..., 1::2]" in grad
    assert "grad = torch.stack([" in grad and ".flatten(-2)" in grad
    assert "zeros_like" not in grad
    assert "index_add" not in src and 'lay["idx' not in src
    # the Hessian diagonal is 0 at x[2*i + 1]: zeros there, the x[2*i] slice written in
    diag = src[src.index("def _hessian_diagonal("):
               src.index("def _gradient_and_hessian_diagonal(")]
    assert "hdiag = torch.zeros_like(x)" in diag and "hdiag[..., 0::2] = " in diag


def test_strided_loads_that_do_not_tile_write_their_slices_into_zeros():
    src = from_expression("sum(x[2*i]*x[2*i + 1]**2 for i in range(n // 2))").source
    grad = src[src.index("def _gradient("):src.index("def _energy_and_gradient(")]
    assert "grad = torch.zeros_like(x)" in grad
    assert "grad[..., 1:2*((n) // (2)):2] = " in grad
    assert "grad[..., 0:2*((n) // (2)) - 1:2] += " in grad
    assert "index_add" not in src and 'lay["idx' not in src


# -- values against autograd of independent formulas ---------------------------------------------
def _pairs(x):                       # sum over i < n // 2 of x[2i] x[2i+1]^2 + sin(x[2i])
    m = x.shape[-1] // 2
    a, b = x[..., 0:2 * m:2], x[..., 1:2 * m:2]
    return (a * b ** 2 + torch.sin(a)).sum(-1)


def _triples(x):                     # sum over i < (n - 2) // 3 of (x[3i+2] - x[3i])^2 e^-x[3i+1]
    total = x.new_zeros(x.shape[:-1])
    for i in range((x.shape[-1] - 2) // 3):
        total = total + (x[..., 3 * i + 2] - x[..., 3 * i]) ** 2 * torch.exp(-x[..., 3 * i + 1])
    return total


def _wells(x):                       # particles of 2: y^4 - 6 y^2 - 0.5 y + 0.5 z^2 + y z
    y, z = x[..., 0::2], x[..., 1::2]
    return (y ** 4 - 6 * y ** 2 - 0.5 * y + 0.5 * z ** 2 + y * z).sum(-1)


def _mixed(x):                       # a whole-x term and a strided one: sum exp(x) + x[2i]^2
    return torch.exp(x).sum(-1) + (x[..., 0:2 * (x.shape[-1] // 2):2] ** 2).sum(-1)


def _stride_and_unit(x):             # mixed strides of x: x[i] x[2i] over i < n // 2
    m = x.shape[-1] // 2
    return (x[..., :m] * x[..., 0:2 * m:2]).sum(-1)


CASES = {
    "pairs": ("sum(x[2*i]*x[2*i + 1]**2 + sin(x[2*i]) for i in range(n // 2))", None, _pairs),
    "triples": ("sum((x[3*i + 2] - x[3*i])**2*exp(-x[3*i + 1]) for i in range((n - 2) // 3))",
                None, _triples),
    "wells": ("sum(x[i, 0]**4 - 6*x[i, 0]**2 - 0.5*x[i, 0] + 0.5*x[i, 1]**2 + x[i, 0]*x[i, 1] "
              "for i in range(N))", 2, _wells),
    "mixed": ("sum(exp(x)) + sum(x[2*i]**2 for i in range(n // 2))", None, _mixed),
    "stride_and_unit": ("sum(x[i]*x[2*i] for i in range(n // 2))", None, _stride_and_unit),
}


def _reference(fn, x, v):
    xg = x.clone().requires_grad_(True)
    e = fn(xg) + 0 * (xg * xg).sum(-1)     # attached also where the formula has no terms

    def grad(out, **kw):
        return torch.autograd.grad(out, xg, materialize_grads=True, **kw)[0]
    g = grad(e.sum(), create_graph=True)
    hvp = grad((g * v).sum(), retain_graph=True)
    diag = torch.stack([grad(g[..., i].sum(), retain_graph=True)[..., i]
                        for i in range(x.shape[-1])], -1)
    return e.detach(), g.detach(), hvp, diag


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 12])
def test_strided_energies_match_autograd_of_an_independent_formula(name, n):
    formula, particles, fn = CASES[name]
    if particles and n % particles:
        pytest.skip("x must be whole particles")
    energy = from_expression(formula, particles=particles) if particles else \
        from_expression(formula)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, dtype=torch.float64, generator=gen)
    v = torch.randn(5, n, dtype=torch.float64, generator=gen)
    e, g, hvp, diag = _reference(fn, x, v)
    torch.testing.assert_close(energy(x), e)
    torch.testing.assert_close(energy.gradient(x), g)
    torch.testing.assert_close(energy.energy_and_gradient(x)[1], g)
    torch.testing.assert_close(energy.hessian_vector_product(x, v), hvp)
    torch.testing.assert_close(energy.hessian_diagonal(x), diag)


@pytest.mark.parametrize("name", ["pairs", "mixed", "wells"])
def test_gradient_with_create_graph_differentiates_again(name):
    """The slices written in place keep autograd right: the gradient of <grad, v> is H v."""
    formula, particles, fn = CASES[name]
    energy = from_expression(formula, particles=particles) if particles else \
        from_expression(formula)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 8, dtype=torch.float64, generator=gen)
    v = torch.randn(4, 8, dtype=torch.float64, generator=gen)
    xg = x.clone().requires_grad_(True)
    g = energy.gradient(xg, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xg)
    torch.testing.assert_close(hv, _reference(fn, x, v)[2])
    # and through torch.func, which keeps the graph inside its transforms
    jac = torch.func.jacrev(lambda z: energy.gradient(z.unsqueeze(0)).squeeze(0))(x[0])
    torch.testing.assert_close(jac @ v[0], _reference(fn, x, v)[2][0])


def test_an_empty_range_reads_nothing_from_a_slice_or_a_strided_slice():
    """``range(n - 11)`` at n = 10 has no points: no stop may count from the end of x."""
    x = torch.randn(3, 10, dtype=torch.float64)
    for formula in ("sum(x[i]**2 for i in range(n - 11))",
                    "sum(x[2*i]**2 for i in range(n - 11))",
                    "sum(x[i + 1]**2 for i in range(n - 11))"):
        energy = from_expression(formula)
        torch.testing.assert_close(energy(x), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(energy.gradient(x), torch.zeros_like(x))


def test_a_strided_load_out_of_range_is_a_shape_error_naming_it():
    from torchebm.errors import ShapeError
    energy = from_expression("sum(x[2*i + 1]**2 for i in range(n - 3))")
    with pytest.raises(ShapeError, match=r"x\[2\*i \+ 1\] reads index"):
        energy(torch.randn(2, 10))


def test_sympy_offsets_of_strided_loads_are_exact_integers():
    ld = _loads(_program("sum(x[3*i + 2] for i in range(n // 3))"))["3*i + 2"]
    assert ld.stride == 3 and ld.offset == sp.Integer(2)


# -- the printer, one statement at a time --------------------------------------------------------
@pytest.fixture(scope="module")
def emitter():
    from torchebm.symbolic.compiler import compile_spec
    from torchebm.symbolic.emit import ModuleEmitter
    from torchebm.symbolic.ir import EnergySpec
    spec = EnergySpec("StridedCase", "sum(x[2*i]*x[2*i + 1]**2 for i in range(n // 2))", (),
                      summary="A printer test case.")
    compiled = compile_spec(spec)
    em = ModuleEmitter(spec, compiled.parsed, compiled.entries)
    em.body, em.position = (), 0
    (lv,) = compiled.kernel.program.levels
    return em, lv


def test_strided_accumulations_print_zeros_then_slices_in_place_while_the_memory_is_ours(
        emitter):
    from torchebm.symbolic.ir import GRADIENT, Accumulate, Shape
    em, lv = emitter
    g = sp.Symbol("_g_print", real=True)
    em.names[g] = em.vprinter.names[g] = "g"
    em.shapes[g] = Shape.BOTH
    even, odd = sorted(lv.loads, key=lambda ld: ld.offset)
    em.initialised, em.owned = set(), set()
    assert em._emit_Accumulate(Accumulate(lv, GRADIENT, even, g)) == [
        "grad = torch.zeros_like(x)", "grad[..., 0:2*((n) // (2)) - 1:2] = g"]
    assert em._emit_Accumulate(Accumulate(lv, GRADIENT, odd, g)) == [
        "grad[..., 1:2*((n) // (2)):2] += g"]
    em.owned = set()      # read by another statement (perhaps saved for backward): a copy
    assert em._emit_Accumulate(Accumulate(lv, GRADIENT, odd, g)) == [
        "grad = grad.slice_scatter(grad[..., 1:2*((n) // (2)):2] + g, -1, 1, "
        "2*((n) // (2)), 2)"]


def test_an_interleave_prints_one_stack(emitter):
    from torchebm.symbolic.ir import GRADIENT, Interleave, Shape
    em, lv = emitter
    a, b = sp.Symbol("_a_print", real=True), sp.Symbol("_b_print", real=True)
    for s, name in ((a, "a"), (b, "b")):
        em.names[s] = em.vprinter.names[s] = name
        em.shapes[s] = Shape.BOTH
    em.initialised = set()
    assert em._emit_Interleave(Interleave(lv, GRADIENT, (a, b))) == [
        "grad = torch.stack([a, b], -1).flatten(-2)"]
    assert "grad" in em.initialised


# -- per-sample values into every entry of a fixed n ----------------------------------------------
def _fixed(formula, dim):
    from torchebm.symbolic.compiler import compile_spec
    from torchebm.symbolic.ir import EnergySpec
    from torchebm.symbolic.load import load_class
    spec = EnergySpec("FixedCase", formula, (), summary="A fixed-dimension case.",
                      min_dim=dim or 0, max_dim=dim)
    compiled = compile_spec(spec)
    return compiled.generated.source, load_class(compiled.generated)()


def test_a_gradient_into_each_entry_of_a_fixed_n_is_one_stack():
    formula = "x[0]*x[1]**2 + sin(x[2])*x[0] + exp(x[1] - x[2])"
    src, energy = _fixed(formula, 3)
    grad = src[src.index("def _gradient("):src.index("def _energy_and_gradient(")]
    assert "grad = torch.stack([" in grad and "zeros_like" not in grad
    unfixed, _ = _fixed(formula, None)               # n not fixed: x[3:] gets zeros
    grad = unfixed[unfixed.index("def _gradient("):unfixed.index("def _energy_and_gradient(")]
    assert "torch.stack" not in grad and "grad = torch.zeros_like(x)" in grad

    def reference(x):
        return x[..., 0] * x[..., 1] ** 2 + torch.sin(x[..., 2]) * x[..., 0] + \
            torch.exp(x[..., 1] - x[..., 2])
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    v = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    e, g, hvp, diag = _reference(reference, x, v)
    torch.testing.assert_close(energy.gradient(x), g)
    torch.testing.assert_close(energy.energy_and_gradient(x)[0], e)
    torch.testing.assert_close(energy.hessian_vector_product(x, v), hvp)
    torch.testing.assert_close(energy.hessian_diagonal(x), diag)
