"""``locate_nonfinite``: the first generated statement with a NaN or inf, and its formula terms."""

import sys

import pytest
import torch

from torchebm.core import DoubleWellEnergy
from torchebm.symbolic import from_expression

ROOTS = "sum(x**2) + 3*sum(sqrt(x[i+1] - x[i]) for i in range(n-1))"


def _line(energy, found):
    return energy.source.splitlines()[found.line - 1].strip()


def test_a_nan_from_a_square_root_of_a_negative_difference_names_that_term():
    energy = from_expression(ROOTS)
    # row 1 has x[2] < x[1]: sqrt of -1 is NaN at one point of the neighbour sum
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 1.0, 4.0]])
    assert not torch.isfinite(energy.gradient(x)).all()          # the symptom
    for method in ("gradient", "energy", "energy_and_gradient"):
        found = energy.locate_nonfinite(x, method)
        assert found is not None and found.method == method and found.nan
        assert "torch.sqrt(" in found.statement and found.count == 1
        assert found.statement == _line(energy, found)               # a line of .source
        assert "sqrt(x[i + 1] - x[i])" in found.terms
        assert "x[j])**(2)" not in found.terms                        # not the other sum
        assert "sqrt(x[i + 1] - x[i])" in str(found) and f"line {found.line}" in str(found)


def test_a_per_sample_term_outside_every_sum_is_named_as_the_formula():
    energy = from_expression("log(sum(x**2)) + sum(x)")
    found = energy.locate_nonfinite(torch.zeros(2, 3), "energy")     # log(0) = -inf
    assert found is not None and not found.nan and found.count == 2
    assert "torch.log(" in found.statement
    assert found.terms.startswith("per sample: log(sum(x**2)) + sum(x)")


def test_finite_values_give_none_and_leave_no_tracer_behind():
    energy = from_expression(ROOTS)
    before = sys.gettrace()
    assert energy.locate_nonfinite(torch.tensor([[0.0, 1.0, 2.0, 3.0]])) is None
    assert sys.gettrace() is before


def test_a_non_finite_input_or_direction_is_reported_as_such():
    energy = from_expression(ROOTS)
    x = torch.tensor([[0.0, float("nan"), 2.0, 3.0]])
    found = energy.locate_nonfinite(x)
    assert (found.name, found.line, found.count, found.nan) == ("x", 0, 1, True)
    v = torch.tensor([[0.0, float("inf"), 0.0, 0.0]])
    found = energy.locate_nonfinite(torch.tensor([[0.0, 1.0, 2.0, 3.0]]),
                                    "hessian_vector_product", v=v)
    assert (found.name, found.nan) == ("v", False)


def test_a_built_in_reads_its_committed_file_as_the_line_map():
    # float32 overflow: x^2 = 1e40 is inf, in the gradient's first statement
    energy = DoubleWellEnergy()
    found = energy.locate_nonfinite(torch.full((1, 2), 1e20))
    assert found is not None and not found.nan
    assert "torch.square(x)" in found.statement
    assert "(x[i])**(2)" in found.terms


def test_the_hessian_vector_product_and_diagonal_are_located_too():
    energy = from_expression("sum(sqrt(x))")
    x = torch.tensor([[1.0, -1.0]])
    found = energy.locate_nonfinite(x, "hessian_vector_product", v=torch.ones(1, 2))
    assert found is not None and found.nan and "sqrt(x" in found.terms
    found = energy.locate_nonfinite(x, "hessian_diagonal")
    assert found is not None and found.nan


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "laplace"}, "method must be one of"),
    ({"method": "hessian_vector_product"}, "needs the direction v"),
    ({"method": "gradient", "v": torch.ones(1, 4)}, "takes no direction v"),
])
def test_bad_arguments_are_value_errors_saying_what_to_pass(kwargs, match):
    with pytest.raises(ValueError, match=match):
        from_expression(ROOTS).locate_nonfinite(torch.zeros(1, 4), **kwargs)


def test_finite_results_with_a_guarded_nonfinite_branch_are_not_reported():
    # where(x > 0, x*log(x), 0): log(x) is -inf or NaN at x <= 0, in the branch not taken;
    # energy and gradient are finite, so there is nothing to locate
    energy = from_expression("sum(where(x > 0, x*log(x), 0))")
    x = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64)
    assert torch.isfinite(energy(x)).all() and torch.isfinite(energy.gradient(x)).all()
    assert energy.locate_nonfinite(x, method="energy") is None
    assert energy.locate_nonfinite(x, method="gradient") is None
