"""The error hierarchy (issue 14): each fault has its own class, which also subclasses
the builtin a user would catch, and ``except EnergySyntaxError`` catches only faults of
the formula language."""

import pytest
import torch

import torchebm
from torchebm.core import GaussianEnergy
from torchebm.errors import (DeviceError, EnergySyntaxError, MemoryLimitError, ParameterError,
                             ShapeError, SingularMatrixError, TorchEBMError)
from torchebm.losses import score_matching_loss
from torchebm.symbolic import from_expression


def test_classes_subclass_the_builtin_a_user_catches():
    assert issubclass(EnergySyntaxError, ValueError)
    assert issubclass(ParameterError, ValueError)
    assert issubclass(SingularMatrixError, ParameterError)
    assert issubclass(ShapeError, ValueError)
    assert issubclass(DeviceError, RuntimeError)
    assert issubclass(MemoryLimitError, MemoryError)
    for cls in (EnergySyntaxError, ParameterError, SingularMatrixError, ShapeError,
                DeviceError, MemoryLimitError):
        assert issubclass(cls, TorchEBMError)
        assert getattr(torchebm, cls.__name__) is cls            # importable from torchebm
    for cls in (ParameterError, ShapeError, DeviceError, MemoryLimitError):
        assert not issubclass(cls, EnergySyntaxError)
    from torchebm.symbolic import EnergySyntaxError as same      # where it always was
    assert same is EnergySyntaxError


def _raised(fn):
    with pytest.raises(TorchEBMError) as info:
        fn()
    return info.value


def test_device_mismatch_is_a_device_error():
    exc = _raised(lambda: GaussianEnergy(torch.zeros(2), torch.eye(2))(
        torch.zeros(3, 2, device="meta")))
    assert type(exc) is DeviceError and "energy.to" in str(exc)


def test_moving_to_a_missing_device_fails_at_once():
    energy = from_expression("sum(x**2)")              # no parameters: nothing to move
    if torch.cuda.is_available():
        assert energy.to("cuda") is energy
        return
    for move in (lambda: energy.to("cuda"), lambda: energy.to(torch.device("cuda", 0)),
                 lambda: energy.to("cuda", torch.float64), energy.cuda):
        exc = _raised(move)
        assert type(exc) is DeviceError and "not available" in str(exc) and "'cpu'" in str(exc)
    assert energy.to("cpu") is energy and energy.to(torch.float64) is energy


def test_hessian_memory_guard_is_a_memory_limit_error():
    energy = from_expression("sum(x**4)")
    exc = _raised(lambda: energy.hessian(torch.zeros(10, 4), max_elements=100))
    # 10 * 4 * 4 = 160 elements > 100
    assert type(exc) is MemoryLimitError and "160 elements" in str(exc)
    assert "max_elements=" in str(exc)


def test_singular_inverse_is_a_singular_matrix_error():
    energy = from_expression("x @ inverse(M) @ x", M=torch.ones(2, 2))   # rank 1
    exc = _raised(lambda: energy(torch.zeros(1, 2)))
    assert type(exc) is SingularMatrixError and "invertible" in str(exc)


def test_constraint_violation_is_a_parameter_error():
    exc = _raised(lambda: GaussianEnergy(torch.zeros(2), -torch.eye(2)))
    assert type(exc) is ParameterError and "positive definite" in str(exc)


def test_dimension_mismatch_is_a_shape_error():
    energy = from_expression("sum((x - mu)**2)", mu=torch.zeros(3))
    exc = _raised(lambda: energy(torch.zeros(2, 2)))
    assert type(exc) is ShapeError and "3" in str(exc) and "2" in str(exc)


def test_bad_loss_reduction_is_a_plain_value_error():
    energy = from_expression("sum(x**2)")
    with pytest.raises(ValueError, match="reduction") as info:
        score_matching_loss(energy, torch.zeros(2, 2), reduction="avg")
    assert not isinstance(info.value, EnergySyntaxError)


def test_catching_syntax_errors_does_not_catch_runtime_faults():
    energy = from_expression("sum(x**4)")
    with pytest.raises(MemoryLimitError):
        try:
            energy.hessian(torch.zeros(10, 4), max_elements=1)
        except EnergySyntaxError:           # a user's handler for typos in formulas
            pytest.fail("a memory guard was caught as a syntax error")
    with pytest.raises(EnergySyntaxError, match="line|\\^"):
        from_expression("sum(x**2")


# -- newcomer mistakes: each message names the fix in the formula's own spelling ---------------
@pytest.mark.parametrize("formula,phrase", [
    ("sum(pow(x, 2))", "powers are written with **, e.g. x**2"),
    ("sum(pow(x - 1, a + 1))", "e.g. (x - 1)**(a + 1)"),
    ("square(x[0]) + x[1]", "e.g. x[0]**2"),
    ("x.sum()", "call the function by name, sum(x)"),
    ("(x**2).sum()", "call the function by name, sum(x**2)"),
    ("torch.sin(x[0])", "call the function by name, sin(x[0])"),
    ("sum(x[i]**2)", "'i' is not a loop index here: sum over it with a generator, "
                     "e.g. sum(x[i]**2 for i in range(n)), or use the whole vector, sum(x**2)"),
    ("sum(x[j + 1] for i in range(n - 1))", "'j' is not a loop index here (the enclosing "
                                           "generators define i)"),
    ("sum(x[i] for i in range(N))", "N is the particle count only with particles=d"),
])
def test_newcomer_mistakes_name_the_fix(formula, phrase):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # a, i, j, N are unset parameters as well
        with pytest.raises(EnergySyntaxError) as info:
            from_expression(formula, a=1.0)
    assert phrase in str(info.value)
    assert "()?" not in str(info.value)          # the old hint "did you mean ** (x**2)()?"


def test_particle_count_mismatch_says_how_many_coordinates_fit():
    """particles=2 with n = 3: 2 coordinates make one particle, the third is left over."""
    energy = from_expression("sum(norm(x[i]) for i in range(N))", particles=2)
    with pytest.raises(ShapeError) as info:
        energy(torch.randn(4, 3))
    message = str(info.value)
    assert "only the first 2 of the 3 coordinates make whole particles" in message
    assert "3 - 2" not in message


def test_a_matrix_given_as_a_vector_is_named_in_the_matmul_error():
    """``x @ P @ x`` with P given as a vector: ``x @ P`` is a dot product, so the second
    ``@`` meets a number; the message says which side is already a number and why."""
    with pytest.raises(EnergySyntaxError, match=r"left side, 0\.5 \* x @ P, is already a "
                                                r"number.*give it a 2-D value \[n, n\]"):
        from_expression("0.5*x @ P @ x", P=torch.ones(2))
    from_expression("0.5*x @ P @ x", P=torch.eye(2))      # a matrix: fine


def test_argument_errors_of_samplers_losses_and_fit_are_torchebm_errors():
    """README: every exception torchebm raises on purpose is a TorchEBMError (and the
    builtin); a new user's ``except torchebm.TorchEBMError`` missed these."""
    from torchebm.core import DoubleWellEnergy
    from torchebm.losses import ContrastiveDivergence, SlicedScoreMatching
    from torchebm.samplers import LangevinDynamics, effective_sample_size
    from torchebm.training import fit
    energy = DoubleWellEnergy(trainable=True)
    bad = [lambda: LangevinDynamics(energy, step_size=0.0),
           lambda: ContrastiveDivergence(energy, LangevinDynamics(energy), k_steps=0),
           lambda: SlicedScoreMatching(energy, n_projections=0),
           lambda: fit(energy, torch.randn(8, 2), SlicedScoreMatching(energy), epochs=0),
           lambda: effective_sample_size(torch.randn(0, 10, 2))]
    for call in bad:
        with pytest.raises(torchebm.ArgumentError) as info:
            call()
        assert isinstance(info.value, torchebm.TorchEBMError)
        assert isinstance(info.value, ValueError)
