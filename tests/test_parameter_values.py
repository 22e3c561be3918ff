"""Values and names a user gets wrong: the error says which value, or which character."""

import pytest
import torch

from torchebm.errors import EnergySyntaxError, ParameterError
from torchebm.symbolic import from_expression


@pytest.mark.parametrize("value, shape", [(torch.eye(2), [2, 2]), ([[1.0, 2.0]], [1, 2])])
def test_matrix_for_a_scalar_parameter_is_a_parameter_error(value, shape):
    with pytest.raises(ParameterError) as info:
        from_expression("sum(a*x**2)", a=value)
    message = str(info.value)
    assert "uses a as a scalar" in message and f"shape {shape}" in message


def test_vector_for_an_elementwise_parameter_still_works():
    E = from_expression("sum(a*x**2)", a=[1.0, 3.0])
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    assert E(x).item() == pytest.approx(1.0 * 4.0 + 3.0 * 1.0)


def test_formula_errors_stay_formula_errors_when_a_matrix_is_given():
    # the formula is wrong whatever a is: the syntax error is reported, not the value
    with pytest.raises(EnergySyntaxError, match="never closed"):
        from_expression("sum(a*x**2", a=torch.eye(2))


@pytest.mark.parametrize("formula, written, folded", [
    ("sum(\uff58**2)", "\uff58", "'x'"),         # full-width x
    ("sum(x**2) + \ufb01", "\ufb01", "'fi'"),     # the ligature fi
    ("sum(\u03b1*x**2)", "\u03b1", None),         # Greek alpha: no ASCII reading
])
def test_names_must_be_written_in_ascii(formula, written, folded):
    with pytest.raises(EnergySyntaxError) as info:
        from_expression(formula)
    message = str(info.value)
    assert repr(written) in message
    if folded:
        assert f"reads it as {folded}" in message
    assert info.value.col == formula.index(written)


def test_non_ascii_comment_is_fine():
    E = from_expression("sum(x**2)  # \u00e9nergie")
    assert E(torch.tensor([[1.0, 2.0]])).item() == pytest.approx(5.0)


def test_bars_for_absolute_value_get_a_hint():
    with pytest.raises(EnergySyntaxError, match=r"write abs\(x\), not \|x\|"):
        from_expression("sum(|x|)")


@pytest.mark.parametrize("formula, hint", [
    ("sum(sinx)", "'sinx' (did you mean sin(x)?) is read as a scalar parameter"),
    ("mean(cosx**2)", "'cosx' (did you mean cos(x)?) is read as a scalar parameter"),
    ("sum(x0**2)", "'x0' (did you mean the component x[0]?) is read as a scalar parameter"),
    ("sum(sinx*cosx)", "'cosx' (did you mean cos(x)?), 'sinx' (did you mean sin(x)?) are read"),
])
def test_typo_inside_a_reduction_keeps_its_hint(formula, hint):
    with pytest.raises(EnergySyntaxError) as info:
        from_expression(formula)
    assert hint in str(info.value)


def test_a_plain_scalar_inside_a_reduction_says_to_drop_it():
    with pytest.raises(EnergySyntaxError, match="for scalars use the function itself"):
        from_expression("sum(a)", a=1.0)


@pytest.mark.parametrize("formula, what", [
    ("sum(x[(i+1) % 0] for i in range(n))", "'% 0' divides by zero"),
    ("sum(x[(i+1) % (n-n)] for i in range(n))", "'% 0' divides by zero"),
    ("sum(x[i // 0] for i in range(n))", "'// 0' divides by zero"),
])
def test_index_arithmetic_by_zero_is_a_formula_error(formula, what):
    with pytest.raises(EnergySyntaxError, match=what):
        from_expression(formula)


def test_a_matrix_of_the_wrong_shape_in_a_quadratic_form_names_the_dot_product():
    from torchebm.errors import ShapeError
    E = from_expression("0.5*x @ P @ x", P=torch.ones(3, 2))
    with pytest.raises(ShapeError, match="a dot product needs vectors of equal length, but "
                                         "the left one has length 2 and the right one 3"):
        E(torch.ones(1, 3))


def test_a_modulus_that_is_zero_at_this_n_is_a_shape_error_and_labels_keep_parentheses():
    from torchebm.errors import ShapeError
    E = from_expression("sum(x[(i+1) % (n-3)] for i in range(n))")
    with pytest.raises(ShapeError, match="taken modulo 0 at this dimension"):
        E(torch.ones(1, 3))
    x = torch.arange(5.0, dtype=torch.float64).unsqueeze(0)
    # n = 5: indices (i + 1) % 2 for i = 0..4 read x[1], x[0], x[1], x[0], x[1]
    assert E(x).item() == 3 * 1.0 + 2 * 0.0
    torch.testing.assert_close(E.gradient(x), torch.tensor([[2.0, 3.0, 0.0, 0.0, 0.0]],
                                                           dtype=torch.float64))
    assert "x[(i + 1) % (n - 3)]" in E.source
