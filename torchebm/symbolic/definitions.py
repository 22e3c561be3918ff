"""Read ``definitions/*.toml``: one energy per file, validated against a schema.

A definition file::

    name = "RosenbrockEnergy"          # the generated class
    summary = "one line"               # first docstring line
    formula = "sum(... for i in range(n - 1))"
    doc = "longer description"         # optional
    references = ["paper or benchmark"]
    min_dim = 2                        # optional: smallest n (max_dim: largest)
    particles = 3                      # optional: x is N particles of 3 coordinates
    n_particles = 13                   # optional (with particles): constructor
                                       #   n_particles=13, dim=3; x is [..., 39]
    dim = 32                           # optional (instead): constructor dim=32

    [params.a]                         # one table per parameter, in constructor order
    default = 1.0                      # omitted: a required argument
    shape = "[n]"                      # "scalar" (default), "[n]", "[n, n]", "[K]", "[K, n]"
    constraint = "positive_definite"   # "real" (default), "positive", "positive_definite"
    doc = "what it is"

Everything in a definition file ends up in generated source, so the whole
file is checked before anything is built (the schema below: every key's
type and range). The file name itself must be an identifier plus ``.toml``:
it names the generated module. Errors say ``file:line: what is wrong``.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

from ..errors import EnergySyntaxError
from .ir import EnergySpec, ParamDecl
from .parse import BUILT_IN_NAMES, PARTICLE_NAMES

TOP_KEYS = {"name", "summary", "formula", "doc", "references", "min_dim", "max_dim", "params",
            "particles", "n_particles", "dim"}
PARAM_KEYS = {"default", "shape", "constraint", "doc"}
CONSTRAINTS = {"real", "positive", "positive_definite"}
MAX_DIM = 1_000_000              # largest min_dim / max_dim a definition may declare
_STEM = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
# the language's own names, and the constructor keywords of particle definitions
_BUILT_IN_NAMES = {*BUILT_IN_NAMES, *PARTICLE_NAMES, "n_particles", "dim"}


def _line_of(text: str, key: str, section: str | None = None) -> int | None:
    """1-based line of ``key =`` (inside ``[params.section]`` when given)."""
    start = 0
    if section is not None:
        m = re.search(rf"^\s*\[\s*params\s*\.\s*\"?{re.escape(section)}\"?\s*\]", text, re.M)
        if m is None:
            return None
        start = m.end()
        if key is None:
            return text[:m.start()].count("\n") + 1
    m = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=", re.M).search(text, start)
    return text[:m.start()].count("\n") + 1 if m else None


class _Checker:
    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def fail(self, key, message, section=None):
        line = _line_of(self.text, key, section) if (key or section) else None
        where = f"{self.path}:{line}" if line else str(self.path)
        raise EnergySyntaxError(f"{where}: {message}")

    def text_field(self, value, key, what, section=None, multiline=True):
        if not isinstance(value, str):
            self.fail(key, f"{what} must be a string, not {_kind(value)}", section)
        bad = [c for c in value if (not c.isprintable() and c not in ("\n\t" if multiline else ""))
               or c in "\x7f\u2028\u2029"]
        if bad:
            self.fail(key, f"{what} contains the control character {bad[0]!r}; remove it",
                      section)
        return value

    def dimension(self, value, key):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"'{key}' must be an integer, e.g. {key} = 2; got {_kind(value)} "
                           f"{value!r:.40}")
        if not 0 <= value <= MAX_DIM:
            self.fail(key, f"'{key}' = {value} is out of range 0 .. {MAX_DIM}")
        return value

    def default(self, value, rank, pname):
        def number(v):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail("default", f"parameter {pname}: default must hold numbers, not "
                                     f"{_kind(v)} {v!r:.40}", pname)
            try:
                f = float(v)
            except OverflowError:
                f = math.inf
            if not math.isfinite(f):
                self.fail("default", f"parameter {pname}: default {v!r:.40} is not a finite "
                                     f"float64 number", pname)
            return f

        if rank == 0:
            return number(value)
        if not isinstance(value, list) or not value:
            self.fail("default", f"parameter {pname} has shape rank {rank}: its default must be "
                                 f"a non-empty {'list' if rank == 1 else 'list of lists'} of "
                                 f"numbers", pname)
        if rank == 1:
            return tuple(number(v) for v in value)
        rows = []
        for row in value:
            if not isinstance(row, list) or not row:
                self.fail("default", f"parameter {pname}: a matrix default is a list of "
                                     f"non-empty rows (lists of numbers)", pname)
            rows.append(tuple(number(v) for v in row))
        if len({len(r) for r in rows}) != 1:
            self.fail("default", f"parameter {pname}: the rows of its default have different "
                                 f"lengths {sorted({len(r) for r in rows})}", pname)
        return tuple(rows)

    def default_meets(self, default, constraint, pname):
        """A default must satisfy its own constraint (else every ``Cls()`` would fail)."""
        if not isinstance(default, tuple):
            flat = [default]
        elif isinstance(default[0], tuple):
            flat = [v for row in default for v in row]
        else:
            flat = list(default)
        if constraint == "positive" and any(v <= 0 for v in flat):
            self.fail("default", f"parameter {pname}: default {default!r:.60} is not positive, "
                                 f"as its constraint requires", pname)
        if constraint == "positive_definite":
            import torch
            m = torch.tensor(default, dtype=torch.float64)
            ok = (m.dim() == 2 and m.shape[0] == m.shape[1] and torch.equal(m, m.T)
                  and int(torch.linalg.cholesky_ex(m)[1]) == 0)
            if not ok:
                self.fail("default", f"parameter {pname}: default is not a symmetric positive "
                                     f"definite matrix, as its constraint requires", pname)

    def rank(self, shape, pname) -> int:
        s = shape.strip()
        if s in ("", "scalar", "[]"):
            return 0
        if not (s.startswith("[") and s.endswith("]")):
            self.fail("shape", f"parameter {pname}: shape {shape!r} must be 'scalar' or like "
                               f"'[n]' or '[n, n]'", pname)
        dims = [d.strip() for d in s[1:-1].split(",")]
        if not 1 <= len(dims) <= 2 or not all(_IDENT.match(d) or d.isdigit() for d in dims):
            self.fail("shape", f"parameter {pname}: shape {shape!r} must have one or two "
                               f"dimensions named by letters or numbers", pname)
        return len(dims)


def _kind(value) -> str:
    return type(value).__name__


#: Largest definition file read (bytes): a formula is capped at 1e6 characters, and its
#: docstring and references are copied into the generated module
MAX_DEFINITION_BYTES = 2_000_000


def load_definition(path) -> EnergySpec:
    """Parse and validate one definition file into an EnergySpec.

    Raises:
        EnergySyntaxError: ``file:line: what is wrong`` for a file name that is
            not an identifier plus ``.toml``, a path that is not a regular file
            (a device, a FIFO) or holds more than ``MAX_DEFINITION_BYTES``,
            invalid TOML, an unknown or
            missing key, or a value of the wrong type or range.
    """
    path = Path(path)
    if path.suffix != ".toml" or not _STEM.match(path.stem):
        raise EnergySyntaxError(
            f"{path.name!r}: a definition file is named like 'my_energy.toml' (ASCII letters, "
            f"digits and '_', starting with a letter): the name becomes a Python module")
    try:
        if not path.is_file():
            raise EnergySyntaxError(f"{path}: not a regular file (a definition is a .toml "
                                    f"text file)")
        size = path.stat().st_size
        if size > MAX_DEFINITION_BYTES:
            raise EnergySyntaxError(
                f"{path}: {size} bytes, more than a definition file may hold "
                f"({MAX_DEFINITION_BYTES}); formulas, docs and references fit far below it")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EnergySyntaxError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise EnergySyntaxError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnergySyntaxError(f"{path}: {exc}") from None
    c = _Checker(path, text)
    leftover = set(data) - TOP_KEYS
    if leftover:
        key = sorted(leftover)[0]
        c.fail(key, f"unknown key {key!r}; allowed keys: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "formula"):
        if key not in data:
            c.fail(None, f"'{key}' is required (a string)")
    name = c.text_field(data["name"], "name", "'name'", multiline=False)
    if not _IDENT.match(name):
        c.fail("name", f"name {name[:60]!r} is not a Python class name (ASCII letters, digits "
                       f"and '_', starting with a letter), e.g. 'MyEnergy'")
    formula = c.text_field(data["formula"], "formula", "'formula'")
    summary = c.text_field(data.get("summary", ""), "summary", "'summary'", multiline=False)
    doc = c.text_field(data.get("doc", ""), "doc", "'doc'")
    refs = data.get("references", [])
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list):
        c.fail("references", f"'references' must be a list of strings, not {_kind(refs)}")
    refs = tuple(c.text_field(r, "references", "each reference", multiline=False) for r in refs)
    min_dim = c.dimension(data.get("min_dim", 0), "min_dim")
    max_dim = data.get("max_dim")
    if max_dim is not None:
        c.dimension(max_dim, "max_dim")
        if max_dim < min_dim:
            c.fail("max_dim", f"max_dim = {max_dim} is below min_dim = {min_dim}")
    particles = data.get("particles")
    if particles is not None:
        c.dimension(particles, "particles")
        if not 1 <= particles <= 64:
            c.fail("particles", f"particles = {particles}: the particle dimension must be 1 .. 64")
    n_particles = data.get("n_particles")
    fixed_dim = data.get("dim")
    if n_particles is not None:
        c.dimension(n_particles, "n_particles")
        if particles is None:
            c.fail("n_particles", "n_particles needs particles = d (the dimension of one "
                                  "particle)")
        if fixed_dim is not None:
            c.fail("dim", "give n_particles (constructor n_particles, dim) or dim (constructor "
                          "dim), not both")
        if n_particles < 1:
            c.fail("n_particles", "n_particles must be at least 1")
    if fixed_dim is not None:
        c.dimension(fixed_dim, "dim")
        if fixed_dim < 1 or (particles and fixed_dim % particles):
            c.fail("dim", f"dim = {fixed_dim} must be positive"
                          + (f" and a multiple of particles = {particles}" if particles else ""))
    table = data.get("params", {})
    if not isinstance(table, dict):
        c.fail("params", "'params' must hold one [params.NAME] table per parameter")
    params = []
    for pname, pdata in table.items():
        if not _IDENT.match(pname) or pname in _BUILT_IN_NAMES:
            c.fail(None, f"parameter name {pname[:60]!r} must be an ASCII identifier starting "
                         f"with a letter, and not one of {sorted(_BUILT_IN_NAMES)}", pname)
        if not isinstance(pdata, dict):
            c.fail("params", f"params.{pname} must be a table")
        extra = set(pdata) - PARAM_KEYS
        if extra:
            key = sorted(extra)[0]
            c.fail(key, f"parameter {pname}: unknown key {key!r}; allowed keys: "
                        f"{', '.join(sorted(PARAM_KEYS))}", pname)
        shape = c.text_field(pdata.get("shape", "scalar"), "shape", f"parameter {pname}: shape",
                             pname, multiline=False)
        rank = c.rank(shape, pname)
        constraint = pdata.get("constraint", "real")
        if not isinstance(constraint, str) or constraint not in CONSTRAINTS:
            c.fail("constraint", f"parameter {pname}: constraint {constraint!r:.40} is not one "
                                 f"of {', '.join(sorted(CONSTRAINTS))}", pname)
        default = pdata.get("default")
        if default is not None:
            default = c.default(default, rank, pname)
            c.default_meets(default, constraint, pname)
        pdoc = c.text_field(pdata.get("doc", ""), "doc", f"parameter {pname}: doc", pname)
        params.append(ParamDecl(pname, rank, default, pdoc, constraint,
                                "" if rank == 0 else shape))
    return EnergySpec(
        class_name=name, formula=formula, params=tuple(params), doc=doc, references=refs,
        origin=f"definitions/{path.name}", min_dim=min_dim, max_dim=max_dim, summary=summary,
        particles=particles, n_particles=n_particles, dim=fixed_dim)
