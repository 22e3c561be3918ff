"""Hostile and wrong input: each gets a TorchEBMError (a ValueError, MemoryError, ...) or
TypeError with a message that says what to do; nothing crashes, hangs or runs code; values stay right."""

import math

import pytest
import torch

from torchebm.errors import ShapeError
from torchebm.symbolic import EnergySyntaxError, from_expression

from .cases import FOUND_BY_ATTACK, REFUSED

X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _autograd(energy, x):
    xr = x.clone().requires_grad_(True)
    out = energy(xr).sum()
    return torch.autograd.grad(out, xr)[0] if out.requires_grad else torch.zeros_like(x)


@pytest.mark.parametrize("formula,params,match,err", REFUSED)
def test_refused_with_a_clear_error(formula, params, match, err):
    with pytest.raises(err, match=match):
        from_expression(formula, params=params)(X)


@pytest.mark.parametrize("kwargs", [{"name": "def"}, {"name": "torch"}, {"name": 5}])
def test_bad_class_names(kwargs):
    with pytest.raises(EnergySyntaxError, match="class name"):
        from_expression("sum(x)", **kwargs)


def test_bad_params_argument():
    with pytest.raises(TypeError, match="dict"):
        from_expression("sum(x)", params="ab")
    with pytest.raises(TypeError, match="strings"):
        from_expression("sum(x)", params={1: 2.0})


def test_inlining_blowup_is_refused_at_the_first_definition_over_the_limit(monkeypatch):
    """Refused by the parser as soon as a definition crosses ``MAX_TREE`` nodes: no later
    definition is built (w19 would have millions of nodes) and no compile stage runs.

    Node count of w_k = sin(w_{k-1}) + cos(w_{k-1}) as a tree: Add, sin and cos nodes plus
    two copies of w_{k-1}, s_k = 2 s_{k-1} + 3, from s_0 = 4 (x[i]: Indexed, IndexedBase,
    x, i), so s_k = 7 * 2**k - 3: the first k with s_k > MAX_TREE is refused."""
    from torchebm.symbolic import api
    from torchebm.symbolic.parse import MAX_TREE

    def must_not_run(*args, **kwargs):
        raise AssertionError("a compile stage ran on a formula the parser must refuse")

    monkeypatch.setattr(api, "compile_parsed", must_not_run)
    first = next(k for k in range(1, 20) if 7 * 2**k - 3 > MAX_TREE)
    assert first < 19
    f = "w0 = x\n" + "\n".join(f"w{i} = sin(w{i-1}) + cos(w{i-1})" for i in range(1, 20))
    with pytest.raises(EnergySyntaxError, match=f"definition of 'w{first}' expands to more than"):
        from_expression(f + "\nsum(w19)")


def test_big_flat_formula_compiles():
    formula = "sum(x) + " + " + ".join(f"{k}*x[0]" for k in range(6000))    # ~70 kB
    energy = from_expression(formula)
    want = X.sum(-1) + sum(range(6000)) * X[:, 0]
    torch.testing.assert_close(energy(X), want)


def test_parameter_names_that_are_module_attributes():
    energy = from_expression("sum(to*x**2) + training + formula", params={
        "to": 2.0, "training": 1.0, "formula": 0.5})
    torch.testing.assert_close(energy(X), 2 * (X**2).sum(-1) + 1.5)


def test_layout_locals_do_not_clash_with_parameters():
    energy = from_expression("sum(count[i]*x[i]*x[k] for i in range(n) for k in range(i+1, n))",
                             count=torch.tensor([1.0, 2.0, 3.0]))
    want = (X[:, 0] * (X[:, 1] + X[:, 2]) + 2 * X[:, 1] * X[:, 2])
    torch.testing.assert_close(energy(X), want)


@pytest.mark.parametrize("formula,params", FOUND_BY_ATTACK)
@pytest.mark.parametrize("batch", [5, 1])
def test_found_by_attack_now_right(formula, params, batch):
    x = X[:batch]
    for xx in (x, x[:, :1]) if "M" not in params and "W" not in params and "w" not in params \
            and "s" not in params else (x,):
        energy = from_expression(formula, params=params)
        g = energy.gradient(xx)
        assert g.shape == xx.shape
        torch.testing.assert_close(g, _autograd(energy, xx), equal_nan=True)


def test_nonsymmetric_matrix_with_positive_definite_lower_triangle():
    """x^T M^-1 mu with M = [[2, 5], [.5, 2]] (not symmetric): value by hand."""
    M = torch.tensor([[2.0, 5.0], [0.5, 2.0]], dtype=torch.float64)
    mu = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    want = x @ torch.linalg.inv(M) @ mu                       # = 0.2333...
    assert float(from_expression("x @ inverse(M) @ mu", M=M, mu=mu)(x)) == pytest.approx(
        float(want), abs=1e-14)
    assert float(from_expression("x[0]*logdet(M)", M=M)(x)) == pytest.approx(
        0.3 * math.log(2.0 * 2.0 - 5.0 * 0.5), abs=1e-14)


def test_empty_mean_is_nan_and_constants_follow_ieee():
    e = from_expression("mean(x[1:]) + x[0]")(torch.randn(2, 1))
    assert torch.isnan(e).all()
    assert torch.isinf(from_expression("sum(x)*exp(1000)")(torch.ones(1, 2))).all()


@pytest.mark.parametrize("x,err", [
    ([[1.0, 2.0]], TypeError), (torch.ones(2, 2, dtype=torch.int64), TypeError),
    (torch.randn(3, 3).to_sparse(), TypeError), (torch.tensor(1.0), ShapeError),
    (torch.zeros(3, 0), ShapeError)])
def test_bad_x(x, err):
    with pytest.raises(err):
        from_expression("sum(x**2)")(x)


def test_empty_batch_and_half_precision():
    energy = from_expression("sum(b*(x[1:] - x[:-1]**2)**2)", b=2.0)
    assert energy(torch.zeros(0, 4)).shape == (0,)
    assert energy.gradient(torch.zeros(0, 4)).shape == (0, 4)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(3, 4).to(dtype)
        e, g = energy.energy_and_gradient(x)
        assert e.dtype == dtype and g.dtype == dtype
        torch.testing.assert_close(g.float(), energy.gradient(x.float()), rtol=0.05, atol=0.1)


def test_nan_and_inf_parameters_are_accepted_and_propagate():
    energy = from_expression("sum(a*x**2)", a=float("nan"))
    assert torch.isnan(energy(X)).all()


def test_stable_rewrites_of_log_of_exponentials():
    x = torch.tensor([[1000.0, 1000.0, -1000.0]], dtype=torch.float64)
    e = from_expression("log(sum(exp(x) + exp(-x)))")
    assert float(e(x)) == pytest.approx(1000 + math.log(3), rel=1e-15)
    torch.testing.assert_close(e.gradient(x), torch.tensor([[1 / 3, 1 / 3, -1 / 3]],
                                                           dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(from_expression("log(mean(exp(x)))")(x)) == pytest.approx(1000 + math.log(2 / 3))
    assert float(from_expression("log(2*exp(x[0]))")(x)) == pytest.approx(1000 + math.log(2))


def test_safe_sqrt_with_a_parameter_factor():
    e = from_expression("sqrt(sum(a*x**2))", a=2.0)
    assert torch.equal(e.gradient(torch.zeros(1, 3)), torch.zeros(1, 3))


def test_non_ascii_identifiers_and_100kb_formula():
    with pytest.raises(EnergySyntaxError):
        from_expression("sum(α*x)")
    formula = "sum(x) + " + " + ".join(f"{k % 7}*x[{k % 3}]" for k in range(11200))
    assert len(formula) > 100_000
    energy = from_expression(formula)
    assert energy(X).shape == (5,)


def test_from_expression_energy_pickles_and_saves(tmp_path):
    import copy
    import pickle
    energy = from_expression("sum((x - m)**2*lambda)", params={"lambda": 0.5, "m": torch.ones(3)},
                             trainable=["m"])
    for other in (pickle.loads(pickle.dumps(energy)), copy.deepcopy(energy)):
        torch.testing.assert_close(other(X), energy(X))
        assert isinstance(other.m, torch.nn.Parameter)
    torch.save(energy, tmp_path / "e.pt")
    torch.testing.assert_close(torch.load(tmp_path / "e.pt", weights_only=False)(X), energy(X))


def test_per_sample_value_inside_a_nested_sum():
    # mean(x) is per sample; used inside a nested level it is broadcast to every point
    energy = from_expression("sum(sum((x[j] - mean(x))**2*x[i] for j in range(n)) "
                             "for i in range(n))")
    x = torch.randn(3, 5, dtype=torch.float64)
    want = x.sum(-1) * ((x - x.mean(-1, keepdim=True)) ** 2).sum(-1)
    torch.testing.assert_close(energy(x), want)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((xg.sum(-1) * ((xg - xg.mean(-1, keepdim=True)) ** 2)
                                   .sum(-1)).sum(), xg)
    torch.testing.assert_close(energy.gradient(x), auto)
