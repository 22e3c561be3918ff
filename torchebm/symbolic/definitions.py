"""Read ``definitions/*.toml``: one energy per file, strict keys, errors with file:line.

A definition file::

    name = "RosenbrockEnergy"          # the generated class
    summary = "one line"               # first docstring line
    formula = "sum(... for i in range(n - 1))"
    doc = "longer description"         # optional
    references = ["paper or benchmark"]
    min_dim = 2                        # optional: smallest n (max_dim: largest)

    [params.a]                         # one table per parameter, in constructor order
    default = 1.0                      # omitted: a required argument
    shape = "[n]"                      # "scalar" (default), "[n]", "[n, n]", "[K]", "[K, n]"
    constraint = "positive_definite"   # "real" (default), "positive", "positive_definite"
    doc = "what it is"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ..errors import EnergySyntaxError
from .ir import EnergySpec, ParamDecl

TOP_KEYS = {"name", "summary", "formula", "doc", "references", "min_dim", "max_dim", "params"}
PARAM_KEYS = {"default", "shape", "constraint", "doc"}
CONSTRAINTS = {"real", "positive", "positive_definite"}


def _line_of(text: str, key: str) -> int | None:
    m = re.search(rf"^\s*{re.escape(key)}\s*=", text, re.M)
    return text[:m.start()].count("\n") + 1 if m else None


def _fail(path, text, key, message):
    line = _line_of(text, key) if key else None
    where = f"{path}:{line}" if line else str(path)
    raise EnergySyntaxError(f"{where}: {message}")


def _rank(shape: str, path, text, key) -> int:
    s = shape.strip()
    if s in ("", "scalar", "[]"):
        return 0
    if not (s.startswith("[") and s.endswith("]")):
        _fail(path, text, "shape", f"parameter {key}: shape {shape!r} must be 'scalar' or like "
                                   f"'[n]' or '[n, n]'")
    dims = [d.strip() for d in s[1:-1].split(",") if d.strip()]
    if not 1 <= len(dims) <= 2 or not all(d.isidentifier() or d.isdigit() for d in dims):
        _fail(path, text, "shape", f"parameter {key}: shape {shape!r} must have one or two "
                                   f"dimensions named by letters or numbers")
    return len(dims)


def load_definition(path) -> EnergySpec:
    """Parse one definition file into an EnergySpec (unknown keys are errors)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnergySyntaxError(f"{path}: {exc}") from None
    leftover = set(data) - TOP_KEYS
    if leftover:
        key = sorted(leftover)[0]
        _fail(path, text, key, f"unknown key {key!r}; allowed keys: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "formula"):
        if not isinstance(data.get(key), str):
            _fail(path, text, key, f"'{key}' is required and must be a string")
    if not data["name"].isidentifier():
        _fail(path, text, "name", f"name {data['name']!r} is not a valid Python class name")
    params = []
    for pname, pdata in (data.get("params") or {}).items():
        if not isinstance(pdata, dict):
            _fail(path, text, "params", f"params.{pname} must be a table")
        extra = set(pdata) - PARAM_KEYS
        if extra:
            key = sorted(extra)[0]
            _fail(path, text, key, f"parameter {pname}: unknown key {key!r}; allowed keys: "
                                   f"{', '.join(sorted(PARAM_KEYS))}")
        shape = str(pdata.get("shape", "scalar"))
        rank = _rank(shape, path, text, pname)
        constraint = pdata.get("constraint", "real")
        if constraint not in CONSTRAINTS:
            _fail(path, text, "constraint", f"parameter {pname}: constraint {constraint!r} is "
                                            f"not one of {', '.join(sorted(CONSTRAINTS))}")
        default = pdata.get("default")
        if default is not None and rank == 0 and not isinstance(default, (int, float)):
            _fail(path, text, "default", f"parameter {pname}: default must be a number")
        params.append(ParamDecl(pname, rank, default, str(pdata.get("doc", "")), constraint,
                                "" if rank == 0 else shape))
    refs = data.get("references", [])
    if isinstance(refs, str):
        refs = [refs]
    return EnergySpec(
        class_name=data["name"], formula=data["formula"], params=tuple(params),
        doc=str(data.get("doc", "")), references=tuple(refs),
        origin=f"definitions/{path.name}", min_dim=int(data.get("min_dim", 0)),
        max_dim=data.get("max_dim"), summary=str(data.get("summary", "")))
