"""The trust boundary (issue 12): no outside text reaches generated code unchecked,
the compile budget, locks per formula, the per-call memory guard, true parameter state
and the command line's hygiene. Each reproducer of the issue is a test here."""

import ast
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from torchebm.core import GaussianEnergy, HarmonicEnergy
from torchebm.errors import EnergySyntaxError, MemoryLimitError, ParameterError
from torchebm.symbolic import from_expression
from torchebm.symbolic import api, gate
from torchebm.symbolic.cli import main
from torchebm.symbolic.definitions import load_definition

ROOT = Path(__file__).resolve().parent.parent
T = torch.float64


def _main(args, capsys):
    """The command line in this process (argument checks need no fresh interpreter, which
    costs seconds of imports): its exit status and what it wrote to stderr."""
    try:
        status = main(args)
    except SystemExit as exc:           # argparse's own errors exit with status 2
        status = exc.code
    return status, capsys.readouterr().err


# -- code injection: the three routes of the issue ---------------------------------------------
def test_class_name_from_the_command_line_cannot_inject_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = 'X(CompiledEnergy):\n    pass\nimport os; os.system("touch marker")\nclass E'
    status, err = _main(["show", "sum(x**2)", "--name", name, "-o", "e.py"], capsys)
    assert status == 2 and "is not a Python identifier" in err
    assert not (tmp_path / "e.py").exists() and not (tmp_path / "marker").exists()


def test_definition_fields_cannot_inject_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.toml").write_text(
        'name = "F"\nformula = "sum(x**2)"\n'
        'max_dim = "9 or __import__(\'os\').system(\'touch marker\')"\n')
    status, err = _main(["verify", "f.toml", "--dims", "2"], capsys)
    assert status == 2
    assert "f.toml:3: 'max_dim' must be an integer" in err
    assert not (tmp_path / "marker").exists()


def test_definition_file_names_cannot_inject_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "e\nimport os; os.system('touch marker')\n.toml").write_text(
        'name = "E"\nformula = "sum(x**2)"\n')
    status, err = _main(["verify", str(defs)], capsys)
    assert status == 2 and "a definition file is named like" in err
    status, err = _main(["build", "--definitions", str(defs), "--output", str(tmp_path / "out")],
                        capsys)
    assert status == 2 and "a definition file is named like" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "marker").exists()


def test_generated_names_never_alias_parameters():
    # 'adj_mv0' was the emitter's own name for the adjoint of W @ x
    W = torch.tensor([[1, 2, 0], [0, 1, -1], [.5, 0, 1]], dtype=T)
    energy = from_expression("sum(tanh(W @ x) * tanh(W @ x)) * adj_mv0", W=W, adj_mv0=2.0)
    x = torch.tensor([.3, -1.2, .8], dtype=T, requires_grad=True)
    reference = 2.0 * torch.tanh(W @ x).square().sum()            # the formula, by hand
    want = torch.autograd.grad(reference, x)[0]
    torch.testing.assert_close(energy.gradient(x)[0], want, rtol=1e-12, atol=0)
    torch.testing.assert_close(want, torch.tensor([0.44, -0.72, 1.61], dtype=T), atol=5e-3,
                               rtol=0)     # the values, rounded
    v = torch.tensor([1.0, -2.0, 0.5], dtype=T)
    hv = torch.autograd.functional.hvp(lambda z: 2.0 * torch.tanh(W @ z).square().sum(),
                                       x.detach(), v)[1]
    torch.testing.assert_close(energy.hessian_vector_product(x.detach(), v)[0], hv,
                               rtol=1e-12, atol=1e-14)
    for stem in ("grad", "hvp", "hdiag", "adj_x", "grad_r", "hvp_1"):
        e = from_expression(f"sum(x**2) * {stem}", params={stem: 3.0})
        torch.testing.assert_close(e.gradient(torch.ones(1, 2, dtype=T)),
                                   torch.full((1, 2), 6.0, dtype=T))


# -- printed values -------------------------------------------------------------------------------
@pytest.mark.slow
def test_parameter_values_print_so_that_the_module_imports(tmp_path):
    assert main(["show", "sum(a*x**2) + b", "-p", "a=1e999", "-p", "b=-1e999", "--name", "Inf",
                 "-o", str(tmp_path / "inf_energy.py")]) == 0
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "import math, torch\nfrom inf_energy import Inf\n"
            "e = Inf()\nassert math.isinf(float(e.a)) and float(e.b) == -math.inf\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_huge_integers_are_refused_with_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, err = _main(["show", "sum(a*x**2)", "-p", "a=1" + "0" * 400], capsys)
    assert status == 2 and "outside the float64 range" in err
    assert "Traceback" not in err
    with pytest.raises(EnergySyntaxError, match="outside the float64 range"):
        gate.number(10 ** 400)


@pytest.mark.parametrize("value, text", [(0.1, "0.1"), (float("inf"), "float('inf')"),
                                         (-float("inf"), "-float('inf')"),
                                         (float("nan"), "float('nan')"), (3, "3.0")])
def test_numbers_round_trip(value, text):
    assert gate.number(value) == text
    got = eval(text, {"__builtins__": {"float": float}})     # the printed literal, evaluated
    assert got == value or (got != got and value != value)


@pytest.mark.parametrize("name", ["a b", "1x", "class", "match", "x\n", "é", "", "torch",
                                  "a" * 300, 3])
def test_identifiers_are_checked(name):
    with pytest.raises(EnergySyntaxError):
        gate.identifier(name, "class name", reserved={"torch"})


def test_docstrings_keep_any_text():
    text = 'a """ b \\ c "" \x00 \ud800 \u2028 \r tab\t \U0001F600 "'
    literal = gate.docstring(text)
    assert ast.literal_eval(literal) == text + "\n"


# -- definition files: the schema --------------------------------------------------------------
@pytest.mark.parametrize("body, match", [
    ('name = "A"\nformula = "sum(a*x**2)"\n[params.a]\ndefault = nan\n',
     r"a\.toml:4: parameter a: default nan is not a finite"),
    ('name = "A"\nformula = "sum(x**2)"\nmin_dim = 1e400\n', r"a\.toml:3: 'min_dim' must be an integer"),
    ('name = "A"\nformula = "sum(x**2)"\nmin_dim = 1979-05-27\n', r"a\.toml:3: 'min_dim' must be"),
    ('name = "A"\nformula = "sum(x**2)"\ndoc = "a\\u0000b"\n', r"a\.toml:3: 'doc' contains the control"),
    ('name = "A"\nformula = "sum(x**2)"\ncolour = 1\n', r"a\.toml:3: unknown key 'colour'"),
    ('name = "A"\nformula = "sum(a*x)"\n[params.a]\n[params.a]\n', r"a\.toml: .*"),
    ('name = "A b"\nformula = "sum(x**2)"\n', r"a\.toml:1: name 'A b' is not a Python class"),
    ('name = "A"\nformula = "sum(x**2)"\nmin_dim = 3\nmax_dim = 2\n', r"max_dim = 2 is below"),
    ('name = "A"\nformula = "sum(x**2)"\nmin_dim = true\n', r"'min_dim' must be an integer"),
    ('name = "A"\nformula = "sum(m*x)"\n[params.m]\nshape = "[n]"\ndefault = [1, "2"]\n',
     r"default must hold numbers"),
    ('name = "A"\nformula = "sum(x**2)"\n[params."a b"]\n', r"parameter name 'a b' must be"),
    ('formula = "sum(x**2)"\n', r"'name' is required"),
    ('name = "A"\nformula = "sum(a*x**2)"\n[params.a]\nconstraint = ["positive"]\n',
     r"a\.toml:4: parameter a: constraint \['positive'\] is not one of"),
    ('name = "A"\nformula = "sum(a*x**2)"\n[params.a]\nconstraint = "positive"\ndefault = -1.0\n',
     r"a\.toml:5: parameter a: default -1.0 is not positive"),
    ('name = "A"\nformula = "0.5*x @ inverse(S) @ x"\n[params.S]\nshape = "[n, n]"\n'
     'constraint = "positive_definite"\ndefault = [[1.0, 2.0], [2.0, 1.0]]\n',
     r"a\.toml:6: parameter S: default is not a symmetric positive definite"),
])
def test_definition_schema(tmp_path, body, match):
    path = tmp_path / "a.toml"
    path.write_text(body)
    with pytest.raises(EnergySyntaxError, match=match):
        load_definition(path)


@pytest.mark.parametrize("filename", ["my-energy.toml", "1x.toml", "é.toml", "a b.toml",
                                      "a.toml.bak"])
def test_definition_file_names_must_be_identifiers(tmp_path, filename):
    path = tmp_path / filename
    path.write_text('name = "A"\nformula = "sum(x**2)"\n')
    with pytest.raises(EnergySyntaxError, match="named like 'my_energy.toml'"):
        load_definition(path)


def test_definition_files_are_regular_and_bounded(tmp_path):
    """A definition that is a device or is larger than the bound is refused before it is
    read (an attack pass pointed one at /dev/zero: it read until memory ran out)."""
    import os
    from torchebm.symbolic import definitions
    zero = tmp_path / "zero.toml"
    os.symlink("/dev/zero", zero)
    with pytest.raises(EnergySyntaxError, match="not a regular file"):
        load_definition(zero)
    big = tmp_path / "big.toml"
    body = 'name = "A"\nformula = "sum(x**2)"\n'
    big.write_text(body + "# " + "x" * definitions.MAX_DEFINITION_BYTES + "\n")
    with pytest.raises(EnergySyntaxError, match="more than a definition file may hold"):
        load_definition(big)
    ok = tmp_path / "ok.toml"
    ok.write_text(body)
    assert load_definition(ok).formula == "sum(x**2)"


# -- compile budget --------------------------------------------------------------------------------
def _doubling(lines):
    return ("w0 = x\n" + "\n".join(f"w{i} = w{i-1}*w{i-1}" for i in range(1, lines))
            + f"\nsum(w{lines - 1})")


@pytest.mark.slow
def test_local_definitions_expand_once():
    # before, the work doubled per line: 30 lines ran for hours. A subprocess with a
    # generous ceiling checks termination, not speed.
    code = ("import torch\nfrom torchebm.symbolic import from_expression\n"
            f"e = from_expression({_doubling(30)!r})\n"
            "x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)\n"
            "print(float(e(x)), e.gradient(x).tolist())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    # x**(2**29) at +-1: energy 2, gradient 2**29 * x**(2**29 - 1)
    assert proc.stdout.split()[0] == "2.0"
    assert proc.stdout.split(" ", 1)[1].strip() == f"[[{2.0**29}, {-2.0**29}]]"


def test_definition_elements_are_built_once_per_index(monkeypatch):
    from torchebm.symbolic import parse
    calls = []
    original = parse.Vector.at

    def counting(self, k):
        if k not in self.memo:
            calls.append(self.what)
        return original(self, k)
    monkeypatch.setattr(parse.Vector, "at", counting)
    parse.parse_formula(_doubling(12))
    # each of the 11 products is built once for its size probe and once for the
    # reduction's index (without the memo: 2**12 times)
    assert sum(1 for w in calls if w.startswith("w")) == 2 * 11


def test_products_too_large_to_differentiate_are_refused():
    product = "*".join(f"(x[{i % 3}] + {i})" for i in range(100))
    with pytest.raises(EnergySyntaxError, match="the gradient of this formula would write"):
        from_expression(product)
    forty = from_expression("*".join(f"(x[{i % 3}] + {i})" for i in range(40)))
    x = torch.tensor([[0.5, -0.25, 0.125]], dtype=T)
    want = torch.prod(torch.stack([x[0, i % 3] + i for i in range(40)]))
    torch.testing.assert_close(forty(x)[0], want, rtol=1e-12, atol=0)
    with pytest.raises(EnergySyntaxError, match="Hessian-vector product of this formula"):
        forty.hessian_vector_product(x, torch.ones_like(x))     # generated on first use


def test_deep_nesting_is_a_syntax_error_or_compiles():
    """150 nested sines: SymPy's recursion may or may not reach the limit (it depends on
    the stack already in use); either way no RecursionError escapes, and a compiled
    energy is right."""
    try:
        energy = from_expression("sin(" * 150 + "x[0]" + ")" * 150)
    except EnergySyntaxError as exc:
        assert "nested too deeply" in str(exc)
        return
    x = torch.tensor([[0.5]], dtype=T)
    want = x[0, 0]
    for _ in range(150):
        want = torch.sin(want)
    torch.testing.assert_close(energy(x)[0], want, rtol=1e-12, atol=0)


def test_recursion_anywhere_in_the_compiler_is_a_syntax_error(monkeypatch):
    from torchebm.symbolic import compiler

    def overflow(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(compiler, "lower", overflow)
    with pytest.raises(EnergySyntaxError, match="nested too deeply"):
        from_expression("sum(x**2) + 0.0625*x[0]")


def test_second_order_code_is_generated_on_first_use():
    energy = from_expression("sum(x**4) + x[0]*x[1]")
    cls = type(energy)
    assert cls._second_order is not None and "_hessian_vector_product" not in vars(cls)
    x = torch.tensor([[1.0, 2.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[6.0, 33.0]], dtype=T))
    assert cls._second_order is not None                     # first order did not need it
    torch.testing.assert_close(energy.hessian_diagonal(x), torch.tensor([[12.0, 48.0]], dtype=T))
    assert cls._second_order is None and "_hessian_vector_product" in vars(cls)
    torch.testing.assert_close(energy.hessian(x)[0], torch.tensor([[12.0, 1.0], [1.0, 48.0]],
                                                                   dtype=T))


def test_deferred_source_equals_the_complete_compile():
    from torchebm.symbolic.compiler import compile_spec
    from torchebm.symbolic.api import formula_spec
    from torchebm.symbolic.parse import parse_formula
    formula = "sum(cos(x[i] - x[j]) for i in range(n) for j in range(i + 1, n)) + sum(x**4)"
    energy = from_expression(formula)
    full = compile_spec(formula_spec(formula, parse_formula(formula, {}))).generated.source
    assert energy.class_source == full


# -- locks -----------------------------------------------------------------------------------------
def test_a_cache_hit_never_waits_for_another_compile(monkeypatch):
    cached = from_expression("sum(x**2) + 0.125")
    entered, release = threading.Event(), threading.Event()
    real = api._compile

    def slow(formula, ranks, name, particles=None):
        if "0.375" in formula:
            entered.set()
            release.wait(60)
        return real(formula, ranks, name, particles)
    monkeypatch.setattr(api, "_compile", slow)
    worker = threading.Thread(target=from_expression, args=("sum(x**2) + 0.375",))
    worker.start()
    try:
        assert entered.wait(30)
        again = from_expression("sum(x**2) + 0.125")      # returns while the other compiles
        assert type(again) is type(cached) and not release.is_set()
    finally:
        release.set()
        worker.join(60)


def test_two_threads_compile_one_formula_once(monkeypatch):
    calls = []
    real = api._compile

    def counting(formula, ranks, name, particles=None):
        calls.append(formula)
        return real(formula, ranks, name, particles)
    monkeypatch.setattr(api, "_compile", counting)
    formula = "sum(x**2) + 0.8125*x[0]"
    out = []
    threads = [threading.Thread(target=lambda: out.append(type(from_expression(formula))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert calls == [formula] and len(set(out)) == 1 and len(out) == 4


def test_parallel_parses_leave_the_recursion_limit_alone():
    from torchebm.symbolic.parse import parse_formula
    before = sys.getrecursionlimit()
    from torchebm.symbolic.parse import _ast_parse
    # the limit is raised around ast.parse only: many deep parses in parallel there, and a
    # few whole parses (SymPy work dominates those, so they are kept small)
    deep = "sum(x) + " + " + ".join(f"{k}*x[0]" for k in range(2000))
    formula = "sum(x) + " + " + ".join(f"{k}*x[0]" for k in range(50))
    errors = []

    def parse():
        try:
            for _ in range(3):
                _ast_parse(deep)
            parse_formula(formula)
        except Exception as exc:      # a valid formula must parse in every thread
            errors.append(exc)
    threads = [threading.Thread(target=parse) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sys.getrecursionlimit() == before


# -- runtime memory guard --------------------------------------------------------------------------
def test_memory_guard_names_the_sizes_and_the_knob():
    energy = from_expression("sum(x[i % n] for i in range(n**4))")
    with pytest.raises(MemoryLimitError, match="max_level_elements") as err:
        energy(torch.zeros(200, 40))            # 200 x 40**4 = 5.1e8 elements > 2**28
    assert "2560000 terms per sample" in str(err.value) and "batch of 200" in str(err.value)
    x = torch.randn(3, 5, dtype=T)
    want = x.sum(-1) * 125                       # every component 5**4 / 5 times
    torch.testing.assert_close(energy(x), want)
    energy.max_level_elements = 2**30
    assert energy(torch.zeros(2, 20)).shape == (2,)


# -- parameter state -------------------------------------------------------------------------------
def _gauss_energy(S, x):
    return 0.5 * x @ torch.linalg.solve(S, x)


@pytest.mark.parametrize("write", ["mul", "copy", "assign_data", "numpy", "setattr"])
def test_derived_values_are_never_stale(write):
    S = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=T)
    energy = GaussianEnergy(torch.zeros(2, dtype=T), S.clone())
    x = torch.tensor([1.0, -0.5], dtype=T)
    torch.testing.assert_close(energy(x)[0], _gauss_energy(S, x))
    if write == "mul":
        energy.cov.data.mul_(2)
    elif write == "copy":
        energy.cov.data.copy_(2 * S)
    elif write == "assign_data":
        energy.cov.data = 2 * S
    elif write == "numpy":
        energy.cov.numpy()[:] = (2 * S).numpy()
    else:
        energy.cov = (2 * S).tolist()
    torch.testing.assert_close(energy(x)[0], _gauss_energy(2 * S, x), rtol=1e-13, atol=0)
    torch.testing.assert_close(energy.gradient(x)[0], torch.linalg.solve(2 * S, x),
                               rtol=1e-13, atol=0)


def test_failed_load_state_dict_changes_nothing():
    energy = GaussianEnergy(torch.tensor([0.5, -1.0], dtype=T), torch.eye(2, dtype=T))
    before = {k: v.clone() for k, v in energy.state_dict().items()}
    bad = {"mean": torch.ones(2, dtype=T), "cov": -torch.eye(2, dtype=T)}
    with pytest.raises(ParameterError, match="positive definite"):
        energy.load_state_dict(bad)
    for k, v in energy.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(RuntimeError, match="Missing key"):
        energy.load_state_dict({"mean": torch.ones(2, dtype=T)})
    assert torch.equal(energy.mean, before["mean"])


def test_assigning_a_number_sets_the_parameter():
    energy = HarmonicEnergy()
    energy.k = 3.0
    x = torch.tensor([[1.0, 2.0]], dtype=T)
    torch.testing.assert_close(energy(x), torch.tensor([0.5 * 3.0 * 5.0], dtype=T))
    trainable = HarmonicEnergy(trainable=True)
    param = trainable.k
    trainable.k = 2.5
    assert trainable.k is param and float(param.detach()) == 2.5 and param.requires_grad
    with pytest.raises(ParameterError):
        HarmonicEnergy().k = [1.0, 2.0]           # a scalar parameter
    with pytest.raises(ParameterError, match="positive definite"):
        GaussianEnergy(torch.zeros(2), torch.eye(2)).cov = [[1.0, 0.0], [0.0, -1.0]]


# -- the command line ------------------------------------------------------------------------------
def test_formulas_that_begin_with_a_minus_sign(capsys):
    assert main(["show", "-logsumexp(-(x[0] - 1)**2, -(x[0] + 1)**2)", "--name", "Neg"]) == 0
    assert "class Neg(CompiledEnergy)" in capsys.readouterr().out
    assert main(["verify", "-sum(cos(x))", "--dims", "2", "--no-speed", "--points", "1"]) == 0


def test_a_leading_space_is_not_an_indentation_error():
    energy = from_expression("  sum(x**2)")
    torch.testing.assert_close(energy(torch.ones(1, 3, dtype=T)), torch.tensor([3.0], dtype=T))


@pytest.mark.parametrize("args, match", [
    (["sample", "sum(x**2)", "--dim", "0"], "--dim: 0 is out of range"),
    (["sample", "sum(x**2)", "--chains", "-1"], "--chains: -1 is out of range"),
    (["sample", "sum(x**2)", "--step-size", "inf"], "--step-size: expected a finite number"),
    (["verify", "sum(x**2)", "--points", "0"], "--points: 0 is out of range"),
    (["verify", "sum(x**2)", "--dims", "0,2"], "--dims takes dimensions from 1"),
    (["sample", "sum(x**2)", "--plot", "no/such/folder/p.png"], "the folder no/such/folder does not"),
    (["show", "sum(x**2)", "-o", "no/such/folder/e.py"], "the folder no/such/folder does not"),
    (["sample", "sum(x**2)", "--chains", "100000000", "--dim", "100000"], "values per state"),
    (["sample", "sum(x**2)", "--chains", "100000000"], "values per state"),
    (["verify", "sum(x**2)", "--dims", "100000"], "use n <= 2000"),
    (["sample", "sum(x**2)", "--plot", "p.xyz"], "give a picture file ending in"),
    (["sample", "sum(x**2)", "--xlim", "nan", "1"], "--xlim takes two finite numbers"),
    (["sample", "sum(x**2)", "--ylim", "1", "1"], "--ylim takes two finite numbers"),
])
def test_out_of_range_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    status, err = _main(args, capsys)
    assert status == 2 and match in err and "Traceback" not in err
    assert match in err.strip().splitlines()[-1], err    # the error is one line, the last


@pytest.mark.slow
def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m torchebm.symbolic show 'sum(x**2)' | head -1",
                          shell=True, cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.startswith("# @generated") and proc.stderr == ""


# -- the gate is the only way in -------------------------------------------------------------------
OUTSIDE = re.compile(r"\b(spec|p|decl|d)\.(class_name|origin|formula|doc|summary|references|"
                     r"min_dim|max_dim|default|constraint|shape|name)\b")


def _is_gate_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "gate")


def test_emitter_prints_outside_values_only_through_the_gate():
    """Every f-string field of the emitter that holds a value from the spec (a user's or
    a definition file's text) is a call into ``gate``; the docstring is built as text and
    printed by ``gate.docstring``."""
    for module in ("emit.py", "docs.py", "build.py"):
        path = ROOT / "torchebm" / "symbolic" / module
        tree = ast.parse(path.read_text(encoding="utf-8"))
        text = path.read_text(encoding="utf-8")
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or fn.name == "class_docstring":
                continue
            # text that never becomes source: the error text of a gate call, messages
            # of raised exceptions and of echo/print
            inside_gate = {id(sub) for call in ast.walk(fn)
                           if _is_gate_call(call) or isinstance(call, ast.Raise)
                           or (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                               and call.func.id in ("echo", "print"))
                           for sub in ast.walk(call) if sub is not call}
            for node in ast.walk(fn):
                if id(node) in inside_gate:      # e.g. the error text of a gate call
                    continue
                if isinstance(node, ast.FormattedValue):
                    src = ast.get_source_segment(text, node.value)
                    if OUTSIDE.search(src):
                        assert _is_gate_call(node.value), f"{module}:{node.lineno}: {{{src}}} bypasses the gate"
                        assert node.conversion == -1, f"{module}:{node.lineno}: !r on {src}"
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "format"):
                    for kw in node.keywords:
                        src = ast.get_source_segment(text, kw.value)
                        assert not OUTSIDE.search(src) or src.startswith("gate."), \
                            f"{module}:{node.lineno}: .format({src}) bypasses the gate"
    docs = (ROOT / "torchebm" / "symbolic" / "docs.py").read_text(encoding="utf-8")
    body = docs[docs.index("def class_docstring"):docs.index("def init_method")]
    returns = [ln.strip() for ln in body.splitlines() if ln.strip().startswith("return")]
    assert returns and all(r.startswith("return gate.docstring(") for r in returns)


# -- fuzz: any text from outside gives a module of exactly the expected shape ---------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

ANY_CHAR = st.characters(blacklist_categories=())          # all of Unicode, surrogates too
ANY_TEXT = st.text(ANY_CHAR, max_size=40)


@pytest.fixture(scope="module")
def compiled_quadratic():
    from torchebm.symbolic.api import formula_spec
    from torchebm.symbolic.compiler import compile_spec
    from torchebm.symbolic.parse import parse_formula
    spec = formula_spec("sum(a*x**2)", parse_formula("sum(a*x**2)", {}))
    return compile_spec(spec)


def _top_level(source):
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            out += [("import", a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out += [("from", node.module, a.name) for a in node.names]
        elif isinstance(node, ast.ClassDef):
            out.append(("class", node.name))
        elif isinstance(node, ast.Assign):
            out.append(("assign", node.targets[0].id))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            out.append(("docstring",))
        else:
            out.append(("other", type(node).__name__))
    return out


@settings(max_examples=60, deadline=None)
@given(name=st.one_of(ANY_TEXT, st.from_regex(r"[A-Z][A-Za-z0-9_]{0,12}", fullmatch=True)),
       summary=ANY_TEXT, doc=ANY_TEXT, refs=st.lists(ANY_TEXT, max_size=3), origin=ANY_TEXT,
       formula=ANY_TEXT, pdoc=ANY_TEXT,
       default=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                         st.integers(-10**20, 10**20)))
def test_any_outside_text_gives_a_module_of_the_expected_shape(
        compiled_quadratic, name, summary, doc, refs, origin, formula, pdoc, default):
    import dataclasses
    from torchebm.symbolic.emit import RESERVED, emit_module
    from torchebm.symbolic.ir import ParamDecl
    from torchebm.symbolic.load import load_class, unload_class
    c = compiled_quadratic
    spec = dataclasses.replace(c.spec, class_name=name, summary=summary, doc=doc,
                               references=tuple(refs), origin=origin, formula=formula,
                               params=(ParamDecl("a", 0, default, pdoc),))
    try:
        gate.identifier(name, "class name", RESERVED)
    except EnergySyntaxError:
        with pytest.raises(EnergySyntaxError):
            emit_module(spec, c.parsed, c.entries)
        return
    source = emit_module(spec, c.parsed, c.entries).source
    expected = _top_level(c.generated.source)
    expected[expected.index(("class", c.spec.class_name))] = ("class", name)
    assert _top_level(source) == expected
    cls = load_class(dataclasses.replace(c.generated, source=source, class_name=name))
    try:
        assert cls.origin == origin and cls.formula == formula   # nothing lost
        squeezed = "".join(cls.__doc__.split())
        for text in [summary, doc, pdoc, *refs]:
            assert "".join(text.split()) in squeezed
        value = float(cls().a)
        assert value == float(default) or (value != value and default != default)
    finally:
        unload_class(cls)


# -- found by the attack pass -----------------------------------------------------------------------
def test_build_never_removes_or_overwrites_a_users_files(tmp_path):
    out, defs = tmp_path / "proj", tmp_path / "defs"
    out.mkdir()
    defs.mkdir()
    (out / "train.py").write_text("print(1)\n")
    (out / "setup.py").write_text("print(2)\n")
    (defs / "setup.toml").write_text('name = "Setup"\nformula = "sum(x**2)"\n')
    assert main(["build", "--definitions", str(defs), "--output", str(out)]) == 2
    assert (out / "train.py").read_text() == "print(1)\n"
    assert (out / "setup.py").read_text() == "print(2)\n"
    fresh = tmp_path / "fresh"
    assert main(["build", "--definitions", str(defs), "--output", str(fresh)]) == 0
    assert main(["build", "--definitions", str(defs), "--output", str(fresh)]) == 0   # again
    assert sorted(p.name for p in fresh.glob("*.py")) == ["__init__.py", "setup.py"]


def test_a_parameter_given_twice_on_the_command_line(capsys):
    assert main(["show", "sum(a*x)", "-p", "a=1", "-p", "a=2"]) == 2
    assert "-p a is given twice" in capsys.readouterr().err


def test_contrastive_divergence_fallback_has_a_zero_gradient():
    import warnings
    from torchebm.losses import ContrastiveDivergence
    from torchebm.samplers import LangevinDynamics
    energy = from_expression("sum(a*x**4)", a=torch.tensor(1.0), trainable=True)
    loss = ContrastiveDivergence(energy, LangevinDynamics(energy, step_size=0.5, seed=0),
                                 k_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the sampler diverges on purpose
        value, negatives = loss(3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0)))
    assert not bool(torch.isfinite(negatives).all())            # the divergence happened
    value.backward()
    assert float(value.detach()) == 0.1 and float(energy.a.grad) == 0.0   # not NaN


def test_fit_checks_the_loss_before_stepping():
    from torchebm.losses import ScoreMatching
    from torchebm.training import fit
    energy = from_expression("sum((x - mu)**2)", mu=torch.zeros(2), trainable=True)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    data[3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite data. The parameters were not updated"):
        fit(energy, data, ScoreMatching(energy), epochs=2, batch_size=16, progress=False,
            generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(energy.mu).all())


# -- found by the new-user pass ---------------------------------------------------------------------
def test_verify_draws_points_inside_the_domain(capsys):
    assert main(["verify", "sum(log(x)) + sqrt(x[0] - 1)", "--no-speed"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_a_mistyped_option_is_reported_as_an_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, err = _main(["sample", "sum(x**2)", "--steps", "10", "--stepsize", "0.1"], capsys)
    assert status == 2 and "unrecognized arguments: --stepsize 0.1" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_sampler_on_a_missing_device_fails_at_construction():
    from torchebm.errors import DeviceError
    from torchebm.samplers import MALA
    with pytest.raises(DeviceError):
        MALA(from_expression("sum(x**2)"), step_size=0.1, device="cuda")


def test_the_runtime_never_imports_the_compiler():
    """torchebm.core stands below torchebm.symbolic: no import of it, static or lazy;
    the compiler registers hooks (expression, pickling) when it is imported."""
    for path in (ROOT / "torchebm" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "symbolic" not in module, f"{path.name}:{node.lineno} imports {module}"
            if isinstance(node, ast.Import):
                assert not any("symbolic" in a.name for a in node.names), path.name
    code = ("import sys, pickle, torch\nfrom torchebm.core import HarmonicEnergy\n"
            "e = HarmonicEnergy()\ne(torch.ones(1, 2))\n"
            "assert 'torchebm.symbolic' not in sys.modules\n"
            "print(e.expression)\n")        # loads the compiler by name, on demand
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "k" in proc.stdout and "x" in proc.stdout


def test_sampler_arguments_that_would_be_ignored_are_refused():
    from torchebm.samplers import MALA
    energy = from_expression("sum(x**2)")
    with pytest.raises(ValueError, match="seed= or generator=, not both"):
        MALA(energy, step_size=0.1, seed=3, generator=torch.Generator())
    with pytest.warns(UserWarning, match="keeps no state"):
        traj = MALA(energy, step_size=0.1, seed=0).sample(
            x=torch.zeros(4, 2), n_steps=5, thin=10, return_trajectory=True)
    assert traj.shape == (4, 0, 2)
    with pytest.raises(ValueError, match="n_steps must be an int >= 0, got 2.5"):
        MALA(energy, step_size=0.1).sample(x=torch.zeros(4, 2), n_steps=2.5)


@pytest.mark.parametrize("text", ["a\x00b", "a\nimport os", "a\rb", "a\u2028b", "é", "a\x0cb"])
def test_comment_text_stays_one_comment_line(text):
    line = "# " + gate.comment(text)
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    tree = ast.parse(line + "\nvalue = 1\n")
    assert [type(node).__name__ for node in tree.body] == ["Assign"]


def test_the_formula_in_generated_comments_cannot_end_the_comment():
    energy = from_expression("sum(x**2) + 1  # é\u2028")
    tree = ast.parse(energy.source)
    assert [type(node).__name__ for node in tree.body][-1] == "ClassDef"
    comments = [line for line in energy.source.splitlines() if "per sample: " in line]
    assert comments and all(line.isascii() for line in comments)     # é escaped, not raw
