"""Rewrites that make generated code cheaper (issue #18), each checked for what it
promises in the IR or the printed source, and for values against autograd of an
independent plain-torch formula (float64)."""

import math

import pytest
import sympy as sp
import torch

from torchebm.core import _runtime as _rt
from torchebm.symbolic import from_expression
from torchebm.symbolic.ir import Assign, Kernel, Program, Shape, frozen_map
from torchebm.symbolic.optimise import simplify
from torchebm.symbolic.printer import TorchEnergyPrinter

x0, x1, t, u, e, g = sp.symbols("x0 x1 t u e g", real=True)


def _kernel(body, outputs, shapes):
    program = Program(sp.S.Zero, (), (), frozen_map())
    return Kernel("k", ("x",), tuple(outputs), tuple(body), program, outputs[0],
                  frozen_map(shapes))


def _values(kernel, point):
    env = dict(point)
    for st in kernel.body:
        env[st.target] = st.expr.xreplace(env)
    return {o: env[o] for o in kernel.outputs}


SHAPES = {x0: Shape.BATCH, x1: Shape.BATCH, u: Shape.BATCH}


def test_a_multiple_of_an_earlier_sum_reads_that_sum():
    # t = x0 + x1**2 - 7 is read by the energy; the chain rule's 2*t + 4*u*x0 arrives
    # expanded (SymPy distributes 2 over the sum) and is folded back to 2*t + 4*u*x0
    body = [Assign(None, t, x0 + x1 ** 2 - 7), Assign(None, e, t ** 2),
            Assign(None, g, 2 * x0 + 2 * x1 ** 2 + 4 * u * x0 - 14)]
    k = _kernel(body, [e, g], SHAPES)
    out = simplify(k)
    assert [st.expr for st in out.body if st.target == g] == [2 * t + 4 * u * x0]
    assert k.body[2].expr == 2 * x0 + 2 * x1 ** 2 + 4 * u * x0 - 14     # input unchanged
    point = {x0: sp.Rational(3), x1: sp.Rational(-5, 2), u: sp.Rational(7)}
    # by hand: t = 3 + 6.25 - 7 = 2.25; g = 4.5 + 84 = 88.5
    assert _values(out, point)[g] == sp.Rational(177, 2)


@pytest.mark.parametrize("g_expr, why", [
    (2 * x0 + 2 * x1 ** 2 + 4 * u * x0 - 13, "the constant is not the same multiple"),
    (2 * x0 + 3 * x1 ** 2 - 14, "the terms are not one multiple of the sum's"),
    (2 * x0 + 4 * u * x0 - 14, "a term of the sum is missing"),
])
def test_a_sum_is_not_read_where_it_does_not_match(g_expr, why):
    body = [Assign(None, t, x0 + x1 ** 2 - 7), Assign(None, e, t ** 2), Assign(None, g, g_expr)]
    out = simplify(_kernel(body, [e, g], SHAPES))
    assert t not in [st.expr for st in out.body if st.target == g][0].free_symbols, why


def test_a_sum_nothing_reads_is_not_revived():
    # t is dead (an earlier pass folded it into its one reader): reading it again would
    # add its passes back to the entry point
    body = [Assign(None, t, x0 + x1 ** 2 - 7), Assign(None, g, 2 * x0 + 2 * x1 ** 2 - 14)]
    out = simplify(_kernel(body, [g], SHAPES))
    assert [st.expr for st in out.body if st.target == g] == [2 * x0 + 2 * x1 ** 2 - 14]


FACTORED = "(x[0]**2 + x[1] - 11)**2 + (x[0] + x[1]**2 - 7)**2 + 3*(x[0]*x[1] + x[1] - 2)**2"


def _independent(x):
    a = x[..., 0] ** 2 + x[..., 1] - 11
    b = x[..., 0] + x[..., 1] ** 2 - 7
    c = x[..., 0] * x[..., 1] + x[..., 1] - 2
    return a ** 2 + b ** 2 + 3 * c ** 2


def test_factored_gradient_matches_autograd_of_an_independent_formula():
    energy = from_expression(FACTORED)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_independent(xr).sum(), xr)
    torch.testing.assert_close(energy.gradient(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(energy(x), _independent(x), rtol=1e-13, atol=0)
    # the gradient reads the forward's sums, times a number, instead of re-expanding them
    body = energy.source.split("def _gradient(")[1].split("def ")[0]
    assert "- 14" not in body and "- 22" not in body, body


def test_where_beside_a_tensor_prints_a_python_number():
    p = TorchEnergyPrinter({"names": {x0: "x"}, "sizes": {x0: 3}})
    cond = sp.Gt(x0, 0)
    assert p.doprint(sp.Piecewise((x0, cond), (0, True))) == "torch.where((x > 0), x, 0)"
    assert p.doprint(sp.Piecewise((x0, cond), (sp.oo, True))) == \
        "torch.where((x > 0), x, math.inf)"
    # no tensor branch: a 0-d tensor of x's dtype sets the dtype
    assert p.doprint(sp.Piecewise((1, cond), (0, True))) == \
        "torch.where((x > 0), x.new_tensor(1), x.new_tensor(0))"
    # a number float16 cannot hold stays a tensor (torch refuses it as a Python number)
    assert "x.new_tensor(1000000)" in p.doprint(sp.Piecewise((x0, cond), (10 ** 6, True)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64])
def test_where_with_python_numbers_keeps_the_dtype_and_values(dtype):
    energy = from_expression("sum(where(x > 0, x**2, 0.5) + where(x < 1, 1e6, x))")
    x = torch.tensor([[-1.0, 0.5, 2.0]], dtype=dtype)
    # by hand: (0.5 + 1e6) + (0.25 + 1e6) + (4 + 2)
    want = torch.tensor([0.5 + 0.25 + 4 + 2 + 2e6], dtype=torch.float64)
    got = energy(x)
    assert got.dtype == dtype
    if dtype == torch.float16:      # 1e6 is above float16's largest: inf, not an error
        want = torch.tensor([math.inf], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-2 if dtype == torch.bfloat16
                               else 1e-6, atol=0)
    g = energy.gradient(x)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), torch.tensor([[0.0, 1.0, 5.0]],
                                                        dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_one_reduction_check_sends_inf_and_nan_rows_to_the_scaled_form(dtype):
    rows = torch.tensor([[3.0, 4.0], [math.inf, 1.0], [math.nan, 1.0], [1.0, -2.0]],
                        dtype=dtype)
    got = _rt.norm(rows)
    assert got[0] == 5.0 and got[1] == math.inf and math.isnan(got[2])
    torch.testing.assert_close(got[3], torch.tensor(math.sqrt(5.0), dtype=dtype))
    assert _rt.norm(rows[:0]).shape == (0,)
    torch.testing.assert_close(_rt.norm(rows[0]), torch.tensor(5.0, dtype=dtype))


def test_a_reciprocal_prints_as_one_op_with_the_same_values():
    p = TorchEnergyPrinter({"names": {x0: "x", x1: "y"}, "sizes": {x0: 3, x1: 3}})
    assert p.doprint(1 / x0) == "torch.reciprocal(x)"
    assert p.doprint(x0 ** -3) == "torch.reciprocal((x*x*x))"
    energy = from_expression("sum(1/(1 + x**2)) + 1/(x[0]**2 + 2)**3")
    x = torch.tensor([[0.5, -2.0, 3.0]], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    plain = (1 / (1 + xr ** 2)).sum(-1) + (xr[..., 0] ** 2 + 2) ** -3
    (want,) = torch.autograd.grad(plain.sum(), xr)
    # by hand: 1/1.25 + 1/5 + 1/10 + 1/2.25**3
    torch.testing.assert_close(energy(x), torch.tensor([0.8 + 0.2 + 0.1 + 2.25 ** -3],
                                                       dtype=torch.float64))
    torch.testing.assert_close(energy.gradient(x), want)


def test_n_in_values_comes_from_the_layout_of_each_n():
    # the float64 n is made once per layout (per n): alternating n must not mix them
    energy = from_expression("sum(x**2)/n + 1/(n - 1)")
    assert 'lay["n_float"]' in energy.source
    for n in (3, 5, 3, 2, 5):
        x = torch.arange(1.0, n + 1, dtype=torch.float64).unsqueeze(0)
        want = sum(k * k for k in range(1, n + 1)) / n + 1 / (n - 1)
        assert float(energy(x)) == pytest.approx(want, rel=1e-15)
        torch.testing.assert_close(energy.gradient(x), 2 * x / n)
    # at n = 1, 1/(n - 1) is inf as torch computes it, not a ZeroDivisionError
    assert float(energy(torch.ones(1, 1, dtype=torch.float64))) == math.inf


def _add_slice_reference(acc, v, lo, hi):
    """Element by element: acc (broadcast) plus v on positions [lo, hi) of the last axis."""
    batch = torch.broadcast_shapes(acc.shape[:-1], v.shape[:-1])
    out = acc.expand(*batch, acc.shape[-1]).clone()
    for k in range(lo, hi):
        out[..., k] = out[..., k] + v[..., k - lo]
    return out


@pytest.mark.parametrize("lo, hi", [(0, 5), (1, 5), (0, 4), (1, 3), (2, 2), (4, 5)])
@pytest.mark.parametrize("acc_batch, v_batch", [((3,), (3,)), ((), (3,)), ((3,), ()),
                                                 ((2, 3), (3,))])
def test_add_slice_adds_inside_the_range_and_keeps_the_ends(lo, hi, acc_batch, v_batch):
    gen = torch.Generator().manual_seed(lo * 10 + hi)
    acc = torch.randn(*acc_batch, 5, dtype=torch.float64, generator=gen)
    v = torch.randn(*v_batch, hi - lo, dtype=torch.float64, generator=gen)
    out = _rt.add_slice(acc, v, lo, hi)
    want = _add_slice_reference(acc, v, lo, hi)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert out.data_ptr() != acc.data_ptr()        # a new tensor: acc is left alone
    out.add_(1.0)
    torch.testing.assert_close(acc, torch.randn(*acc_batch, 5, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(
                                                    lo * 10 + hi)))


SHIFTED = "sum(b*(x[i+1] - x[i]**2)**2 + (a - x[i])**2 + c*x[i+2] for i in range(n - 2))"


def _shifted(x, a=1.5, b=3.0, c=0.25):
    xs = [x[..., i] for i in range(x.shape[-1])]
    return sum(b * (xs[i + 1] - xs[i] ** 2) ** 2 + (a - xs[i]) ** 2 + c * xs[i + 2]
               for i in range(len(xs) - 2))


@pytest.mark.parametrize("n", [3, 4, 7])
def test_shifted_slices_sum_into_the_gradient_as_autograd_of_an_independent_formula(n):
    # three shifted slices (x[i], x[i+1], x[i+2]) each add into their own range; the
    # constant c is a broadcast contribution with no batch dimension
    energy = from_expression(SHIFTED, a=1.5, b=3.0, c=0.25)
    assert "_rt.add_slice(" in energy.source
    x = torch.randn(6, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_shifted(xr).sum(), xr)
    torch.testing.assert_close(energy.gradient(x), want, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    hvp_want = torch.autograd.grad(
        (torch.autograd.grad(_shifted(xr).sum(), xr, create_graph=True)[0] * x).sum(), xr)[0]
    torch.testing.assert_close(energy.hessian_vector_product(x, x), hvp_want, rtol=1e-12,
                               atol=1e-12)
