"""Stage 1, parse: formula text -> SymPy expression, through an ``ast`` whitelist.

The text is parsed with ``ast.parse`` and walked node by node; every node
type that is not in this module's table is refused before anything is
built. Nothing is ever evaluated: no ``eval``, ``exec``, ``sympify`` or
``parse_expr`` touches the text, so a formula is safe to take from anyone.

The walk builds plain SymPy objects (see ``symbols.py`` for the
conventions). Vector and matrix values exist only during the walk, as
functions from an index to a SymPy element; every vector is consumed by a
reduction, which becomes a ``Sum``/``Product``/``LogSumExp`` over a fresh
index. The result is one scalar SymPy expression per sample.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import re
import sys
import textwrap
import threading
import tokenize
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from . import functions as F
from ..errors import EnergySyntaxError
from .ir import Derived, ParamSpec, Parsed, frozen_map
from .symbols import (CONSTANTS, N, X, depends_on_x, index_symbol,
                      param_base, param_symbol, size_symbol)

#: Reductions of the language (a vector or a generator in, a scalar out).
REDUCTIONS = ("sum", "mean", "prod", "logsumexp", "norm")
#: Functions on matrix parameters, computed once per parameter value.
MATRIX_FUNCTIONS = ("inverse", "logdet", "det", "trace", "transpose")
OTHER_FUNCTIONS = ("dot", "len", "where", "clamp", "range")
ALLOWED_FUNCTIONS = tuple(sorted(set(F.ELEMENTWISE) | set(REDUCTIONS)
                                 | set(MATRIX_FUNCTIONS) | set(OTHER_FUNCTIONS) - {"range"}))

#: Names the language defines: no parameter or local definition may take them.
BUILT_IN_NAMES = ("x", "n", *CONSTANTS)
#: ... and with ``particles=``.
PARTICLE_NAMES = ("N", "mean_particle")

MAX_FORMULA_CHARS = 1_000_000
AST_DEPTH = 12_000            # deepest ast accepted (a flat sum of about 10^4 terms)
MAX_TREE = 20_000             # largest expression tree after inlining local definitions
_LAMBDA = re.compile(r"\blambda\b")
_LAMBDA_PLACEHOLDER = "_ambda"
MAX_EXPONENT_BITS = 1 << 14   # exact integer powers up to this size, else float
MAX_PARTICLE_DIM = 64         # largest particle dimension (particles=d)
MAX_UNROLL = 64               # reductions of a particle vector are written out term by term


@dataclass
class LocalFunction:
    """A local definition with index arguments, ``r(i, j) = norm(x[i] - x[j])``: its
    body is parsed once, over placeholder indices, and each call substitutes them."""
    name: str
    formals: tuple
    value: object


@dataclass
class Vector:
    """A vector value during parsing: its length and its element at an index."""
    length: sp.Expr
    element: Callable[[sp.Expr], sp.Expr]
    what: str
    condition: bool = False     # elements are comparisons (only where() takes them)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def at(self, k):
        """The element at index ``k``, built once per index: a local definition used
        twice (``w1 = w0*w0``) is expanded once, so work grows with the text, not 2^lines."""
        value = self.memo.get(k)
        if value is None:
            value = self.memo[k] = self.element(k)
        return value


@dataclass
class Matrix:
    """A matrix value during parsing: shape and element at (row, column)."""
    rows: sp.Expr
    cols: sp.Expr
    element: Callable[[sp.Expr, sp.Expr], sp.Expr]
    what: str
    param: str | None = None          # the parameter it is (for inverse/logdet)
    transposed: bool = False


def parse_formula(text: str, param_ranks: dict[str, int] | None = None,
                  origin: str = "<formula>", particles: int | None = None) -> Parsed:
    """Parse a formula into a scalar SymPy energy.

    Args:
        text: the formula, Python syntax; optional ``name = expr`` and
            ``name(i, j) = expr`` lines first.
        param_ranks: rank (0 scalar, 1 vector, 2 matrix) of each parameter
            whose value is known; other names are scalars.
        origin: file name shown in errors.
        particles: the particle dimension ``d``, or None. With ``d``, ``x`` is
            ``N = n // d`` particles: ``x[i]`` is the d-vector of particle i
            (coordinates ``x[d*i] .. x[d*i + d - 1]``), ``x[i, c]`` its
            coordinate c, ``N`` their count and ``mean_particle`` their mean
            (a d-vector); ``n`` must be a multiple of ``d`` (checked at the
            first call).

    Raises:
        EnergySyntaxError: for anything outside the language, with the
            line and column of the fault.
    """
    if not isinstance(text, str):
        raise EnergySyntaxError(f"a formula must be a string, not {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise EnergySyntaxError(
            f"the formula is {len(text)} characters long; the limit is {MAX_FORMULA_CHARS}")
    if "\x00" in text:
        col = text.index("\x00")
        raise EnergySyntaxError("the formula contains a NUL byte", text, 1 + text[:col].count("\n"),
                                col - (text[:col].rfind("\n") + 1), origin)
    text = textwrap.dedent(text.strip("\n"))   # ' sum(x**2)' is not an indentation error
    if text[:1] in (" ", "\t") and "\n" not in text.strip():
        text = text.strip()
    if particles is not None:
        if isinstance(particles, bool) or not isinstance(particles, int) or not (
                1 <= particles <= MAX_PARTICLE_DIM):
            raise EnergySyntaxError(
                f"particles must be the dimension of one particle, an integer from 1 to "
                f"{MAX_PARTICLE_DIM} (e.g. particles=3 for points in 3-D), got {particles!r:.40}")
    text = _function_definitions(text)
    if re.search(rf"\b{_LAMBDA_PLACEHOLDER}\b", text):
        raise EnergySyntaxError(f"names starting with '_' are reserved; rename "
                                f"'{_LAMBDA_PLACEHOLDER}'")
    try:
        # 'lambda' is a Python keyword but a common parameter name (phi^4's coupling);
        # it becomes a same-length placeholder so that columns in errors stay right.
        with warnings.catch_warnings():     # e.g. "invalid decimal literal": an error below
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = _ast_parse(_LAMBDA.sub(_LAMBDA_PLACEHOLDER, text))
    except SyntaxError as exc:
        hint = exc.msg
        if "^" in text:
            hint += "; for a power write '**', not '^'"
        if "|" in text:
            hint += "; for an absolute value write abs(x), not |x|"
        if re.search(r"\d[A-Za-z_(]", text) and "decimal literal" in exc.msg:
            hint += "; write a product with '*', e.g. 2*x"
        if re.search(r"\blambda\s+\w+\s*:", text):
            hint = "lambda functions are not allowed in a formula ('lambda' alone is a parameter)"
        raise EnergySyntaxError(f"syntax error: {hint}", text, exc.lineno,
                                (exc.offset or 1) - 1, origin) from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as exc:
        raise EnergySyntaxError(f"the formula is too deeply nested or too large to parse ({exc})")
    _refuse_non_ascii_names(text, origin)
    return _Parser(text, param_ranks or {}, origin, particles).run(tree)


def _refuse_non_ascii_names(text: str, origin: str) -> None:
    """Names must be written in ASCII. Python folds identifiers to NFKC before
    ``ast`` sees them (the full-width 'ｘ' and the ligature 'ﬁ' arrive as 'x' and
    'fi'), so the check reads the tokens, which keep the text as written."""
    if text.isascii():
        return
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return                      # ast accepted it; nothing more to learn here
    for tok in tokens:
        if tok.type == tokenize.NAME and not tok.string.isascii():
            folded = unicodedata.normalize("NFKC", tok.string)
            reads = f" (Python reads it as {folded!r})" if folded.isascii() else ""
            line, col = tok.start
            raise EnergySyntaxError(
                f"the name {tok.string!r} is not written in ASCII{reads}; names in a "
                f"formula are ASCII letters, digits and '_'", text, line, col, origin)


_FUNCTION_DEF = re.compile(r"^([ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*)\(([^()\n]*)\)(?=[ \t]*=(?!=))",
                           re.M)


def _function_definitions(text: str) -> str:
    """``r(i, j) = expr`` lines (a local definition with index arguments) become
    ``r[i, j] = expr``, which Python parses (an assignment to a call does not);
    the text keeps its length, so columns in errors stay right."""
    return _FUNCTION_DEF.sub(lambda m: f"{m.group(1)}[{m.group(2)}]", text)


_RECURSION_LOCK = threading.Lock()


def _ast_parse(text: str) -> ast.Module:
    """``ast.parse`` with room for a flat sum of about 10^4 terms (an ast that deep).

    The recursion limit is process-wide: it is raised only for the parse and
    restored after, under one lock, so that parallel parses never leave it
    raised (each would otherwise restore the other's raised value).
    """
    with _RECURSION_LOCK:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, AST_DEPTH))
        try:
            return ast.parse(text, mode="exec")
        finally:
            sys.setrecursionlimit(limit)


class _Parser:
    def __init__(self, text, param_ranks, origin, particles=None):
        self.text = text
        self.particles = particles
        self.lines = [ln.encode("utf-8") for ln in
                      _LAMBDA.sub(_LAMBDA_PLACEHOLDER, text).split("\n")]   # ast columns
        self.ranks = dict(param_ranks)
        self.origin = origin
        self.locals: dict[str, object] = {}
        self.indices: dict[str, sp.Symbol] = {}
        self.params: dict[str, ParamSpec] = {}
        self.derived: dict[str, Derived] = {}
        self.constants: dict[str, tuple] = {}
        self.size_checks: list = []
        self._fresh = 0
        self.used_names: set[str] = set()
        self.node = None

    # -- errors ---------------------------------------------------------------
    def error(self, message, node=None):
        node = node or self.node
        if node is not None and hasattr(node, "lineno"):
            raise EnergySyntaxError(message, self.text, node.lineno, node.col_offset, self.origin)
        raise EnergySyntaxError(message)

    # -- driver ---------------------------------------------------------------
    def run(self, tree: ast.Module) -> Parsed:
        self.used_names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {"lambda"}
        if not tree.body:
            self.error("the formula is empty; write an energy such as 'sum(x**2)'")
        *defs, last = tree.body
        try:
            for stmt in tree.body:
                if not isinstance(stmt, (ast.Assign, ast.Expr)):
                    self.error(f"{_describe(stmt)} is not allowed in a formula", stmt)
            for stmt in defs:
                self.node = stmt
                if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and isinstance(stmt.targets[0], (ast.Name, ast.Subscript))):
                    self.error("only 'name = expression' lines (or 'name(i, j) = expression' "
                               "with index arguments) may come before the energy")
                target = stmt.targets[0]
                if isinstance(target, ast.Subscript):
                    self.define_function(target, stmt.value)
                    continue
                name = target.id
                if name in self.reserved_names() or name in F.ELEMENTWISE or name in REDUCTIONS:
                    self.error(f"'{name}' is a reserved name and cannot be redefined")
                value = self.visit(stmt.value)
                probe = value.at(index_symbol("_probe")) if isinstance(value, Vector) else value
                if isinstance(probe, sp.Basic) and _tree_size(probe) > MAX_TREE:
                    self.error(f"the definition of '{name}' expands to more than {MAX_TREE} "
                               f"terms (definitions are inlined); simplify it", stmt)
                self.locals[name] = value
            self.node = last
            if not isinstance(last, ast.Expr):
                self.error("the last line must be the energy expression (not an assignment "
                           "or statement)")
            energy = self.visit(last.value)
        except RecursionError:
            raise EnergySyntaxError("the formula is nested too deeply") from None
        if isinstance(energy, Vector):
            self.error(f"the energy is a vector of length {energy.length} per sample, but it "
                       f"must be one scalar per sample; wrap it in a reduction such as "
                       f"sum(...)", last.value)
        if isinstance(energy, Matrix):
            self.error("the energy is a matrix; it must be one scalar per sample", last.value)
        if _is_condition(energy) or (isinstance(energy, Vector) and energy.condition):
            self.error("the energy is a condition; conditions belong inside where(...)", last.value)
        if energy.has(sp.zoo) or energy.has(sp.oo) and not energy.free_symbols:
            self.error("the formula divides a constant by zero", last.value)
        if energy.has(sp.nan):
            self.error("the formula is NaN for every x: a constant in it is not a real number "
                       "(a negative number to a fractional power, or 0/0)", last.value)
        if not depends_on_x(energy):
            from .hints import likely_intent, one_based_note
            intents = [f"{k} -> {likely_intent(k)}" for k in self.params if likely_intent(k)]
            hint = (f" (components of x are written x[0], x[1], ...: every other bare name "
                    f"is a parameter; did you mean {', '.join(intents)}?)"
                    f"{one_based_note(self.params)}" if intents else "")
            self.error(f"the energy does not depend on x; an energy must be a function of the "
                       f"sample x{hint}", last.value)
        return Parsed(energy, frozen_map(self.params), frozen_map(self.derived),
                      frozen_map(self.constants), tuple(self.size_checks), self.text)

    def visit(self, node):
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            self.error(f"{_describe(node)} is not allowed in a formula", node)
        saved, self.node = self.node, node
        try:
            return method(node)
        finally:
            self.node = saved

    def reserved_names(self):
        return BUILT_IN_NAMES + PARTICLE_NAMES if self.particles else BUILT_IN_NAMES

    def define_function(self, target, value_node):
        """``r(i, j) = expr``: parse ``expr`` once over placeholder indices."""
        if not isinstance(target.value, ast.Name):
            self.error("a local definition with arguments reads 'name(i, j) = expression'",
                       target)
        name = target.value.id
        if (name in self.reserved_names() or name in F.ELEMENTWISE or name in REDUCTIONS
                or name in ALLOWED_FUNCTIONS or name.startswith("_")):
            self.error(f"'{name}' is a reserved name and cannot be redefined", target)
        args = target.slice.elts if isinstance(target.slice, ast.Tuple) else [target.slice]
        names = []
        for a in args:
            if not isinstance(a, ast.Name) or a.id.startswith("_"):
                self.error(f"the arguments of {name}(...) must be index names, e.g. "
                           f"{name}(i, j) = norm(x[i] - x[j])", a)
            if a.id in self.reserved_names() or a.id in self.ranks or a.id in self.locals:
                self.error(f"the argument name '{a.id}' of {name}(...) is already taken (by "
                           f"x, n, a constant, a parameter or a definition); choose another", a)
            if a.id in names:
                self.error(f"{name}(...) names its argument '{a.id}' twice", a)
            names.append(a.id)
        saved = dict(self.indices)
        formals = tuple(index_symbol(self.fresh_name(f"{a}_")) for a in names)
        try:
            self.indices.update(zip(names, formals))
            value = self.visit(value_node)
        finally:
            self.indices = saved
        if isinstance(value, Matrix):
            self.error(f"{name}(...) must be a number or a vector, not a matrix", value_node)
        self.locals[name] = LocalFunction(name, formals, value)

    def call_function(self, fn, node):
        """A call ``r(i, j)`` of a local definition: its body with the indices put in."""
        if len(node.args) != len(fn.formals):
            self.error(f"{fn.name}() takes {len(fn.formals)} index argument"
                       f"{'s' if len(fn.formals) != 1 else ''}, got {len(node.args)}", node)
        actuals = []
        for a in node.args:
            v = self.visit(a)
            if not isinstance(v, sp.Expr) or not _is_integer_expr(v):
                self.error(f"the arguments of {fn.name}() are indices (integer expressions of "
                           f"loop indices, n and integers), e.g. {fn.name}(i, j)", a)
            actuals.append(v)
        sub = dict(zip(fn.formals, actuals))
        value = fn.value
        if isinstance(value, Vector):
            inner = value
            return Vector(sp.sympify(inner.length).xreplace(sub),
                          lambda k: inner.at(k).xreplace(sub), f"{fn.name}(...)",
                          inner.condition)
        return value.xreplace(sub) if isinstance(value, sp.Basic) else value

    def particle(self, index):
        """Particle ``index`` of x: the d-vector x[d*index .. d*index + d - 1]."""
        d = self.particles
        return Vector(sp.Integer(d), lambda c: X[d * index + c], "x[particle]")

    def particle_count(self):
        d = self.particles
        if not getattr(self, "_particle_check", False):
            self._particle_check = True
            self.size_checks.append((
                d * sp.floor(N / d), N,
                f"x has n = {{b}} coordinates, which is not a multiple of the particle "
                f"dimension {d} (particles={d}): x must be N particles of {d} coordinates, "
                f"[..., N*{d}]; only the first {{a}} of the {{b}} coordinates make whole "
                f"particles"))
        return sp.floor(N / d)

    # -- leaves ---------------------------------------------------------------
    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.error(f"the literal {v!r:.40} is not a number; formulas take numbers only", node)
        if isinstance(v, int):
            if v.bit_length() > 1024:
                self.error("this integer literal exceeds the float64 range", node)
            return sp.Integer(v)
        if not math.isfinite(v):
            self.error("this literal is not a finite float64 number", node)
        if v == 0.0:
            text = _source(node, self.lines)
            mantissa = re.split(r"[eE]", text)[0]
            if re.search(r"[1-9]", mantissa):
                self.error(f"the literal {text} underflows to 0 in float64 (the smallest "
                           f"positive float64 is about 5e-324); scale the formula instead", node)
        return sp.Float(v)  # 53-bit: the literal's exact float64 value

    def visit_Name(self, node):
        name = "lambda" if node.id == _LAMBDA_PLACEHOLDER else node.id
        if name.startswith("_") and name != "lambda":
            self.error(f"names starting with '_' are reserved; rename '{name}'", node)
        if name in self.indices:
            return self.indices[name]
        if name in self.locals:
            value = self.locals[name]
            if isinstance(value, LocalFunction):
                self.error(f"'{name}' takes index arguments: call it, e.g. "
                           f"{name}({', '.join('ijkl'[:len(value.formals)])})", node)
            return value
        if self.particles and name == "N":
            return self.particle_count()
        if self.particles and name == "mean_particle":
            count = self.particle_count()
            k = self.fresh_index()
            d = self.particles
            return Vector(sp.Integer(d), lambda c: F.Sum(X[d * k + c], (k, 0, count - 1)) / count,
                          "mean_particle")
        if name == "x":
            if self.particles:
                self.particle_count()
            return Vector(N, lambda k: X[k], "x")
        if name == "n":
            return N
        if name in CONSTANTS:
            return CONSTANTS[name]
        if not name.isidentifier() or not name.isascii():
            self.error(f"the name {name!r} is not an ASCII identifier", node)
        return self.param(name, node)

    def param(self, name, node):
        rank = self.ranks.get(name, 0)
        self.params.setdefault(name, ParamSpec(name, rank))
        if rank == 0:
            return param_symbol(name)
        base = param_base(name)
        if rank == 1:
            return Vector(size_symbol(name, 0), lambda k: base[k], name)
        if rank == 2:
            return Matrix(size_symbol(name, 0), size_symbol(name, 1),
                          lambda r, c: base[r, c], name, param=name)
        self.error(f"parameter '{name}' has {rank} dimensions; parameters are scalars, "
                   f"vectors or matrices", node)

    def visit_List(self, node):
        values = [self.visit(elt) for elt in node.elts]
        if not values:
            self.error("an empty list is not a vector; give at least one number", node)
        if not all(isinstance(v, sp.Number) for v in values):
            self.error("a list literal must hold numbers only, e.g. [1.0, -0.5, 2.0]", node)
        if not all(math.isfinite(float(v)) for v in values):
            self.error("a list literal must hold finite float64 numbers", node)
        name = f"_const{len(self.constants)}"
        self.constants[name] = tuple(float(v) for v in values)
        base = param_base(name)
        return Vector(sp.Integer(len(values)), lambda k: base[k], "list literal")

    # -- arithmetic -----------------------------------------------------------
    def visit_BinOp(self, node):
        chain = self._flat_chain(node)
        if chain is not None:
            return chain
        op = type(node.op)
        if op is ast.BitXor:
            self.error("'^' is not a power in Python syntax; write '**' (e.g. x**2)", node)
        if op is ast.MatMult:
            return self.matmul(self.visit(node.left), self.visit(node.right), node)
        table = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                 ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
                 ast.Pow: self.power, ast.Mod: self.modulo, ast.FloorDiv: self.floordiv}
        if op not in table:
            self.error(f"the operator {_describe(node.op)} is not allowed; use + - * / ** @", node)
        left, right = self.visit(node.left), self.visit(node.right)
        return self.elementwise(table[op], [left, right], f"'{_source(node, self.lines)}'")

    def _flat_chain(self, node):
        """``a + b - c + ...`` (left-nested in the ast) folded by a loop, not recursion,
        so a flat sum of thousands of terms parses like a short one."""
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
               ast.Mult: lambda a, b: a * b}
        spine = []
        cur = node
        while isinstance(cur, ast.BinOp) and type(cur.op) in ops:
            spine.append(cur)
            cur = cur.left
        if len(spine) < 8:
            return None
        if all(type(b.op) in (ast.Add, ast.Sub) for b in spine):
            # one n-ary sum: building it pairwise would cost O(n^2) in SymPy
            terms = [self.visit(cur)]
            for binop in reversed(spine):
                right = self.visit(binop.right)
                if type(binop.op) is ast.Sub:
                    right = self.elementwise(lambda a: -a, [right], "-")
                terms.append(right)
            return self.elementwise(lambda *t: sp.Add(*t), terms, f"'{_source(node, self.lines)}'")
        value = self.visit(cur)
        for binop in reversed(spine):
            right = self.visit(binop.right)
            saved, self.node = self.node, binop
            try:
                value = self.elementwise(ops[type(binop.op)], [value, right],
                                         f"'{_source(binop, self.lines)}'")
            finally:
                self.node = saved
        return value

    def power(self, base, exp):
        if isinstance(base, sp.Number) and isinstance(exp, sp.Number):
            return _constant_power(base, exp, self)
        return sp.Pow(base, exp)

    def modulo(self, a, b):
        if not (_is_integer_expr(a) and _is_integer_expr(b)):
            self.error("'%' is only for index arithmetic such as x[(i+1) % n]")
        if b == 0:
            self.error("'% 0' divides by zero; the modulus must be a positive size, e.g. % n")
        return sp.Mod(a, b)

    def floordiv(self, a, b):
        if not (_is_integer_expr(a) and _is_integer_expr(b)):
            self.error("'//' is only for index arithmetic such as x[i // 2]")
        if b == 0:
            self.error("'// 0' divides by zero; divide an index by a positive number")
        return sp.floor(a / b)

    def visit_UnaryOp(self, node):
        value = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return self.elementwise(lambda a: -a, [value], "-")
        if isinstance(node.op, ast.UAdd):
            return value
        if isinstance(node.op, ast.Not):
            return self.elementwise(lambda a: sp.Not(self.condition(a)), [value], "not",
                                    logic=True)
        self.error(f"the operator {_describe(node.op)} is not allowed", node)

    def visit_Compare(self, node):
        ops = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
        values = [self.visit(node.left)] + [self.visit(c) for c in node.comparators]
        parts = []
        for op, (a, b) in zip(node.ops, zip(values, values[1:])):
            if type(op) not in ops:
                self.error(f"the comparison {_describe(op)} is not allowed; use < <= > >=", node)
            parts.append(self.elementwise(lambda u, v, o=ops[type(op)]: sp.Rel(u, v, o),
                                          [a, b], "a comparison"))
            if isinstance(parts[-1], Vector):
                parts[-1].condition = True
        if len(parts) == 1:
            return parts[0]
        return self.elementwise(lambda *c: sp.And(*c), parts, "and", logic=True)

    def visit_BoolOp(self, node):
        values = [self.visit(v) for v in node.values]
        combine = sp.And if isinstance(node.op, ast.And) else sp.Or
        return self.elementwise(lambda *c: combine(*[self.condition(u) for u in c]),
                                values, "and/or", logic=True)

    def condition(self, value):
        if _is_condition(value):
            return value
        self.error("'and', 'or' and 'not' combine comparisons, e.g. where(0 < x and x < 1, ...)")

    def visit_IfExp(self, node):
        self.error("'a if c else b' is not supported; write where(c, a, b)", node)

    # -- subscripts -----------------------------------------------------------
    def visit_Subscript(self, node):
        sl = node.slice
        if (self.particles and isinstance(node.value, ast.Name) and node.value.id == "x"
                and "x" not in self.locals and "x" not in self.indices):
            return self.particle_subscript(node)
        value = self.visit(node.value)
        if isinstance(value, Vector):
            if isinstance(sl, ast.Tuple):
                self.error(f"{value.what} is a vector; index it with one index, e.g. x[0]", node)
            return self.index_vector(value, sl, node)
        if isinstance(value, Matrix):
            if not (isinstance(sl, ast.Tuple) and len(sl.elts) == 2):
                self.error(f"{value.what} is a matrix; index it as {value.what}[i, j], "
                           f"{value.what}[i, :] or {value.what}[:, j]", node)
            r, c = sl.elts
            if isinstance(r, ast.Slice) and isinstance(c, ast.Slice):
                self.error("take a row or column of a matrix, not a sub-matrix", node)
            if isinstance(c, ast.Slice):
                row = self.index_expr(r, value.rows)
                vec = Vector(value.cols, lambda k: value.element(row, k), f"{value.what}[row]")
                return self.slice_vector(vec, c, node)
            if isinstance(r, ast.Slice):
                col = self.index_expr(c, value.cols)
                vec = Vector(value.rows, lambda k: value.element(k, col), f"{value.what}[:, col]")
                return self.slice_vector(vec, r, node)
            return value.element(self.index_expr(r, value.rows), self.index_expr(c, value.cols))
        if isinstance(value, sp.Symbol) and value.name in self.params:
            self.error(f"parameter '{value.name}' is indexed, but no vector or matrix value was "
                       f"given for it; pass it, e.g. {value.name}=torch.tensor([...])", node)
        self.error("only x, vector and matrix parameters can be indexed", node)

    def particle_subscript(self, node):
        """``x[i]`` (particle i, a d-vector) or ``x[i, c]`` (its coordinate c)."""
        count = self.particle_count()
        sl = node.slice
        parts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        if len(parts) > 2 or any(isinstance(p, ast.Slice) for p in parts):
            self.error(f"with particles={self.particles}, x[i] is particle i (a "
                       f"{self.particles}-vector) and x[i, c] its coordinate c; slices of x "
                       f"are not supported, sum over particles instead", node)
        vec = self.particle(self.index_expr(parts[0], count))
        if len(parts) == 2:
            return vec.at(self.index_expr(parts[1], vec.length))
        return vec

    def index_vector(self, vec, sl, node):
        if isinstance(sl, ast.Slice):
            return self.slice_vector(vec, sl, node)
        return vec.at(self.index_expr(sl, vec.length))

    def slice_vector(self, vec, sl, node):
        if sl.step is not None:
            self.error("slice steps are not supported; use an indexed sum, e.g. "
                       "sum(x[2*i] for i in range(n // 2))", node)
        lo = self.index_expr(sl.lower, vec.length) if sl.lower is not None else sp.Integer(0)
        hi = self.index_expr(sl.upper, vec.length) if sl.upper is not None else vec.length
        length = hi - lo
        if length.is_number and length < 0:
            length = sp.Integer(0)
        return Vector(length, lambda k: vec.at(k + lo), f"{vec.what}[{ast.unparse(sl)}]")

    def index_expr(self, node, length):
        """An integer index; a negative literal counts from the end, as in Python."""
        value = self.visit(node)
        if not isinstance(value, sp.Expr) or not _is_integer_expr(value):
            loose = sorted({v.id for v in ast.walk(node) if isinstance(v, ast.Name)
                            and v.id not in self.indices and v.id in self.params})
            hint = ""
            if loose and self.indices:
                hint = (f"; '{loose[0]}' is not a loop index here (the enclosing generators "
                        f"define {', '.join(self.indices)})")
            elif loose:
                hint = (f"; '{loose[0]}' is not a loop index here: sum over it with a generator, "
                        f"e.g. sum(x[{loose[0]}]**2 for {loose[0]} in range(n)), or use the "
                        f"whole vector, sum(x**2)")
            self.error("an index must be an integer expression of loop indices, n, len(...) "
                       f"and integers{hint}", node)
        if any(abs(int(a)) > 2**31 for a in value.atoms(sp.Integer)):
            self.error("an index must be smaller than 2**31", node)
        if value.is_Integer and value < 0:
            return length + value
        for sym in value.free_symbols:
            if sym in self.indices.values():
                _check_affine(value, set(self.indices.values()), self, node)
                break
        return value

    def visit_Attribute(self, node):
        if node.attr == "T":
            value = self.visit(node.value)
            if isinstance(value, Matrix):
                return _transpose(value)
            self.error(".T transposes a matrix parameter only", node)
        self.error(f"attribute access ('.{node.attr}') is not allowed in a formula", node)

    # -- calls ----------------------------------------------------------------
    def visit_Call(self, node):
        if not isinstance(node.func, ast.Name):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ALLOWED_FUNCTIONS + REDUCTIONS:
                # x.sum(), x.exp(), torch.sin(x): NumPy/torch method style
                module = isinstance(func.value, ast.Name) and func.value.id in _MODULES
                inner = (", ".join(_source(a, self.lines) for a in node.args) if module
                         else _source(func.value, self.lines))
                self.error(f"'{_source(node, self.lines)}': methods and modules are not part of "
                           f"the language; call the function by name, {func.attr}({inner})",
                           node)
            self.error("only the language's functions can be called, by name, e.g. sin(x)", node)
        name = node.func.id
        if node.keywords:
            self.error(f"{name}() takes no keyword arguments", node)
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.error("'*' unpacking is not allowed in a formula", node)
        if isinstance(self.locals.get(name), LocalFunction):
            return self.call_function(self.locals[name], node)
        if name in REDUCTIONS:
            return self.reduction(name, node)
        args = node.args
        if name in F.ELEMENTWISE:
            values = [self.visit(a) for a in args]
            arity = F.ARITY[name]
            variadic = name == "logaddexp" and len(values) >= 2
            if not variadic and len(values) != arity:
                self.error(f"{name}() takes {arity} argument{'s' if arity > 1 else ''}, "
                           f"got {len(values)}", node)
            return self.elementwise(F.ELEMENTWISE[name], values, name)
        if name == "where":
            if len(args) != 3:
                self.error("where(cond, a, b) takes 3 arguments", node)
            cond, a, b = (self.visit(a) for a in args)
            if not (_is_condition(cond) or (isinstance(cond, Vector) and cond.condition)):
                self.error("the first argument of where() must be a condition such as x > 0",
                           args[0])
            for v in (a, b):
                if _is_condition(v) or (isinstance(v, Vector) and v.condition):
                    self.error("where(cond, a, b) takes numbers for a and b, not conditions",
                               node)
            return self.elementwise(
                lambda c, u, v: sp.Piecewise((u, c), (v, True)), [cond, a, b], "where",
                checked=True)
        if name == "clamp":
            if len(args) != 3:
                self.error("clamp(v, lo, hi) takes 3 arguments", node)
            return self.elementwise(lambda v, lo, hi: F.Minimum(F.Maximum(v, lo), hi),
                                    [self.visit(a) for a in args], "clamp")
        if name == "dot":
            if len(args) != 2:
                self.error("dot(u, v) takes 2 arguments", node)
            u, v = (self.visit(a) for a in args)
            if not (isinstance(u, Vector) and isinstance(v, Vector)):
                self.error("dot(u, v) takes two vectors", node)
            return self.sum_over(self.elementwise(lambda a, b: a * b, [u, v], "dot"))
        if name == "len":
            if len(args) != 1:
                self.error("len(v) takes 1 argument", node)
            v = self.visit(args[0])
            if isinstance(v, Vector):
                return v.length
            if isinstance(v, Matrix):
                return v.rows
            if isinstance(v, sp.Symbol) and v.name in self.params:
                self.error(f"len({v.name}): parameter '{v.name}' has no vector value; pass it, "
                           f"e.g. {v.name}=torch.tensor([...])", node)
            self.error("len() takes a vector or a matrix", node)
        if name in MATRIX_FUNCTIONS:
            return self.matrix_function(name, node)
        if name == "range":
            self.error("range(...) is only allowed in a generator: sum(... for i in range(n))",
                       node)
        if name in _POWERS:
            # pow(a, b) -> a**b, square(a) -> a**2, in the formula's own spelling
            args = [_source(a, self.lines) for a in node.args]
            args = [a if _atomic(n) else f"({a})" for a, n in zip(args, node.args)]
            power = (f"{args[0]}**{args[1]}" if name == "pow" and len(args) == 2 else
                     f"{args[0]}**2" if name == "square" and len(args) == 1 else "x**2")
            self.error(f"unknown function '{name}': powers are written with **, e.g. "
                       f"{power}", node)
        close = [_ALIASES[name]] if name in _ALIASES else difflib.get_close_matches(
            name, ALLOWED_FUNCTIONS, n=1)
        hint = f" (did you mean {close[0]}()?)" if close else ""
        self.error(f"unknown function '{name}'{hint}. Allowed functions: "
                   f"{', '.join(ALLOWED_FUNCTIONS)}", node)

    def matrix_function(self, name, node):
        if len(node.args) != 1:
            self.error(f"{name}(M) takes 1 argument", node)
        m = self.visit(node.args[0])
        if not isinstance(m, Matrix):
            self.error(f"{name}() takes a matrix parameter", node)
        if name == "transpose":
            return _transpose(m)
        if m.param is None:
            self.error(f"{name}() takes a matrix parameter by name, e.g. {name}(cov)", node)
        self.check_size(m.rows, m.cols, f"{name}({m.param}) needs a square matrix: {m.param} "
                                        f"has {{a}} rows and {{b}} columns")
        key = f"{name}({m.param})"
        self.derived.setdefault(key, Derived(key, name, m.param))
        if name == "inverse":
            base = param_base(key)
            inv = Matrix(m.rows, m.cols, lambda r, c: base[r, c], key)
            return _transpose(inv) if m.transposed else inv
        return param_symbol(key)

    def matmul(self, a, b, node):
        if isinstance(a, Vector) and isinstance(b, Vector):
            return self.sum_over(self.elementwise(
                lambda u, v: u * v, [a, b], "@",
                mismatch=f"{a.what} @ {b.what}: a dot product needs vectors of equal length, "
                         f"but the left one has length {{a}} and the right one {{b}}"))
        if isinstance(a, Matrix) and isinstance(b, Vector):
            self.check_size(a.cols, b.length, f"{a.what} @ {b.what}: the matrix has {{a}} "
                                              f"columns but the vector has length {{b}}")
            j = self.fresh_index()
            return Vector(a.rows, lambda r: F.Sum(a.element(r, j) * b.at(j),
                                                   (j, 0, a.cols - 1)), f"{a.what} @ {b.what}")
        if isinstance(a, Vector) and isinstance(b, Matrix):
            self.check_size(a.length, b.rows, f"{a.what} @ {b.what}: the vector has length {{a}} "
                                              f"but the matrix has {{b}} rows")
            i = self.fresh_index()
            return Vector(b.cols, lambda c: F.Sum(a.at(i) * b.element(i, c),
                                                   (i, 0, b.rows - 1)), f"{a.what} @ {b.what}")
        if isinstance(a, Matrix) and isinstance(b, Matrix):
            self.error("a matrix @ matrix product is not supported; multiply by vectors, "
                       "e.g. u @ M @ v", node)
        hint = ""
        for side, value in (("left", a), ("right", b)):
            part = getattr(node, side, None)
            if (not isinstance(value, (Vector, Matrix)) and isinstance(part, ast.BinOp)
                    and isinstance(part.op, ast.MatMult)):
                # u @ P @ x with P given as a vector: u @ P is already a dot product
                hint = (f"; its {side} side, {ast.unparse(part)}, is already a number "
                        f"(vector @ vector is a dot product): if a parameter in it is meant "
                        f"as a matrix, give it a 2-D value [n, n]")
                break
        self.error("'@' multiplies vectors and matrices; use '*' for scalars" + hint
                   + self.scalar_parameter_hint(node, "a vector or matrix"), node)

    def scalar_parameter_hint(self, node, wanted):
        """``'; P is a scalar parameter (no value was given) ...'`` for the scalar
        parameters read under ``node``, so an error about a scalar names its cause."""
        names = sorted({a.id for a in ast.walk(node) if isinstance(a, ast.Name)
                        and a.id in self.params and self.params[a.id].rank == 0})
        if not names:
            return ""
        unset = [k for k in names if k not in self.ranks]
        example, cli = (("torch.ones(2)", "[1,1]") if wanted == "a vector"
                        else ("torch.eye(2)", "[[1,0],[0,1]]"))
        given = [k for k in names if k in self.ranks]
        parts = []
        if unset:
            one = len(unset) == 1
            parts.append(f"{', '.join(map(repr, unset))} {'is a scalar parameter' if one else 'are scalar parameters'} "
                         f"because no value was given (every bare name other than x and n is a "
                         f"parameter); give {'it' if one else 'them'} {wanted} value, e.g. "
                         f"from_expression(formula, {unset[0]}={example}) or, on the command "
                         f"line, -p {unset[0]}={cli}")
        if given:
            parts.append(f"{', '.join(map(repr, given))} {'was' if len(given) == 1 else 'were'} "
                         f"given a scalar value; pass {wanted} value instead")
        return "; " + "; ".join(parts)

    # -- reductions -----------------------------------------------------------
    def reduction(self, name, node):
        args = node.args
        if name == "logsumexp" and len(args) >= 2:
            values = [self.visit(a) for a in args]
            return self.elementwise(lambda *v: F.LogAddExp(*v), values, "logsumexp")
        if len(args) != 1:
            self.error(f"{name}() takes one vector or one generator, e.g. {name}(x**2) or "
                       f"{name}(x[i] for i in range(n))", node)
        arg = args[0]
        if isinstance(arg, ast.GeneratorExp):
            body, limits = self.generator(arg)
            count = None
        else:
            vec = self.visit(arg)
            if not isinstance(vec, Vector):
                from .hints import describe, likely_intent
                typos = sorted({n.id for n in ast.walk(arg) if isinstance(n, ast.Name)
                                and n.id in self.params and likely_intent(n.id)})
                hint = (f"; {', '.join(describe(t) for t in typos)} "
                        f"{'is' if len(typos) == 1 else 'are'} read as "
                        f"{'a scalar parameter' if len(typos) == 1 else 'scalar parameters'}"
                        if typos else "")
                if not hint and not isinstance(vec, Matrix):
                    hint = self.scalar_parameter_hint(arg, "a vector")
                    hint = hint and (hint + "; the variable is x; for scalars use the "
                                     "function itself")
                self.error(f"{name}() reduces a vector, but its argument is a "
                           f"{'matrix' if isinstance(vec, Matrix) else 'scalar'}"
                           f"{hint or '; for scalars use the function itself'}", node)
            unrolled = self.unrolled(name, vec, node)
            if unrolled is not None:
                return unrolled
            i = self.fresh_index()
            body = vec.at(i)
            if _is_condition(body):
                self.error(f"{name}() of a condition is not allowed; use where(cond, 1, 0)", node)
            limits = [(i, sp.Integer(0), vec.length - 1)]
            count = vec.length
        if name == "norm":
            return F.SafeSqrt(F.Sum(body**2, *limits))
        if name == "sum":
            return F.Sum(body, *limits)
        if name == "prod":
            return F.Product(body, *limits)
        if name == "logsumexp":
            return F.LogSumExp(body, *limits)
        # mean: the count of a single range is its length; otherwise count the points.
        if count is None:
            count = (limits[0][2] - limits[0][1] + 1 if len(limits) == 1
                     else F.Sum(sp.Integer(1), *limits))
        return F.Sum(body, *limits) / count

    def unrolled(self, name, vec, node):
        """With particles, a reduction of a short vector of known length (a particle's
        d coordinates) is written out term by term, ``(x[3*i] - x[3*j])**2 + ...``: a
        pair sum then stays one level of pairs, with no nested level over coordinates."""
        length = sp.sympify(vec.length)
        if not (self.particles and length.is_Integer and 1 <= int(length) <= MAX_UNROLL):
            return None
        terms = [vec.at(sp.Integer(c)) for c in range(int(length))]
        if any(_is_condition(t) for t in terms):
            self.error(f"{name}() of a condition is not allowed; use where(cond, 1, 0)", node)
        if name == "norm":
            return F.SafeSqrt(sp.Add(*[t**2 for t in terms]))
        if name == "sum":
            return sp.Add(*terms)
        if name == "mean":
            return sp.Add(*terms) / len(terms)
        if name == "prod":
            return sp.Mul(*terms)
        return terms[0] if len(terms) == 1 else F.LogAddExp(*terms)

    def generator(self, gen):
        bound = []
        saved = dict(self.indices)
        try:
            for comp in gen.generators:
                self.node = comp
                if comp.ifs:
                    self.error("'if' inside a generator is not supported; use where(cond, a, 0)",
                               comp.ifs[0])
                if comp.is_async or not isinstance(comp.target, ast.Name):
                    self.error("a generator must read 'for i in range(...)'", comp.target)
                it = comp.iter
                if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                        and it.func.id == "range" and 1 <= len(it.args) <= 2 and not it.keywords):
                    self.error("a generator can only run over range(stop) or range(start, stop)",
                               it)
                bounds = [self.visit(a) for a in it.args]
                for b in bounds:
                    if not isinstance(b, sp.Expr) or not _is_integer_expr(b):
                        names = {v.id for a in it.args for v in ast.walk(a)
                                 if isinstance(v, ast.Name)}
                        hint = ("; N is the particle count only with particles=d (e.g. "
                                "from_expression(..., particles=3)); without it N is an ordinary "
                                "parameter: use n, the length of x"
                                if "N" in names and not self.particles else "")
                        self.error("range() bounds must be integer expressions of n, len(...) "
                                   f"and outer indices{hint}", it)
                    if any(abs(int(a)) > 2**31 for a in b.atoms(sp.Integer)):
                        self.error("range() bounds must be smaller than 2**31", it)
                lo, hi = (sp.Integer(0), bounds[0]) if len(bounds) == 1 else bounds
                name = comp.target.id
                if name in self.reserved_names() or name in self.ranks or name in self.locals:
                    self.error(f"the index name '{name}' is already taken (by x, n, a constant, "
                               f"a parameter or a definition); choose another", comp.target)
                sym = index_symbol(name) if name not in self.indices else index_symbol(
                    self.fresh_name(name))
                self.indices[name] = sym
                bound.append((sym, lo, hi - 1))
            body = self.visit(gen.elt)
        finally:
            self.indices = saved
        if isinstance(body, (Vector, Matrix)):
            self.error("the body of a generator must be one scalar per index; index the vector, "
                       "e.g. x[i], or reduce it", gen.elt)
        if _is_condition(body):
            self.error("the body of a generator cannot be a condition; use where(cond, 1, 0)",
                       gen.elt)
        return body, list(reversed(bound))  # SymPy lists the innermost limit first

    def sum_over(self, vec):
        if self.particles:
            unrolled = self.unrolled("sum", vec, self.node)
            if unrolled is not None:
                return unrolled
        i = self.fresh_index()
        return F.Sum(vec.at(i), (i, 0, vec.length - 1))

    def fresh_name(self, stem="i"):
        while True:
            self._fresh += 1
            name = f"{stem}{self._fresh}" if stem != "i" or self._fresh > 4 else "ijkl"[self._fresh - 1]
            if name not in self.used_names and name not in self.indices:
                return name

    def fresh_index(self):
        return index_symbol(self.fresh_name())

    # -- broadcasting -----------------------------------------------------------
    def elementwise(self, fn, values, what, logic=False, checked=False, mismatch=None):
        """Apply a scalar function per component; scalars broadcast over vectors.

        ``logic``: the operation takes conditions (and/or/not, where's first
        argument handled by the caller) and gives conditions.
        """
        if any(isinstance(v, Matrix) for v in values):
            self.error(f"{what} does not apply to a matrix; index it or use @")
        if not logic and not checked and any(_is_condition(v) or (isinstance(v, Vector) and v.condition)
                             for v in values):
            self.error(f"{what} takes numbers, not a condition; conditions belong inside "
                       f"where(cond, a, b)")
        vectors = [v for v in values if isinstance(v, Vector)]
        if not vectors:
            return fn(*values)
        length = vectors[0].length
        for v in vectors[1:]:
            self.check_size(length, v.length, mismatch or
                            f"in {what}, {vectors[0].what} has length {{a}} but {v.what} has "
                            f"length {{b}}; vectors combined elementwise must have equal lengths")
        text = _source(self.node, self.lines) if self.node is not None else what
        return Vector(length, lambda k: fn(*[v.at(k) if isinstance(v, Vector) else v
                                             for v in values]), text, condition=logic)

    def check_size(self, a, b, message):
        diff = sp.simplify(a - b)
        if diff == 0:
            return
        if diff.is_number:
            self.error(message.format(a=a, b=b))
        self.size_checks.append((a, b, message))


# Names users reach for that the language spells otherwise.
_POWERS = ("pow", "square")
_MODULES = ("torch", "np", "numpy", "math", "sp", "sympy", "F", "jnp")


def _atomic(node) -> bool:
    """True when ``node``'s source needs no parentheses as the base or exponent of ``**``."""
    return isinstance(node, (ast.Name, ast.Constant, ast.Subscript, ast.Call)) and not (
        isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
        and node.value < 0)


_ALIASES = {"min": "minimum", "max": "maximum", "ln": "log",
            "logsumexp_": "logsumexp", "fabs": "abs", "tanh_": "tanh",
            "sigm": "sigmoid", "relu": "maximum", "arctan": "atan", "arcsin": "asin",
            "arccos": "acos", "arctan2": "atan2"}

_OPNAMES = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


def _source(node, lines=None) -> str:
    """The formula text of ``node``, cut from the source lines (no unparse: deep trees are
    fine, and each call costs the length of the node, not of the formula)."""
    try:
        if lines is None or node.lineno != node.end_lineno:
            raise AttributeError
        seg = lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode("utf-8")
    except (AttributeError, IndexError, UnicodeDecodeError, TypeError):
        return "an expression"
    seg = " ".join(seg.split()).replace(_LAMBDA_PLACEHOLDER, "lambda")
    return seg if len(seg) <= 60 else seg[:57] + "..."


def _tree_size(expr, memo=None) -> int:
    """Nodes of ``expr`` as a tree (shared subexpressions counted each time), in linear time."""
    memo = {} if memo is None else memo
    if id(expr) not in memo:
        memo[id(expr)] = 1 + sum(_tree_size(a, memo) for a in expr.args)
    return memo[id(expr)]


def _is_condition(v) -> bool:
    """A comparison or a combination of them (a SymPy Symbol is a Boolean too: not here)."""
    return isinstance(v, (sp.Rel, sp.logic.boolalg.BooleanFunction, sp.logic.boolalg.BooleanAtom))


def _transpose(m: Matrix) -> Matrix:
    return Matrix(m.cols, m.rows, lambda r, c: m.element(c, r), f"{m.what}.T", m.param,
                  not m.transposed)


def _describe(node) -> str:
    names = {"Lambda": "a lambda", "Attribute": "attribute access", "Import": "an import",
             "ImportFrom": "an import", "JoinedStr": "an f-string", "Dict": "a dict",
             "Set": "a set", "ListComp": "a list comprehension", "Starred": "'*' unpacking",
             "NamedExpr": "':='", "Await": "await", "Yield": "yield", "Tuple": "a tuple",
             "Eq": "'=='", "NotEq": "'!='", "Is": "'is'", "In": "'in'", "IsNot": "'is not'",
             "NotIn": "'not in'", "Invert": "'~'", "BitAnd": "'&'", "BitOr": "'|'",
             "LShift": "'<<'", "RShift": "'>>'", "FunctionDef": "a function definition",
             "Subscript": "indexing", "DictComp": "a dict comprehension",
             "SetComp": "a set comprehension", "GeneratorExp": "a bare generator"}
    kind = type(node).__name__
    return names.get(kind, f"'{kind}'")


def _constant_power(base: sp.Number, exp: sp.Number, parser) -> sp.Expr:
    """Fold a power of two numbers without ever building a huge integer."""
    if base.is_Integer and exp.is_Integer and exp >= 0:
        bits = max(int(abs(base)).bit_length(), 1) * int(exp)
        if abs(base) <= 1 or bits <= MAX_EXPONENT_BITS:
            value = sp.Pow(base, exp)
            if value.is_Integer and int(abs(value)).bit_length() > 1024:
                parser.error(f"the constant {base}**{exp} exceeds the float64 range")
            return value
    fb, fe = float(base), float(exp)
    if fb == 0 and fe < 0:
        parser.error(f"the constant {base}**{exp} divides by zero")
    try:
        value = math.pow(fb, fe)
    except OverflowError:
        parser.error(f"the constant {base}**{exp} exceeds the float64 range")
    except ZeroDivisionError:
        parser.error(f"the constant {base}**{exp} divides by zero")
    except ValueError:
        value = math.nan  # negative base, fractional exponent: NaN, like torch
    if math.isinf(value) and math.isfinite(fb) and math.isfinite(fe):
        parser.error(f"the constant {base}**{exp} exceeds the float64 range")
    return sp.Float(value) if math.isfinite(value) else sp.nan


def _is_integer_expr(e) -> bool:
    """Built from integers and integer symbols with + - * // % only."""
    if not isinstance(e, sp.Expr):
        return False
    if e.is_Integer or (e.is_Symbol and e.is_integer):
        return True
    if isinstance(e, (sp.Add, sp.Mul, sp.Mod)):
        return all(_is_integer_expr(a) for a in e.args)
    if isinstance(e, sp.floor):
        return all(s.is_integer for s in e.free_symbols)
    if isinstance(e, sp.Pow):
        return _is_integer_expr(e.base) and e.exp.is_Integer and e.exp >= 0
    return False


def _check_affine(value, index_vars, parser, node):
    """Indices must be affine in the loop indices, optionally taken modulo m."""
    core = value
    if isinstance(value, sp.Mod):
        core = value.args[0]
        if value.args[1].free_symbols & index_vars:
            parser.error("the modulus of an index cannot depend on a loop index", node)
    try:
        poly = sp.Poly(core, *sorted(index_vars & core.free_symbols, key=str))
    except sp.PolynomialError:
        poly = None
    if poly is None or poly.total_degree() > 1 or any(
            c.free_symbols & index_vars for c in poly.coeffs()):
        parser.error(f"the index {value} is not affine in the loop indices; indices may be "
                     f"a*i + b, or (a*i + b) % m for periodic neighbours", node)

