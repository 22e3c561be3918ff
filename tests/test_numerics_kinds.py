"""Numerics by kind of fault: powers at a zero base, fractional powers of sums of squares,
range (norm, atan2, hypot), logs of saturating functions, and autograd of the forward.

Every expected value is derived by hand (the derivation is beside it) or computed with
mpmath at 50 digits from the textbook formula; none is read from the generated code.
"""

import math

import mpmath
import pytest
import torch

from torchebm.symbolic import from_expression

from .cases import FORMULAS, KINKS

F64 = torch.float64
mpmath.mp.dps = 50


def t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def check(energy, x, energy_want=None, grad_want=None, hdiag_want=None, rtol=1e-12, atol=0.0,
          hdiag_rtol=None):
    """Closed-form energy, gradient and Hessian diagonal against hand-derived values."""
    with torch.no_grad():
        e, g, hd = energy(x), energy.gradient(x), energy.hessian_diagonal(x)
    for got, want, tol in ((e, energy_want, rtol), (g, grad_want, rtol),
                           (hd, hdiag_want, hdiag_rtol or rtol)):
        if want is None:
            continue
        want = torch.as_tensor(want, dtype=got.dtype)
        assert torch.isfinite(got).all(), (got, want)
        torch.testing.assert_close(got, want, rtol=tol, atol=atol)


# -- 1. powers with a non-literal exponent at a zero base ---------------------------------
@pytest.mark.parametrize("formula, params, x, e, g, hd", [
    # x**a, a = 2: E = sum x^2, g = 2x, diag H = 2
    ("sum(x**a)", {"a": 2.0}, [0.0, 1.0, -2.0], 5.0, [0.0, 2.0, -4.0], [2.0, 2.0, 2.0]),
    # a = 3: E = 0 + 8 - 1, g = 3 x^2, diag H = 6 x
    ("sum(x**a)", {"a": 3.0}, [0.0, 2.0, -1.0], 7.0, [0.0, 12.0, 3.0], [0.0, 12.0, -6.0]),
    # a = 1: E = sum x, g = 1 (0**0 = 1), diag H = 0
    ("sum(x**a)", {"a": 1.0}, [0.0, 5.0], 5.0, [1.0, 1.0], [0.0, 0.0]),
    # a = 0: E = n (0**0 = 1), g = 0
    ("sum(x**a)", {"a": 0.0}, [0.0, 5.0], 2.0, [0.0, 0.0], [0.0, 0.0]),
    # |x|^1.5: g = 1.5 |x|^0.5 sign x, diag H = 0.75 |x|^-0.5 (0 at x = 0: kink convention)
    ("sum(abs(x)**p)", {"p": 1.5}, [0.0, 4.0, -1.0], 9.0, [0.0, 3.0, -1.5], [0.0, 0.375, 0.75]),
    # |x|^2.5: g = 2.5 |x|^1.5 sign x, diag H = 3.75 |x|^0.5
    ("sum(abs(x)**p)", {"p": 2.5}, [0.0, 1.0, -4.0], 33.0, [0.0, 2.5, -20.0],
     [0.0, 3.75, 7.5]),
    # x0^2.5 x1 at x0 = 0: every derivative of the x0 factor vanishes
    ("x[0]**a*x[1]", {"a": 2.5}, [0.0, 3.0], 0.0, [0.0, 0.0], [0.0, 0.0]),
])
def test_power_with_parameter_exponent_at_zero_base(formula, params, x, e, g, hd):
    check(from_expression(formula, **params), t([x]), [e], [g], [hd])


@pytest.mark.parametrize("formula, params, x, e, g, hd", [
    # a**x with a = 0: E = 0^0 + 0^1 + 0^0.5 = 1; d/dx 0^x = 0^x log 0 -> its limit 0 for
    # x >= 0 (autograd's value), not 0 * (-inf) = NaN; diag H likewise 0
    ("sum(a**x)", {"a": 0.0}, [0.0, 1.0, 0.5], 1.0, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    # a = 2: E = 1 + 2 + 4, g = 2^x log 2, diag H = 2^x log(2)^2
    ("sum(a**x)", {"a": 2.0}, [0.0, 1.0, 2.0], 7.0,
     [math.log(2), 2 * math.log(2), 4 * math.log(2)],
     [math.log(2) ** 2, 2 * math.log(2) ** 2, 4 * math.log(2) ** 2]),
])
def test_parameter_base_under_an_exponent_in_x(formula, params, x, e, g, hd):
    check(from_expression(formula, **params), t([x]), [e], [g], [hd])


def test_parameter_base_derivative_at_zero_base():
    # d/da sum(a**x) = sum x a^(x-1): at a = 0 and x = [1, 2, 3]: 1*0^0 + 0 + 0 = 1
    # (autograd gives the same); at a = 0.5: 1 + 2*0.5 + 3*0.25 = 2.75
    for a, want in ((0.0, 1.0), (0.5, 2.75)):
        energy = from_expression("sum(a**x)", a=a, trainable=True)
        x = t([[1.0, 2.0, 3.0]])
        assert float(energy.parameter_gradient(x)["a"]) == pytest.approx(want, rel=1e-14)
        (da,) = torch.autograd.grad(energy(x).sum(), energy.a)
        assert float(da) == pytest.approx(want, rel=1e-14)


def test_power_exponent_derivative_at_zero_base():
    # d/da sum(x**a) = sum x^a log x, with 0^a log 0 -> 0 (a > 0): at [0, 2, 1], a = 3:
    # 8 log 2
    energy = from_expression("sum(x**a)", a=3.0, trainable=True)
    x = t([[0.0, 2.0, 1.0]])
    (da,) = torch.autograd.grad(energy(x).sum(), energy.a)
    assert float(da) == pytest.approx(8 * math.log(2), rel=1e-14)


def test_score_matching_with_trainable_exponent_on_zeros():
    # E = sum |x|^p: grad = p |x|^(p-1) sign x; laplacian = p (p-1) sum |x|^(p-2) over x != 0
    # (0 at x = 0: the kink convention). The loss and dL/dp come from this independent
    # plain-torch formula, differentiated by autograd.
    from torchebm.losses import score_matching_loss
    x = t([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]])
    energy = from_expression("sum(abs(x)**p)", p=1.5, trainable=True)
    loss = score_matching_loss(energy, x)
    (dp,) = torch.autograd.grad(loss, energy.p)

    p = torch.tensor(1.5, dtype=F64, requires_grad=True)
    a, nz = x.abs(), x != 0
    safe = torch.where(nz, a, torch.ones_like(a))
    grad = torch.where(nz, p * safe ** (p - 1), torch.zeros_like(a)) * torch.sign(x)
    lap = torch.where(nz, p * (p - 1) * safe ** (p - 2), torch.zeros_like(a)).sum(-1)
    ref = (0.5 * (grad**2).sum(-1) - lap).mean()
    (ref_dp,) = torch.autograd.grad(ref, p)
    assert torch.isfinite(loss) and torch.isfinite(dp)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(dp, ref_dp, rtol=1e-13, atol=0)


# -- 2. fractional powers of a sum of squares at 0 ----------------------------------------
@pytest.mark.parametrize("formula, params, x, e, g, hd", [
    # s^0.75: g = 1.5 s^-0.25 x -> 0 at the origin (|g| ~ |x|^0.5)
    ("sum(x**2)**0.75", {}, [0.0, 0.0], 0.0, [0.0, 0.0], None),
    # at [3, 4]: s = 25, g = 1.5 x / sqrt(5)
    ("sum(x**2)**0.75", {}, [3.0, 4.0], 25**0.75, [4.5 / math.sqrt(5), 6 / math.sqrt(5)], None),
    # s^1.5: g = 3 sqrt(s) x, H = 3 sqrt(s) I + 3 x x^T / sqrt(s) -> 0 at the origin
    ("sum(x**2)**1.5", {}, [0.0, 0.0, 0.0], 0.0, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    # at [1, 2, 2]: sqrt(s) = 3, g = 9 x, diag H = 9 + x^2
    ("sum(x**2)**1.5", {}, [1.0, 2.0, 2.0], 27.0, [9.0, 18.0, 18.0], [10.0, 13.0, 13.0]),
    # norm(x)**1.5 is s^0.75
    ("norm(x)**1.5", {}, [0.0, 0.0], 0.0, [0.0, 0.0], None),
    # mean(x**2)**0.6 at [1, 1]: g = 0.6 * 1 * 2 x / n = 0.6
    ("mean(x**2)**0.6", {}, [1.0, 1.0], 1.0, [0.6, 0.6], None),
    ("mean(x**2)**0.6", {}, [0.0, 0.0], 0.0, [0.0, 0.0], None),
    # a parameter exponent: s^p, p = 1.25: g = 2.5 s^0.25 x -> 0, H -> 0 at the origin
    ("sum(x**2)**p", {"p": 1.25}, [0.0, 0.0], 0.0, [0.0, 0.0], [0.0, 0.0]),
    # exp(-s^0.75) at 0: g = -exp(-s^0.75) 1.5 s^-0.25 x -> 0
    ("exp(-sum(x**2)**0.75)", {}, [0.0, 0.0], 1.0, [0.0, 0.0], None),
])
def test_fractional_power_of_sum_of_squares(formula, params, x, e, g, hd):
    check(from_expression(formula, **params), t([x]), [e], [g], None if hd is None else [hd])
    if hd is None:    # the diagonal exists or takes the convention: finite either way
        assert torch.isfinite(from_expression(formula, **params).hessian_diagonal(t([x]))).all()


# -- 3. range: norm, atan2, hypot -----------------------------------------------------------
@pytest.mark.parametrize("x, e, g", [
    ([3e-200, 4e-200], 5e-200, [0.6, 0.8]),     # squares underflow to 0
    ([3e200, 4e200], 5e200, [0.6, 0.8]),        # squares overflow to inf
    ([1e-300, 0.0, 0.0], 1e-300, [1.0, 0.0, 0.0]),
    ([0.0, 0.0], 0.0, [0.0, 0.0]),              # the kink: convention 0
])
def test_norm_is_range_safe(x, e, g):
    check(from_expression("norm(x)"), t([x]), [e], [g], rtol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_of_a_batch_mixing_ordinary_and_extreme_rows_is_exact_in_every_row(dtype):
    """Ordinary rows take the one-pass norm and the others the scaled one, in one batch;
    each row against its norm computed by hand in Python (float arithmetic, scaled)."""
    big, small = (1e30, 1e-30) if dtype == torch.float32 else (1e200, 1e-200)
    rows = [[3.0, 4.0], [3 * small, 4 * small], [3 * big, 4 * big], [0.0, 0.0], [1.0, -2.0]]
    want = [5.0, 5 * small, 5 * big, 0.0, math.sqrt(5.0)]
    energy = from_expression("norm(x)")
    got = energy(torch.tensor(rows, dtype=dtype))
    torch.testing.assert_close(got, torch.tensor(want, dtype=dtype), rtol=4e-7 if
                               dtype == torch.float32 else 1e-15, atol=0)
    ones = energy(torch.tensor(rows[:1] + rows[4:], dtype=dtype))     # ordinary rows alone
    torch.testing.assert_close(ones, torch.tensor([want[0], want[4]], dtype=dtype),
                               rtol=4e-7 if dtype == torch.float32 else 1e-15, atol=0)


def test_norm_hessian_is_range_safe():
    # H = (I - u u^T) / r with u = x / r: at [3, 4] * 1e-200, r = 5e-200, u = [0.6, 0.8]
    energy = from_expression("norm(x)")
    for scale in (1e-200, 1e200):
        x = t([[3 * scale, 4 * scale]])
        r = 5 * scale
        want = t([[[0.64 / r, -0.48 / r], [-0.48 / r, 0.36 / r]]])
        torch.testing.assert_close(energy.hessian(x), want, rtol=1e-13, atol=0)


def test_norm_with_a_nan_component_is_nan_in_every_component():
    energy = from_expression("norm(x)")
    x = t([[float("nan"), 1.0, 2.0]])
    g = energy.gradient(x)
    assert torch.isnan(g).all()
    xr = x.clone().requires_grad_(True)
    (ag,) = torch.autograd.grad(energy(xr).sum(), xr)
    assert torch.isnan(ag).all()


@pytest.mark.parametrize("x, e, g", [
    # d/dy atan2(y, x) = x / r^2, d/dx = -y / r^2 (r^2 under- or overflows)
    ([1e-200, 1e-200], math.pi / 4, [5e199, -5e199]),
    ([3e-200, 4e-200], math.atan2(3, 4), [4 / 25 * 1e200, -3 / 25 * 1e200]),
    ([3e200, 4e200], math.atan2(3, 4), [4 / 25 * 1e-200, -3 / 25 * 1e-200]),
    ([1.0, 1.0], math.pi / 4, [0.5, -0.5]),
    ([0.0, 0.0], 0.0, [0.0, 0.0]),              # no derivative at the origin: convention 0
])
def test_atan2_is_range_safe(x, e, g):
    check(from_expression("atan2(x[0], x[1])"), t([x]), [e], [g], rtol=1e-15)


@pytest.mark.parametrize("x, e, g", [
    ([3e-200, 4e-200], 5e-200, [0.6, 0.8]),
    ([-3e200, 4e200], 5e200, [-0.6, 0.8]),
    ([0.0, 0.0], 0.0, [0.0, 0.0]),
])
def test_hypot_is_range_safe(x, e, g):
    check(from_expression("hypot(x[0], x[1])"), t([x]), [e], [g], rtol=1e-15)
    # the same function written out: sqrt of two squares
    check(from_expression("sqrt(x[0]**2 + x[1]**2)"), t([x]), [e], [g], rtol=1e-15)


def test_sqrt_of_one_plus_a_square_keeps_its_curvature():
    # sqrt(1 + x0^2) (a hypot) and sqrt(sum(x**2) + 1) (not rewritten): smooth at 0 with
    # Hessian 1 on the diagonal: d2/dx2 sqrt(1 + x^2) = (1 + x^2)^(-3/2)
    check(from_expression("sqrt(1 + x[0]**2)"), t([[0.0], [1e200]]), [1.0, 1e200],
          [[0.0], [1.0]], [[1.0], [0.0]], rtol=1e-15)
    check(from_expression("sqrt(sum(x**2) + 1)"), t([[0.0, 0.0]]), [1.0], [[0.0, 0.0]],
          [[1.0, 1.0]])


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e-30), (torch.float32, 1e30),
                                          (torch.float16, 1e-4), (torch.float16, 100.0)])
def test_norm_atan2_hypot_in_low_precision(dtype, scale):
    # the same 3-4-5 triangle, scaled where float32/float16 squares under- or overflow
    x = t([[3 * scale, 4 * scale]], dtype)
    for formula in ("norm(x)", "hypot(x[0], x[1])"):
        energy = from_expression(formula)
        torch.testing.assert_close(energy(x).double(), t([5 * scale]), rtol=2e-3, atol=0)
        torch.testing.assert_close(energy.gradient(x).double(), t([[0.6, 0.8]]),
                                   rtol=2e-3, atol=0)
    energy = from_expression("atan2(x[0], x[1])")
    torch.testing.assert_close(energy.gradient(x).double(),
                               t([[4 / 25 / scale, -3 / 25 / scale]]), rtol=2e-3, atol=0)


# -- 4. the table of stable rewrites ---------------------------------------------------------
def _mp_values(fn, xs):
    """Energy, gradient and Hessian diagonal of sum(fn(x_i)), by mpmath at 50 digits."""
    e = sum(fn(mpmath.mpf(v)) for v in xs)
    g = [mpmath.diff(fn, mpmath.mpf(v)) for v in xs]
    h = [mpmath.diff(fn, mpmath.mpf(v), 2) for v in xs]
    return [float(e)], [[float(v) for v in g]], [[float(v) for v in h]]


REWRITES = [
    # formula, mpmath function of one component, extreme points
    ("sum(log(sigmoid(x)))", lambda u: -mpmath.log1p(mpmath.exp(-u)), [-1000.0, 0.0, 1000.0]),
    ("sum(log(sigmoid(x)))", lambda u: -mpmath.log1p(mpmath.exp(-u)), [-745.5, 37.0, -40.0]),
    ("sum(log(1 - sigmoid(x)))", lambda u: -mpmath.log1p(mpmath.exp(u)), [-1000.0, 0.0, 1000.0]),
    ("sum(log(1 - sigmoid(x)))", lambda u: -mpmath.log1p(mpmath.exp(u)), [40.0, -37.0, 750.0]),
    ("sum(log(cosh(x)))", lambda u: mpmath.log(mpmath.cosh(u)), [1000.0, -1000.0, 0.5]),
    ("sum(log(cosh(x)))", lambda u: mpmath.log(mpmath.cosh(u)), [400.0, -400.0, 1e-8]),
    ("sum(log(1 + exp(x)))", lambda u: mpmath.log1p(mpmath.exp(u)), [1000.0, -1000.0, 0.0]),
    ("sum(log(1/(1 + exp(-x))))", lambda u: -mpmath.log1p(mpmath.exp(-u)),
     [-1000.0, 0.0, 1000.0]),
    # log_ndtr's derivative exp(-u**2/2 - log_ndtr(u)) / sqrt(2 pi) loses |u|**2 eps
    # (1e-12 at u = -141) and its Hessian 1 + u r - r**2 (r ~ -u, the Mills ratio) about
    # up to 5 more at u = -141: checked to 1e-10 and 1e-6
    ("sum(log(erfc(x)))", lambda u: mpmath.log(mpmath.erfc(u)), [30.0, 0.0, -3.0]),
    ("sum(log(erfc(x)))", lambda u: mpmath.log(mpmath.erfc(u)), [100.0, 27.5, 1.0]),
]


@pytest.mark.parametrize("formula, fn, xs", REWRITES)
def test_stable_rewrite_at_extremes(formula, fn, xs):
    e, g, hd = _mp_values(fn, xs)
    check(from_expression(formula), t([xs]), e, g, hd,
          rtol=1e-10 if "erfc" in formula else 1e-12, atol=1e-300,
          hdiag_rtol=1e-6 if "erfc" in formula else None)


def test_log_cosh_value_from_the_issue():
    # log cosh u = |u| + log1p(exp(-2|u|)) - log 2: 2 (1000 - log 2) + log cosh 0.5
    energy = from_expression("sum(log(cosh(x)))")
    want = 2 * (1000 - math.log(2)) + math.log(math.cosh(0.5))
    assert float(energy(t([[1000.0, -1000.0, 0.5]]))) == pytest.approx(want, rel=1e-15)


def test_rewrites_done_by_sympy_at_extremes():
    # exp(log(u)) -> u and sqrt(u**2) -> |u| (SymPy, for real u): no rounding of
    # exp(log(1e-300)) and no square of 1e200
    energy = from_expression("sum(exp(log(x)))")
    check(energy, t([[1e-300, 5.0]]), [5.0 + 1e-300], [[1.0, 1.0]], [[0.0, 0.0]])
    energy = from_expression("sum(sqrt(x**2))")
    check(energy, t([[1e-200, -1e200]]), [1e200], [[1.0, -1.0]], [[0.0, 0.0]])


@pytest.mark.parametrize("formula, absent", [
    ("sum(log(sigmoid(x)))", "torch.log("), ("sum(log(1 - sigmoid(x)))", "torch.log("),
    ("sum(log(cosh(x)))", "torch.cosh("), ("sum(log(erfc(x)))", "torch.erfc("),
    ("sum(log(1 + exp(x)))", "torch.exp("), ("atan2(x[0], x[1])", "torch.atan2("),
])
def test_rewritten_functions_are_gone_from_the_code(formula, absent):
    assert absent not in from_expression(formula).source


# -- 5. autograd and torch.func of the generated forward -------------------------------------
def test_func_grad_of_where_with_sqrt_branch():
    energy = from_expression("sum(where(x > 0, sqrt(x), -x))")
    x = t([-1.0, 0.0, 4.0])
    g = torch.func.grad(lambda z: energy(z.unsqueeze(0)).sum())(x)
    torch.testing.assert_close(g, t([-1.0, -1.0, 0.25]), rtol=0, atol=0)
    xr = x.unsqueeze(0).requires_grad_(True)
    (ag,) = torch.autograd.grad(energy(xr).sum(), xr)
    torch.testing.assert_close(ag, t([[-1.0, -1.0, 0.25]]), rtol=0, atol=0)


def test_softplus_parameter_derivative_at_zero():
    # d/da softplus(a x) = x sigmoid(a x) = 0.5 at a = 0, x = 1
    energy = from_expression("sum(softplus(a*x))", a=0.0, trainable=True)
    (da,) = torch.autograd.grad(energy(t([[1.0]])).sum(), energy.a)
    assert float(da) == 0.5


def test_maximum_tie_gives_autograd_to_the_first_argument():
    energy = from_expression("maximum(x[0], x[1])")
    x = t([[1.0, 1.0]])
    xr = x.clone().requires_grad_(True)
    (ag,) = torch.autograd.grad(energy(xr).sum(), xr)
    torch.testing.assert_close(ag, t([[1.0, 0.0]]), rtol=0, atol=0)
    torch.testing.assert_close(energy.gradient(x), ag, rtol=0, atol=0)


def _finite_rows(*tensors):
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool)
    for v in tensors:
        ok &= torch.isfinite(v.reshape(v.shape[0], -1)).all(-1)
    return ok


@pytest.mark.parametrize("formula, params, points", KINKS)
def test_autograd_and_func_of_forward_match_closed_forms(formula, params, points):
    energy = from_expression(formula, **params)
    x = t(points)
    with torch.no_grad():
        g, hd = energy.gradient(x), energy.hessian_diagonal(x)
    assert torch.isfinite(g).all() and torch.isfinite(hd).all(), (formula, g, hd)
    xr = x.clone().requires_grad_(True)
    (ag,) = torch.autograd.grad(energy(xr).sum(), xr)
    fg = torch.stack([torch.func.grad(lambda z: energy(z.unsqueeze(0)).sum())(row)
                      for row in x])
    fh = torch.stack([torch.diagonal(torch.func.hessian(
        lambda z: energy(z.unsqueeze(0)).sum())(row)) for row in x])
    for other in (ag, fg):
        torch.testing.assert_close(other, g, rtol=1e-12, atol=1e-300, msg=formula)
    torch.testing.assert_close(fh, hd, rtol=1e-9, atol=1e-300, msg=formula)


# -- verify's third path and special points ----------------------------------------------------
def test_verify_special_checks_pass_and_catch_a_nan_at_zero():
    from torchebm.symbolic.verify import special_checks
    energy = from_expression("sum(x**a) + norm(x)", a=1.5)
    checks = special_checks("e", energy, 3)
    assert {c.check for c in checks} == {"grad~func", "special~autograd", "special-hdiag~func"}
    assert all(c.ok for c in checks), [(c.check, c.failed_at) for c in checks]

    class Broken(type(energy)):
        def gradient(self, x, create_graph=False):     # NaN at the origin, as SymPy's x**a
            g = super().gradient(x, create_graph)
            return torch.where((x == 0).all(-1, keepdim=True), torch.nan, g)

    broken = Broken(a=1.5)
    bad = {c.check: c for c in special_checks("e", broken, 3)}
    assert not bad["special~autograd"].ok and bad["special-hdiag~func"].ok


def _special_rows(n):
    """Zeros (kinks, 0**p, the origin of norms), a row of kinks at +-1 and a normal draw."""
    gen = torch.Generator().manual_seed(n)
    return torch.stack([torch.zeros(n, dtype=F64),
                        torch.tensor([(-1.0) ** k * (k % 2) for k in range(n)], dtype=F64),
                        torch.randn(n, dtype=F64, generator=gen)])


def _formula_cases():
    return [(c.id, c.formula, c.params, n) for c in FORMULAS for n in c.dims]


@pytest.mark.parametrize("cid, formula, params, n", _formula_cases(),
                         ids=[f"{c[0]}-n{c[3]}" for c in _formula_cases()])
def test_autograd_and_func_of_forward_over_the_formula_corpus(cid, formula, params, n):
    """Every formula of tests/test_formulas.py: where autograd of the forward is finite at
    zeros, kinks and a normal draw, the closed forms are finite and equal to it."""
    energy = from_expression(formula, params=params)
    x = _special_rows(n)
    with torch.no_grad():
        g, hd = energy.gradient(x), energy.hessian_diagonal(x)
    xr = x.clone().requires_grad_(True)
    (ag,) = torch.autograd.grad(energy(xr).sum(), xr)
    fn = lambda z: energy(z.unsqueeze(0)).sum()      # noqa: E731
    compared = 0
    for k in range(x.shape[0]):
        fg = torch.func.grad(fn)(x[k])
        fh = torch.diagonal(torch.func.hessian(fn)(x[k]))
        for got, want in ((g[k], ag[k]), (g[k], fg), (hd[k], fh)):
            if bool(torch.isfinite(want).all()):
                compared += 1
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10,
                                           msg=f"{cid} n={n} at {x[k].tolist()}")
    assert compared >= 3, cid          # at least the normal draw was compared


def test_score_matching_parameter_gradient_is_finite_at_the_origin_of_a_norm():
    # E = |a| |x|: grad = |a| x/|x|, laplacian = |a| (n - 1)/|x|, both 0 at x = 0 (kink
    # convention). L = mean over rows of 0.5 a^2 - |a| (n - 1)/|x| (rows x != 0 only), so
    # dL/da = mean(a - (n - 1)/|x|) over the rows x != 0, divided by all 4 rows (a > 0).
    from torchebm.losses import score_matching_loss
    x = t([[0.0, 0.0], [1.0, 2.0], [0.0, 3.0], [-1.0, 0.0]])
    for formula in ("norm(a*x)", "hypot(a*x[0], a*x[1])"):
        energy = from_expression(formula, a=1.5, trainable=True)
        (da,) = torch.autograd.grad(score_matching_loss(energy, x), energy.a)
        want = (3 * 1.5 - (1 / math.sqrt(5) + 1 / 3 + 1)) / 4
        assert float(da) == pytest.approx(want, rel=1e-13), formula


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 5e20), (torch.float32, 5e-30),
                                          (torch.float64, 5e200), (torch.float64, 5e-300)])
def test_powers_and_logs_of_norms_are_range_safe(dtype, scale):
    """A norm under a power or a log (an attack pass: the squares under- or overflowed
    again, energy inf with gradient 0). x = (3, 4) s/5 has |x| = s, so by hand:
    |x|^0.5 = s^0.5, |x|^1.5 = s^1.5, log(|x|^2) = 2 log s, sum(x^2)^0.75 = s^1.5;
    gradients p s^(p-2) x and 2 x / s^2 where they are representable in the dtype."""
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64) * scale / 5
    xd = x.to(dtype)
    huge = torch.finfo(dtype).max
    cases = [("norm(x)**0.5", 0.5), ("sqrt(norm(x))", 0.5), ("norm(x)**1.5", 1.5),
             ("sum(x**2)**0.75", 1.5)]
    for formula, p in cases:
        E = from_expression(formula)
        want = scale ** p
        if want < huge and want > torch.finfo(dtype).tiny:
            torch.testing.assert_close(E(xd).double(), torch.tensor([want], dtype=torch.float64),
                                       rtol=1e-5, atol=0, msg=formula)
        if scale > 1:                                        # representable: compare
            g = p * scale ** (p - 2) * x                      # p |x|^(p-2) x
            torch.testing.assert_close(E.gradient(xd).double(), g, rtol=1e-5, atol=0,
                                       msg=formula)
    E = from_expression("log(norm(x)**2)")
    torch.testing.assert_close(E(xd).double(),
                               torch.tensor([2 * math.log(scale)], dtype=torch.float64),
                               rtol=1e-6, atol=0)


def test_power_of_a_single_square_keeps_its_sign_rule():
    # (x0^2)^0.75 = |x0|^1.5 at x0 = -4: 8, gradient 1.5 |x0|^0.5 sign(x0) = -3;
    # log(x0^2) = 2 log 4, gradient 2 / x0 = -0.5
    x = t([[-4.0, 1.0]])
    check(from_expression("(x[0]**2)**0.75 + 0*x[1]"), x, [8.0], [[-3.0, 0.0]],
          [[1.5 * 0.5 * 4 ** -0.5, 0.0]])
    E = from_expression("log(x[0]**2) + 0*x[1]")
    torch.testing.assert_close(E(x), t([2 * math.log(4.0)]))
    torch.testing.assert_close(E.gradient(x), t([[-0.5, 0.0]]))
