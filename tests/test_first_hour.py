"""Issue 14, a new user's first hour: typos are not silent, the source matches the
instance, the CLI infers the dimension only when it is certain, small CLI and plot fixes.
Each test takes the reproducer of the issue as its input."""

import subprocess
import sys
import warnings

import pytest
import torch

from torchebm.core import RastriginEnergy
from torchebm.errors import (EnergySyntaxError, ParameterError, ShapeError,
                             UnsetParameterWarning)
from torchebm.symbolic import from_expression
from torchebm.symbolic.cli import main

X = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.25, -0.5]], dtype=torch.float64)


# -- 1. parameters given no value ---------------------------------------------------------------
@pytest.mark.parametrize("formula,names,hints", [
    ("sum(x**2 + sinx)", ["'sinx'"], ["sin(x)"]),
    ("x_1**2 + x[1]**2", ["'x_1'"], ["the component x[1]", "x[0]"]),
    ("sum((x - mu)**2/(2*sigma**2))", ["'mu'", "'sigma'"], ["mu=..., sigma=..."]),
    ("sum(x**2)*cos_x + sqrx", ["'cos_x'", "'sqrx'"], ["cos(x)", "sqrt(x)"]),
])
def test_unset_parameters_warn_once_naming_each_and_the_likely_intent(formula, names, hints):
    with pytest.warns(UnsetParameterWarning) as record:
        energy = from_expression(formula)
    assert len(record) == 1                                 # one warning for all of them
    message = str(record[0].message)
    assert record[0].filename == __file__                   # points at the user's call
    for text in names + hints:
        assert text in message, (text, message)
    assert "1.0" in message and "strict=True" in message
    for _, attr, _ in energy.param_specs:                   # the documented default stays
        assert float(getattr(energy, attr)) == 1.0


def test_defaulted_parameters_still_compute_with_one():
    with pytest.warns(UnsetParameterWarning):
        energy = from_expression("sum((x - mu)**2/(2*sigma**2))")
    torch.testing.assert_close(energy(X), ((X - 1.0)**2 / 2).sum(-1))


def test_given_parameters_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_expression("sum((x - mu)**2/(2*sigma**2))", mu=0.0, sigma=2.0)
        from_expression("sum(x**2)")


def test_strict_turns_the_warning_into_an_error():
    with pytest.raises(ParameterError, match=r"'sinx' \(did you mean sin\(x\)\?\)"):
        from_expression("sum(x**2 + sinx)", strict=True)
    with pytest.raises(ParameterError, match="mu=..., sigma=..."):
        from_expression("sum((x - mu)**2/(2*sigma**2))", strict=True)
    with pytest.raises(ParameterError, match=r"'sigma' was given no value") as info:
        from_expression("sum((x - mu)**2/(2*sigma**2))", strict=True, mu=0.0)
    assert "'mu'" not in str(info.value)
    energy = from_expression("sum((x - mu)**2/(2*sigma**2))", strict=True, mu=0.0, sigma=1.0)
    torch.testing.assert_close(energy(X), (X**2 / 2).sum(-1))


def test_no_dependence_on_x_names_the_components():
    with pytest.raises(EnergySyntaxError) as info:
        from_expression("x1**2 + x2**2")
    message = str(info.value)
    assert "does not depend on x" in message and "x[0], x[1]" in message
    assert "x1 -> x[1]" in message and "count from 1, write x[0], x[1]" in message
    with pytest.raises(EnergySyntaxError, match=r"sinx -> sin\(x\)"):
        from_expression("sinx + 2")
    with pytest.raises(EnergySyntaxError) as info:              # no likely intent: no hint
        from_expression("a*b")
    assert "did you mean" not in str(info.value)


def test_errors_about_a_scalar_name_the_scalar_parameter_and_how_to_give_a_value():
    # a forgotten matrix parameter: '@' of scalars, and the message says why P is a scalar
    with pytest.raises(EnergySyntaxError) as info:
        from_expression("x @ P @ x")
    message = str(info.value)
    assert "'P' is a scalar parameter because no value was given" in message
    assert "P=torch.eye(2)" in message and "-p P=[[1,0],[0,1]]" in message
    # a vector parameter given a number
    with pytest.raises(EnergySyntaxError) as info:
        from_expression("sum((x - y)**2) + sum(y**2)", y=2.0)
    assert "'y' was given a scalar value; pass a vector value instead" in str(info.value)
    # sum() over a name that is not x: the variable is x
    with pytest.raises(EnergySyntaxError) as info:
        from_expression("sum(y**2)")
    message = str(info.value)
    assert "'y' is a scalar parameter" in message and "the variable is x" in message
    # with the values given, both formulas compile and agree with the hand-written energy
    P = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    X2 = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(from_expression("x @ P @ x", P=P)(X2),
                               torch.einsum("bi,ij,bj->b", X2, P, X2))


def test_a_formula_of_fixed_components_takes_any_wider_x_and_ignores_the_rest():
    # x[0] and x[2] only: n = 3 is the smallest x; wider x adds coordinates that do
    # not enter the energy (gradient 0 there), as docs/language.md says; narrower x
    # is a ShapeError naming the component
    energy = from_expression("x[0]**2 + 3*x[2]")
    X4 = torch.randn(4, 4, dtype=torch.float64)
    torch.testing.assert_close(energy(X4), X4[:, 0]**2 + 3 * X4[:, 2])
    want = torch.stack([2 * X4[:, 0], torch.zeros(4, dtype=torch.float64),
                        torch.full((4,), 3.0, dtype=torch.float64),
                        torch.zeros(4, dtype=torch.float64)], -1)
    torch.testing.assert_close(energy.gradient(X4), want)
    with pytest.raises(ShapeError, match=r"x\[2\]"):
        energy(torch.randn(4, 2))
    from torchebm.symbolic.api import components_dimension
    from torchebm.symbolic.parse import parse_formula
    assert components_dimension(parse_formula("x[0]**2 + 3*x[2]", {}).expression) == 3
    assert components_dimension(parse_formula("x[0]**2 + sum(x)", {}).expression) is None


def test_hints_do_not_fire_on_ordinary_names():
    from torchebm.symbolic.hints import likely_intent
    for name in ("sigma", "mu", "relax", "ax", "x0", "y0", "lambda", "tax", "kappa"):
        assert likely_intent(name) in (None, "x[0]"), name
    assert likely_intent("x0") == "x[0]" and likely_intent("x_12") == "x[12]"
    assert likely_intent("expx") == "exp(x)" and likely_intent("tanhx") == "tanh(x)"
    assert likely_intent("sinx") == "sin(x)" and likely_intent("sqrx") == "sqrt(x)"
    assert likely_intent("sin_x") == "sin(x)" and likely_intent("logx") == "log(x)"


# -- 2. E.source is this instance's ------------------------------------------------------------
@pytest.mark.slow
def test_source_carries_the_instance_values(tmp_path):
    energy = from_expression("sum(a*x**2 + b*sin(x))", a=1.0, b=0.5)
    src = energy.source
    assert "def __init__(self, a=1.0, b=0.5, *, trainable=False):" in src
    assert "Default: 0.5." in src and "Default: 1.0." in src
    assert "b=1.0" in energy.class_source               # the class itself keeps 1.0
    path = tmp_path / "pasted.py"                        # pasted into a file, it is the same
    path.write_text(src)
    proc = subprocess.run(
        [sys.executable, "-c",
         f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r})\n"
         "from pasted import ExpressionEnergy\n"
         "x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)\n"
         "print(float(ExpressionEnergy()(x)))"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    expected = float((x**2 + 0.5 * torch.sin(x)).sum())     # a = 1, b = 0.5 by hand
    assert float(proc.stdout) == pytest.approx(expected, rel=1e-15)


def test_source_of_vectors_keywords_and_built_ins():
    mu = torch.tensor([0.25, -2.0], dtype=torch.float64)
    energy = from_expression("sum(lambda*(x - mu)**2)", params={"lambda": 0.75}, mu=mu)
    src = energy.source
    assert "mu=(0.25, -2.0)" in src and "lambda_=0.75" in src
    assert "lambda (float or Tensor, scalar): parameter of the formula. Default: 0.75." in src
    namespace = {}
    exec(compile(src, "<pasted>", "exec"), namespace)
    again = namespace["ExpressionEnergy"]()
    torch.testing.assert_close(again(X[:, :2]), 0.75 * ((X[:, :2] - mu)**2).sum(-1))
    built_in = RastriginEnergy(a=3.0)
    assert "def __init__(self, a=3.0, *, trainable=False):" in built_in.source
    assert "Default: 3.0." in built_in.source and "a=10.0" in built_in.class_source
    with torch.no_grad():
        built_in.a.fill_(4.5)                               # the source follows the values
    assert "a=4.5" in built_in.source


# -- 4. the command line's dimension --------------------------------------------------------------
MIXTURE = "-logsumexp(log(w[k]) - 0.5*sum((x - M[k, :])**2)/s**2 for k in range(len(w)))"
MIXTURE_P = ["-p", "w=[0.2, 0.3, 0.5]", "-p", "M=[[0, 0], [2, 0], [0, 2]]", "-p", "s=0.5"]
MUELLER_BROWN = ("sum(A[k]*exp(a[k]*(x[0] - x0[k])**2 + b[k]*(x[0] - x0[k])*(x[1] - y0[k])"
                 " + c[k]*(x[1] - y0[k])**2) for k in range(4))")
MUELLER_BROWN_P = ["-p", "A=[-200, -100, -170, 15]", "-p", "a=[-1, -1, -6.5, 0.7]",
                   "-p", "b=[0, 0, 11, 0.6]", "-p", "c=[-10, -10, -6.5, 0.7]",
                   "-p", "x0=[1, 0, -0.5, -1]", "-p", "y0=[0, 0.5, 1.5, 1]"]


def test_sample_infers_the_dimension_a_mixture_fixes(capsys):
    # 3 components in 2-D: w has length 3 and M is 3 x 2; x - M[k, :] fixes n = 2
    assert main(["sample", MIXTURE, *MIXTURE_P, "--chains", "4", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "n = 2 (x is combined with M, with 2 columns)" in out and "in 2-D" in out


def test_sample_asks_for_dim_naming_the_candidates(capsys):
    formula = "sum(c[i]*x[i]**2 for i in range(len(c))) + sum(W[i, j] for i in range(2) " \
              "for j in range(2))*sum(x)"
    assert main(["sample", formula, "-p", "c=[1, 2, 3]", "-p", "W=[[1, 0], [0, 1]]",
                 "--chains", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "2 (W (rows), W (columns)), 3 (c)" in err and "--dim 2 or --dim 3" in err
    assert main(["sample", formula, "-p", "c=[1, 2, 3]", "-p", "W=[[1, 0], [0, 1]]",
                 "--dim", "3", "--chains", "2", "--steps", "2"]) == 0


def test_sample_uses_a_size_every_parameter_agrees_on(capsys):
    assert main(["sample", "sum(c[i]*x[i]**2 for i in range(len(c)))", "-p", "c=[1, 2, 3]",
                 "--chains", "2", "--steps", "2"]) == 0
    assert "n = 3 (every vector and matrix parameter has size 3)" in capsys.readouterr().out


def test_verify_checks_exactly_the_fixed_dimension_and_says_so(capsys):
    assert main(["verify", MUELLER_BROWN, *MUELLER_BROWN_P, "--no-speed", "--points", "2"]) == 0
    out = capsys.readouterr().out
    assert "checking n = 2 only (the formula reads only the components x[0] .. x[1])" in out
    lines = out.splitlines()
    col = next(ln for ln in lines if ln.startswith("energy")).index(" n ") + 1
    rows = [ln for ln in lines if "~" in ln and ln.rstrip().endswith(("ok", "FAIL"))]
    assert len(rows) >= 5 and {ln[col] for ln in rows} == {"2"}   # n column: 2 only
    assert main(["verify", MIXTURE, *MIXTURE_P, "--no-speed", "--points", "2"]) == 0
    assert "checking n = 2 only" in capsys.readouterr().out


# -- 6. smaller items ---------------------------------------------------------------------------
def test_verify_table_first_column_is_short(capsys):
    assert main(["verify", MUELLER_BROWN, *MUELLER_BROWN_P, "--no-speed", "--points", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("energy"))
    assert header.index(" n ") <= 40                        # not as wide as the formula
    assert any(ln.startswith("[1] " + MUELLER_BROWN) for ln in lines)   # given in full once


def test_cli_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = capsys.readouterr().out
    assert "-p PARAM, --param PARAM" in out and "parameter value of the formula" in out
    assert "--strict" in out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "MALA (Metropolis-adjusted) or HMC (default: mala)" in out


def test_cli_strict_and_warning(capsys):
    assert main(["show", "sum(x**2 + sinx)", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "'sinx' (did you mean sin(x)?)" in err and "without --strict" in err
    assert main(["show", "sum((x - mu)**2)"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning:") and "-p mu=VALUE" in err


def test_long_plot_titles_fit_the_figure():
    pytest.importorskip("matplotlib")
    from torchebm import plotting
    energy = from_expression("3*(x[0]**2 - 1)**2 + 0.5*(x[1] - x[0]**2)**2")
    title = ("3*(x[0]**2 - 1)**2 + 0.5*(x[1] - x[0]**2)**2 + 0.1*sin(3*x[0])*cos(2*x[1]) "
             "+ 0.01*(x[0]**4 + x[1]**4)  (mala)")
    ax = plotting.plot_landscape(energy, title=title, resolution=20)
    fig = ax.figure
    fig.canvas.draw()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert ax.get_title().replace("\n", " ").split() == title.split()     # nothing lost
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_package_metadata_names_an_author():
    import tomllib
    from pathlib import Path
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert meta["authors"] and meta["authors"][0]["name"]


def test_verify_without_a_fixed_dimension_checks_several(capsys):
    assert main(["verify", "sum(x**4 - x**2)", "--no-speed", "--points", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any("checking n =" in ln for ln in lines)
    col = next(ln for ln in lines if ln.startswith("energy")).index(" n ") + 1
    rows = [ln for ln in lines if ln.rstrip().endswith(("ok", "FAIL")) and "~" in ln]
    assert {ln[col] for ln in rows} == {"1", "2", "5"}


def test_landscape_of_a_float32_network():
    """A hand-written float32 energy (an nn.Linear network) gets float32 grid points; the
    grid comes back in float64 (a new user's MLP failed with a dtype mismatch)."""
    from torch import nn

    from torchebm import plotting
    from torchebm.core import BaseEnergyFunction

    class Net(BaseEnergyFunction):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x).squeeze(-1)
    energy = Net()
    gx, gy, e = plotting.energy_grid(energy, resolution=5)
    assert e.dtype == torch.float64 and e.shape == (5, 5)
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).float()
    torch.testing.assert_close(e.reshape(-1), energy(pts).detach().double())
