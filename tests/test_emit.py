"""The emitter prints: one statement in, its lines out; generated modules are clean.

Printer string tests build one statement of the IR by hand and check the exact
line it prints; the pyflakes test reads every committed generated module and
golden file (no unused imports or locals, no undefined names).
"""

from pathlib import Path

import pyflakes.api
import pytest
import sympy as sp

from torchebm.symbolic.compiler import compile_spec
from torchebm.symbolic.emit import ModuleEmitter
from torchebm.symbolic.ir import (GRADIENT, Accumulate, Adjoint, Assign, Broadcast, EnergySpec,
                                  Free, InitAdjoint, LoadStmt, ParamDecl, Reduce, Shape)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = sorted((ROOT / "torchebm" / "core" / "_generated").glob("*.py"))
GOLDEN = sorted((ROOT / "tests" / "golden").glob("*.py"))


class _Collect:
    def __init__(self):
        self.messages = []

    def flake(self, message):
        self.messages.append(str(message))

    def unexpectedError(self, filename, msg):
        self.messages.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.messages.append(f"{filename}:{lineno}: {msg}")


def test_there_are_generated_files_to_check():
    assert len(GENERATED) >= 12 and len(GOLDEN) >= 8


@pytest.mark.parametrize("path", GENERATED + GOLDEN, ids=lambda p: p.name)
def test_generated_code_passes_pyflakes(path):
    report = _Collect()
    pyflakes.api.check(path.read_text(), str(path), report)
    assert report.messages == []


def test_pyflakes_check_finds_an_unused_import():
    """The check above can fail: the same call on a module with a dead import reports it."""
    report = _Collect()
    pyflakes.api.check("import math\nimport torch\nprint(torch)\n", "m.py", report)
    assert len(report.messages) == 1 and "math" in report.messages[0]


@pytest.fixture(scope="module")
def emitter():
    spec = EnergySpec("PrintCase", "sum(a*x**2) + x[0]", (ParamDecl("a", 0, 1.0),),
                      summary="A printer test case.")
    compiled = compile_spec(spec)
    em = ModuleEmitter(spec, compiled.parsed, compiled.entries)
    em.body, em.initialised, em.position = (), set(), 0
    return em, compiled


def _symbol(em, stem, shape):
    s = sp.Symbol(f"_{stem}_print", real=True)
    em.names[s] = em.vprinter.names[s] = stem       # both printers: integer and value
    em.shapes[s] = shape
    return s


def test_an_assignment_prints_one_line(emitter):
    em, _ = emitter
    u, w = _symbol(em, "u", Shape.BOTH), _symbol(em, "w", Shape.BOTH)
    a = sp.Symbol("a", real=True)
    assert em._emit_Assign(Assign(None, w, 2.0 * a * u ** 2)) == ["w = 2.0*a*torch.square(u)"]


def test_a_sum_over_points_prints_one_reduction(emitter):
    em, compiled = emitter
    level = compiled.kernel.program.levels[0]
    u, r = _symbol(em, "u", Shape.BOTH), _symbol(em, "r", Shape.BATCH)
    assert em._emit_Reduce(Reduce(level, r, u, "sum")) == ["r = u.sum(-1)"]


def test_a_whole_input_load_prints_nothing_and_is_named_x(emitter):
    em, compiled = emitter
    level = compiled.kernel.program.levels[0]
    (load,) = level.loads
    assert em._emit_LoadStmt(LoadStmt(level, load)) == []
    assert em.names[load.symbol] == "x"


def test_an_element_load_prints_an_index(emitter):
    em, compiled = emitter
    (load,) = compiled.kernel.program.root_loads
    assert em._emit_LoadStmt(LoadStmt(None, load)) == [f"{em.names[load.symbol]} = x[..., 0]"]


def test_a_broadcast_of_a_per_sample_value_is_an_unsqueeze(emitter):
    em, compiled = emitter
    level = compiled.kernel.program.levels[0]
    r, b = _symbol(em, "r", Shape.BATCH), _symbol(em, "b", Shape.BOTH)
    assert em._emit_Broadcast(Broadcast(level, b, r)) == ["b = r.unsqueeze(-1)"]


def test_free_prints_one_del_of_named_values_and_nothing_for_inputs(emitter):
    em, compiled = emitter
    u, w = _symbol(em, "u", Shape.BOTH), _symbol(em, "w", Shape.BOTH)
    assert em._emit_Free(Free(None, (u, w, u))) == ["del u, w"]
    (load,) = compiled.kernel.program.levels[0].loads       # named x: never deleted
    assert em._emit_Free(Free(None, (load.symbol,))) == []
    assert em._emit_Free(Free(None, (Adjoint(GRADIENT),))) == ["del grad"]


def test_accumulating_into_the_gradient(emitter):
    em, compiled = emitter
    (load,) = compiled.kernel.program.root_loads
    g = _symbol(em, "g", Shape.BATCH)
    em.initialised = set()
    assert em._emit_InitAdjoint(InitAdjoint(None, GRADIENT)) == []
    assert em._emit_Accumulate(Accumulate(None, GRADIENT, load, g)) == [
        "grad = torch.zeros_like(x)", "grad[..., 0] += g"]
    assert em._emit_Accumulate(Accumulate(None, GRADIENT, load, g)) == ["grad[..., 0] += g"]


def test_a_small_factor_times_a_quotient_by_a_small_value_divides_the_small_values_first():
    """``c*(x/r)`` with c, r per sample and x per point is ``c/r*x``: one full-size pass
    (Python evaluates left to right); ``x/r`` alone stays one quotient."""
    import torchebm.symbolic.functions as F
    from torchebm.symbolic.printer import TorchEnergyPrinter
    c, r, x = sp.symbols("c r x", real=True)
    printer = TorchEnergyPrinter({"names": {c: "c", r: "r", x: "x"}, "sizes": {c: 2, r: 2, x: 3}})
    assert printer.doprint(c * F.Ratio(x, r)) == "c/r*x"
    assert printer.doprint(-3 * c * F.Ratio(x, r)) == "-3*c/r*x"
    assert printer.doprint(F.Ratio(x, r)) == "(x/r)"
    # a quotient by a per-point value keeps its own pass
    assert printer.doprint(c * F.Ratio(r, x)) == "c*(r/x)"


def test_a_product_adjoint_read_only_aliases_its_source_and_inputs_stay_unchanged():
    """The adjoint of y = h @ W initialised from an input (x, or v in the Hessian-vector
    product) and only read afterwards is that input, not a copy; nothing writes it, so x
    and v are unchanged, and every derivative still equals autograd of a plain formula."""
    import inspect

    import torch

    from torchebm.symbolic import from_expression
    W = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    energy = from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + x @ W @ x",
                             mu=torch.zeros(4, dtype=torch.float64), W=W,
                             S=torch.eye(4, dtype=torch.float64) * 2, trainable=True)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x0, v0 = x.clone(), v.clone()
    hvp = energy.hessian_vector_product(x, v)
    g = energy.gradient(x)
    sums = energy.parameter_gradient_sum(x)
    assert torch.equal(x, x0) and torch.equal(v, v0)
    src = inspect.getsource(type(energy))
    assert "_rt_points(v, v, n)\n" in src or "_rt_points(x, x, n)\n" in src   # no .clone()

    def plain(z, W=W, S=energy.S.detach()):
        return 0.5 * ((z @ torch.linalg.inv(S)) * z).sum(-1) + ((z @ W) * z).sum(-1)
    xg = x.clone().requires_grad_(True)
    want_g = torch.autograd.grad(plain(xg).sum(), xg, create_graph=True)[0]
    want_hvp = torch.autograd.grad((want_g * v).sum(), xg)[0]
    torch.testing.assert_close(g, want_g.detach())
    torch.testing.assert_close(hvp, want_hvp)
    Wg = W.clone().requires_grad_(True)
    want_W = torch.autograd.grad(plain(x, W=Wg).sum(), Wg)[0]
    torch.testing.assert_close(sums["W"], want_W)
