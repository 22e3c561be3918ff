"""The front end: what the language accepts, and a clear error for everything else."""

import os

import pytest
import sympy as sp
import torch

from torchebm.errors import ParameterError, ShapeError
from torchebm.symbolic import EnergySyntaxError, from_expression
from torchebm.symbolic.parse import parse_formula

x = torch.randn(3, 2, dtype=torch.float64)


@pytest.mark.parametrize("formula,match", [
    ("x^2", r"\*\*"),
    ("sum(x", "syntax error"),
    ("sum(foo(x))", "unknown function 'foo'"),
    ("sum(sine(x))", "did you mean sin"),
    ("x.real", "attribute access"),
    ("import os", "syntax error|not allowed"),
    ("(lambda t: t)(x)", "syntax error|not allowed"),
    ("sum(x) + 'a'", "not a number"),
    ("sum(x) + f'{x}'", "f-string|not allowed"),
    ("x**2", "wrap it in a reduction"),
    ("1 + 2", "does not depend on x"),
    ("a*b", "does not depend on x"),
    ("sum(x[i*i] for i in range(n))", "not affine"),
    ("sum(x[i] for i in [1, 2])", "range"),
    ("sum(x[i] for i in range(n) if i > 0)", "where"),
    ("sum(x[::2])", "step"),
    ("sum(x) + 9**9**9**9", "float64 range"),
    ("sum(x) + 10**400", "float64"),
    ("sum(x == 1)", "'=='"),
    ("x if x else x", "where"),
    ("sum(x) + _secret", "reserved"),
    ("sum(x, x)", "one vector"),
    ("where(x > 0, x)", "3 arguments"),
    ("sum(x) + x[0:1]", "vector"),
    ("", "empty"),
])
def test_rejected_with_clear_error(formula, match):
    with pytest.raises(EnergySyntaxError, match=match):
        from_expression(formula)(x)


def test_syntax_error_points_at_the_column():
    with pytest.raises(EnergySyntaxError) as info:
        parse_formula("sum(x) + foo(x)")
    assert info.value.col == 9 and info.value.lineno == 1
    assert "^" in str(info.value)


def test_injection_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for attack in ["sum(x) + __import__('os').system('touch pwned')",
                   "sum(x) # \"\"\"\nimport os",
                   "sum(x)\n__import__('os').system('touch pwned')",
                   "sum([c for c in ().__class__.__base__.__subclasses__()])"]:
        with pytest.raises(EnergySyntaxError):
            from_expression(attack)(x)
    assert not os.path.exists("pwned")


def test_comment_with_quotes_does_not_escape_the_docstring():
    E = from_expression('sum(x**2)  # """ \\ \' end')
    torch.testing.assert_close(E(x), (x**2).sum(-1))
    compile(E.source, "<check>", "exec")


def test_huge_inputs_are_refused_quickly():
    with pytest.raises(EnergySyntaxError):
        from_expression("(" * 500 + "sum(x)" + ")" * 500)
    with pytest.raises(EnergySyntaxError):
        from_expression("sum(x)\x00")
    big = "sum(x) + " + " + ".join(["x[0]"] * 20000)
    with pytest.raises(EnergySyntaxError):
        from_expression(big + "+" * 10)


def test_keyword_and_sympy_names_are_plain_parameters():
    parsed = parse_formula("lambda*sum(x) + E + I + N + S + O + Q + zeta + beta + gamma")
    assert set(parsed.params) == {"lambda", "E", "I", "N", "S", "O", "Q", "zeta", "beta", "gamma"}
    names = {s.name for s in parsed.expression.free_symbols if isinstance(s, sp.Symbol)}
    assert names >= {"lambda", "E", "I", "N", "S", "O", "Q", "zeta", "beta", "gamma"}


def test_called_name_is_function_bare_name_is_parameter():
    parsed = parse_formula("mean((x - mean)**2)", {"mean": 1})
    assert set(parsed.params) == {"mean"}


def test_unknown_keyword_suggests_closest_parameter():
    with pytest.raises(ParameterError, match="did you mean 'alpha'"):
        from_expression("alpha*sum(x**2)", alpah=1.0)


def test_parameter_size_mismatch_names_parameter_and_sizes():
    E = from_expression("sum((x - mu)**2)", mu=torch.zeros(3))
    with pytest.raises(ShapeError, match=r"mu.*3|3.*mu") as info:
        E(torch.zeros(4, 2))
    assert "2" in str(info.value)


def test_component_out_of_range_names_index_and_n():
    E = from_expression("x[3]**2 + sum(x)")
    with pytest.raises(ShapeError, match=r"x\[3\].*n = 2"):
        E(torch.zeros(4, 2))
    E = from_expression("sum(x[i+1] for i in range(n))")
    with pytest.raises(ShapeError, match=r"x\[i \+ 1\].*n = 2"):
        E(torch.zeros(4, 2))


def test_literals_keep_float64_precision():
    E = from_expression("sum(0.1*x**2) + 1e-17*sum(x)")
    assert "0.1*" in E.source or "0.1)" in E.source
    assert "1e-17" in E.source
    xx = torch.tensor([[3.0]], dtype=torch.float64)
    assert float(E(xx)) == 0.1 * 9.0 + 1e-17 * 3.0


def test_literals_that_underflow_to_zero_are_refused():
    import pytest
    from torchebm.errors import EnergySyntaxError
    from torchebm.symbolic import from_expression
    with pytest.raises(EnergySyntaxError, match="underflows to 0"):
        from_expression("sum(x**2)*1e-400")
    from_expression("sum(x**2)*0.0 + sum(x)")      # a written zero is a zero
    from_expression("sum(x**2)*1e-300")            # tiny but representable
