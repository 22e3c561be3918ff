"""``torchebm-codegen`` (also ``python -m torchebm.symbolic``): build, show, verify."""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from ..errors import (EnergySyntaxError, ParameterError, ShapeError, TorchEBMError,
                      UnsetParameterWarning)
from .build import DEFINITIONS, GENERATED, OUTPUT, build, first_line
from .compiler import compile_spec
from .definitions import load_definition
from .load import load_class
from .parse import parse_formula


def _param(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"-p takes name=value, e.g. -p a=1.0 or -p mu=[0,1]; "
                                         f"got {text!r}")
    name, value = text.split("=", 1)
    special = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan}
    try:
        parsed = (special[value.strip().lower()] if value.strip().lower() in special
                  else ast.literal_eval(value.strip()))   # numbers and nested lists only
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise argparse.ArgumentTypeError(f"-p {name}: {value!r} is not a number or a list "
                                         f"of numbers") from None
    def check(v):
        if isinstance(v, (list, tuple)):
            if not v:
                raise argparse.ArgumentTypeError(f"-p {name}: an empty list is not a value")
            return [check(e) for e in v]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise argparse.ArgumentTypeError(f"-p {name}: give a number or a list of numbers")
        try:
            return float(v)
        except OverflowError:
            raise argparse.ArgumentTypeError(
                f"-p {name}: {str(v)[:20]}... ({len(str(v))} digits) is outside the float64 "
                f"range (about 1.8e308)") from None
    return name.strip(), check(parsed)


MAX_CLI_DIM = 100_000
MAX_VERIFY_DIM = 2_000            # verify builds autograd Hessians, n x n per point
MAX_CLI_ELEMENTS = 2**27          # chains x dim of one sampler state (1 GiB in float64)
PLOT_FORMATS = {"png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}


def _dims(text: str):
    try:
        dims = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims takes integers like 1,2,17; got {text!r}")
    if not dims or any(not 1 <= d <= MAX_CLI_DIM for d in dims):
        raise argparse.ArgumentTypeError(f"--dims takes dimensions from 1 to {MAX_CLI_DIM}; "
                                         f"got {text!r}")
    return dims


def _params(pairs) -> dict:
    """``-p`` values as a dict; a name given twice is an error, not a silent override."""
    out = {}
    for name, value in pairs:
        if name in out:
            raise EnergySyntaxError(f"-p {name} is given twice; give each parameter once")
        out[name] = value
    return out


def _bounded_int(lo, hi):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range {lo} .. {hi}")
        return v
    return parse


def _location(text: str):
    """``--init-loc``: a finite number, or a list of finite numbers (one per coordinate)."""
    try:
        v = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        v = None
    values = v if isinstance(v, (list, tuple)) else [v]
    if not values or not all(isinstance(e, (int, float)) and not isinstance(e, bool)
                             and math.isfinite(e) for e in values):
        raise argparse.ArgumentTypeError(
            f"expected a finite number or a list of finite numbers such as [1,0.5], got {text!r}")
    return [float(e) for e in values] if isinstance(v, (list, tuple)) else float(v)


def _finite(positive):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or (v <= 0 if positive else v < 0):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'> 0' if positive else '>= 0'}, got {text!r}")
        return v
    return parse


_OPTION_LIKE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=.*)?\Z")   # a mistyped option
_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?\Z|-\.\d+([eE][-+]?\d+)?\Z")


def _formulas_after_dashdash(argv, parser):
    """Move arguments that begin with '-' but are formulas (``-logsumexp(...)``) behind ``--``.

    argparse reads any word that starts with '-' as an option; a formula such as
    ``-sum(x**2)`` is neither a known option nor a negative number.
    """
    if "--" in argv:
        return argv
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            choice = action.choices[sub]
            if isinstance(choice, argparse.ArgumentParser):
                for a in choice._actions:
                    options.update(a.option_strings)
    keep, moved = [], []
    for word in argv:
        if (word.startswith("-") and len(word) > 1 and word.split("=", 1)[0] not in options
                and not _NUMBER.match(word) and not _OPTION_LIKE.match(word)):
            moved.append(word)
        else:
            keep.append(word)
    return keep + ["--"] + moved if moved else keep


MAIN_EXAMPLES = """examples:
  torchebm-codegen show "sum(a*x**2 + b*sin(x))" -p a=1 -p b=0.5
  torchebm-codegen verify "sum((x**2 - 1)**2)" --dims 1,3
  torchebm-codegen sample "sum((x**2 - 1)**2)" --dim 2 --step-size 0.15 --init-scale 0.5 \\
      --steps 5000 --plot dw.png
  torchebm-codegen build --check

Each command has --help. The expression language: docs/language.md."""

BUILD_EXAMPLES = """examples:
  torchebm-codegen build            regenerate torchebm/core/_generated from definitions/
  torchebm-codegen build --check    exit 1 if a generated file is out of date"""

SHOW_EXAMPLES = """examples:
  torchebm-codegen show "sum(a*x**2)" -p a=2.0
  torchebm-codegen show "0.5*(x - mu) @ P @ (x - mu)" -p mu=[0,0] -p "P=[[2,0],[0,1]]" \\
      --name MyGaussian -o my_gaussian.py     (importable without SymPy)"""

VERIFY_EXAMPLES = """examples:
  torchebm-codegen verify                                  every built-in definition
  torchebm-codegen verify definitions/rosenbrock.toml
  torchebm-codegen verify "sum(a*x**2 + sin(x))" -p a=0.5 --dims 1,2,17 --no-speed

The speed-up lines time the closed-form gradient against autograd of the same
generated energy (batch 2048, float32) at n = 64 when the energy takes any n, else at
the largest dimension checked; at small n per-call overhead dominates both. It is one
measurement on this machine, now: a loaded machine moves it."""

SAMPLE_EXAMPLES = """examples:
  torchebm-codegen sample "sum((x**2 - 1)**2)" --dim 2 --step-size 0.15 --init-scale 0.5 \\
      --steps 5000 --plot double_well.png
  torchebm-codegen sample "sum(-log(x) + x)" --dim 2 --init-loc 3 --init-scale 0.5 \\
      --step-size 0.5 --steps 2000          (starts inside the domain x > 0)
  torchebm-codegen sample "-logsumexp(-0.5*sum((x - M[k, :])**2) for k in range(2))" \\
      -p "M=[[-2,0],[2,0]]" --sampler hmc --step-size 0.2 --steps 2000"""

STRICT_HELP = ("fail, instead of warning, when a scalar parameter of the formula is given no "
               "-p value (it would default to 1.0; often a typo such as sinx for sin(x))")


def main(argv=None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="torchebm-codegen", formatter_class=raw, epilog=MAIN_EXAMPLES,
        description="Compile energy formulas into torch modules with closed-form gradients.")
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="regenerate the built-in energies from definitions/",
                       formatter_class=raw, epilog=BUILD_EXAMPLES)
    b.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each stale generated file")
    b.add_argument("--definitions", type=Path, default=DEFINITIONS, metavar="FOLDER",
                   help="folder of definition files (*.toml) to compile (default: the "
                        "repository's definitions/)")
    b.add_argument("--output", type=Path, default=OUTPUT, metavar="FOLDER",
                   help="folder of the generated modules; only files marked @generated are "
                        "replaced (default: torchebm/core/_generated)")

    s = sub.add_parser("show", help="print (or write) the generated module of a formula",
                       formatter_class=raw, epilog=SHOW_EXAMPLES)
    s.add_argument("formula", help="the energy of one sample x, e.g. 'sum(a*x**2 + sin(x))'")
    s.add_argument("--name", default="ExpressionEnergy",
                   help="class name (default: %(default)s)")
    s.add_argument("-p", "--param", type=_param, action="append", default=None,
                   help="parameter value, name=value (a number or a list)")
    s.add_argument("-o", "--output", type=Path,
                   help="write the module to this file (importable without SymPy; '-' is "
                        "standard output); an existing file is replaced only if torchebm "
                        "generated it")
    s.add_argument("--force", action="store_true",
                   help="with -o, replace an existing file that torchebm did not generate")
    s.add_argument("--strict", action="store_true", help=STRICT_HELP)

    v = sub.add_parser("verify", help="check gradients and second derivatives against autograd "
                                      "and mpmath oracles", formatter_class=raw,
                       epilog=VERIFY_EXAMPLES)
    v.add_argument("targets", nargs="*",
                   help="formulas, definition files or folders (default: every definition)")
    v.add_argument("-p", "--param", type=_param, action="append", default=None,
                   help="parameter value of the formula targets, name=value (a number or a "
                        "list); repeat for several")
    v.add_argument("--dims", type=_dims,
                   help="dimensions to test, e.g. 1,2,17 (default: the dimension the formula "
                        "or its parameters fix, else 1,2,5)")
    v.add_argument("--strict", action="store_true", help=STRICT_HELP)
    v.add_argument("--dtype", choices=["float64"], default="float64",
                   help="precision of the checks (float64; float32 is too coarse for them)")
    v.add_argument("--points", type=_bounded_int(1, 10_000), default=4,
                   help="random points per dimension (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0,
                   help="seed of the random points (default: %(default)s)")
    v.add_argument("--no-speed", action="store_true", help="skip the speed-up column")
    v.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (one per energy, with its time)")

    m = sub.add_parser("sample", help="sample a formula with Langevin, MALA or HMC",
                       formatter_class=raw, epilog=SAMPLE_EXAMPLES)
    m.add_argument("formula", help="the energy, e.g. 'sum((x**2 - 1)**2)'")
    m.add_argument("-p", "--param", type=_param, action="append", default=None,
                   help="parameter value, name=value (a number or a list)")
    m.add_argument("--dim", type=_bounded_int(1, MAX_CLI_DIM),
                   help="dimension n (default: the size the formula or every vector/matrix "
                        "parameter fixes, else 2)")
    m.add_argument("--chains", type=_bounded_int(1, 10**8), default=1000,
                   help="number of chains (default: %(default)s)")
    m.add_argument("--steps", type=_bounded_int(1, 10**9), default=1000,
                   help="steps per chain (default: %(default)s)")
    m.add_argument("--sampler", choices=["langevin", "mala", "hmc"], default="mala",
                   help="unadjusted Langevin, MALA (Metropolis-adjusted) or HMC "
                        "(default: %(default)s)")
    m.add_argument("--step-size", type=_finite(positive=True), default=0.05,
                   help="step size, the leapfrog epsilon for HMC (default: %(default)s)")
    m.add_argument("--leapfrog", type=_bounded_int(1, 10_000), default=10,
                   help="HMC leapfrog steps (default: %(default)s)")
    m.add_argument("--init-scale", type=_finite(positive=False), default=1.0,
                   help="chains start at init-loc + init-scale * standard normal draws "
                        "(default: %(default)s)")
    m.add_argument("--init-loc", type=_location, default=0.0,
                   help="centre of the starts: a number, or a list of n numbers such as "
                        "[1,0.5] (default: %(default)s); move it inside the domain of an "
                        "energy such as -log(x)")
    m.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    m.add_argument("--plot", type=Path, help="write a picture of landscape and samples (2-D)")
    m.add_argument("--strict", action="store_true", help=STRICT_HELP)
    m.add_argument("--xlim", type=float, nargs=2, help="plot window along x[0]")
    m.add_argument("--ylim", type=float, nargs=2, help="plot window along x[1]")

    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(_formulas_after_dashdash(argv, ap))
    for path in [getattr(args, "plot", None), getattr(args, "output", None)]:
        if args.command != "build" and path is not None and not path.parent.is_dir():
            ap.error(f"cannot write {path}: the folder {path.parent} does not exist")
    if args.command == "sample":
        if args.plot is not None and args.plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
            ap.error(f"--plot {args.plot}: give a picture file ending in "
                     f"{', '.join('.' + f for f in sorted(PLOT_FORMATS))}")
        for name in ("xlim", "ylim"):
            lim = getattr(args, name)
            if lim is not None and not (math.isfinite(lim[0]) and math.isfinite(lim[1])
                                        and lim[0] < lim[1]):
                ap.error(f"--{name} takes two finite numbers lo < hi, got {lim[0]} {lim[1]}")
        if args.dim is not None and args.chains * args.dim > MAX_CLI_ELEMENTS:
            ap.error(f"--chains {args.chains} x --dim {args.dim} = {args.chains * args.dim} "
                     f"values per state, more than {MAX_CLI_ELEMENTS}; use fewer chains")
    if args.command == "verify" and args.dims and max(args.dims) > MAX_VERIFY_DIM:
        ap.error(f"--dims: verify compares Hessians (n x n per point); use n <= {MAX_VERIFY_DIM}")
    try:
        if args.command == "build":
            return build(check=args.check, definitions=args.definitions, output=args.output)
        if args.command == "show":
            return _show(args)
        if args.command == "sample":
            return _sample(args)
        return _verify(args)
    except TorchEBMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``show ... | head``): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _parse_cli_formula(formula, params, strict=False):
    """Parse a command-line formula; warn on stderr (or, with --strict, fail) for scalar
    parameters given no -p value."""
    from .api import rank_of
    from .hints import unset_parameters_message
    parsed = parse_formula(formula, {k: rank_of(k, v) for k, v in params.items()})
    unknown = set(params) - set(parsed.params)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {sorted(unknown)} for {formula!r}; "
                             f"its parameters: {sorted(parsed.params) or 'none'}")
    unset = [k for k, p in parsed.params.items() if k not in params and p.rank == 0]
    if unset:
        message = unset_parameters_message(formula, unset, strict, cli=True)
        if strict:
            raise ParameterError(message)
        print(f"warning: {message}", file=sys.stderr)
    return parsed


def _formula_spec(formula, params, name="ExpressionEnergy", strict=False):
    """The spec of a command-line formula: values given with -p become its defaults."""
    from .api import formula_spec
    parsed = _parse_cli_formula(formula, params, strict)
    return formula_spec(formula, parsed, name, defaults=params), parsed


def _short(text: str, width: int = 40) -> str:
    """A formula shortened to ``width`` characters for one-line messages."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _shape(value):
    """Shape of a -p value: () for a number, (K,) for a list, (K, M) for a list of lists."""
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(torch.as_tensor(value, dtype=torch.float64).shape)


def _size_words(base, axis, params, size):
    """``'mu, of length 3'``, ``'M, with 2 columns'``."""
    if len(_shape(params.get(base, ()))) == 2:
        return f"{base}, with {size} {'rows' if axis == 0 else 'columns'}"
    return f"{base}, of length {size}"


def infer_dim(parsed, params):
    """The dimension ``n`` a command-line formula implies, as ``(n, reason)``.

    In order: ``n`` forced by a size check (``x - mu`` needs ``n = len(mu)``; rows or
    columns of a matrix next to x); a formula that reads only components
    ``x[0] .. x[m]`` (``n = m + 1``); else the one size that every vector and matrix
    parameter agrees on. ``(None, "")`` when the formula has no sized parameter.

    Raises:
        ShapeError: the sizes disagree (naming each candidate); pass --dim.
    """
    from .api import components_dimension
    from .symbols import N, size_symbol, split_size_symbol
    sizes = {}
    for name, value in params.items():
        for axis, size in enumerate(_shape(value)):
            sizes[size_symbol(name, axis)] = size
    forced = {}
    for a, b, _ in parsed.size_checks:
        for lhs, rhs in ((a, b), (b, a)):
            if lhs == N:
                value = rhs.subs(sizes)
                if value.is_Integer:
                    what = ", ".join(_size_words(base, axis, params, int(value)) for base, axis
                                     in sorted(filter(None, map(split_size_symbol,
                                                                rhs.free_symbols))))
                    forced.setdefault(int(value), what or f"a list literal of length {value}")
    if len(forced) == 1:
        (n, what), = forced.items()
        return n, f"x is combined with {what}"
    if len(forced) > 1:
        shown = "; ".join(f"n = {n} from {what}" for n, what in sorted(forced.items()))
        raise ShapeError(f"the parameters ask for different dimensions ({shown}); "
                         f"check their sizes")
    n = components_dimension(parsed.expression)
    if n is not None:
        return n, f"the formula reads only the components x[0] .. x[{n - 1}]"
    candidates = {}
    for name, value in params.items():
        shape = _shape(value)
        for axis, size in enumerate(shape):
            what = name if len(shape) == 1 else f"{name} ({'rows' if axis == 0 else 'columns'})"
            candidates.setdefault(size, []).append(what)
    if not candidates:
        return None, ""
    if len(candidates) == 1:
        (n, names), = candidates.items()
        return n, f"every vector and matrix parameter has size {n}"
    shown = ", ".join(f"{n} ({', '.join(names)})" for n, names in sorted(candidates.items()))
    raise ShapeError(f"cannot tell the dimension n of x from the parameter sizes {shown}; "
                     f"pass it with --dim, e.g. "
                     f"{' or '.join(f'--dim {n}' for n in sorted(candidates))}")


def _overwrite_refusal(path: Path, force: bool) -> str | None:
    """Why ``show -o path`` must not write there, or None: an existing file is replaced
    only when it is a module generated by torchebm (or with ``--force``); a link never."""
    if path.is_symlink():
        return f"{path} is a symbolic link; write to the file itself"
    if not path.exists():
        return None
    if path.is_dir():
        return f"{path} is a folder; give a file name ending in .py"
    if force:
        return None
    try:
        first = first_line(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if first.startswith(GENERATED):
        return None
    return (f"{path} exists and was not generated by torchebm; refusing to overwrite it "
            f"(choose another file, or pass --force)")


def _show(args):
    params = _params(args.param or [])
    spec, _ = _formula_spec(args.formula, params, args.name, strict=args.strict)
    source = compile_spec(spec).generated.source
    if args.output is not None and str(args.output) == "-":
        print(source)
        return 0
    if args.output:
        refusal = _overwrite_refusal(args.output, args.force)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        try:
            args.output.write_text(source, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"wrote {args.output}")
    else:
        print(source)
    return 0


SPEED_DIM = 64     # the speed-up is timed here when the energy allows it (small n times overhead)


def _speed_energy(cls, spec, fixed, tested, gen):
    """(n, energy) to time: ``SPEED_DIM`` when the energy takes any n and its parameters
    can be drawn for it, else the largest dimension checked."""
    largest = max(tested)
    free = (largest < SPEED_DIM and spec.dim is None and spec.n_particles is None
            and spec.min_dim <= SPEED_DIM and (spec.max_dim is None or spec.max_dim >= SPEED_DIM)
            and (fixed is None or all(p.rank == 0 for p in spec.params)))
    if not free:
        return largest, tested[largest]
    _, energy, outside = _energy_at(cls, spec, fixed, SPEED_DIM, gen)
    return (largest, tested[largest]) if outside is not None else (SPEED_DIM, energy)


def _energy_at(cls, spec, fixed, n, gen):
    """``(params, energy, None)`` built for dimension n (the ``fixed`` parameter values, or
    ones drawn for n), or ``(params, energy, error)`` when n is outside its domain."""
    params = dict(fixed) if fixed is not None else {
        d.name: _synthesize(d, n, gen) for d in spec.params}
    energy = cls(**{attr: params[name] for name, attr, _ in cls.param_specs if name in params})
    # a parameter given no value holds its default (1.0): the oracle must read that value,
    # not keep the bare symbol
    params.update({name: getattr(energy, attr).detach().tolist()
                   for name, attr, _ in cls.param_specs if name not in params})
    try:
        energy(torch.zeros(1, n, dtype=torch.float64))
    except TorchEBMError as exc:
        return params, energy, exc
    return params, energy, None


def _synthesize(decl, n, gen):
    if decl.rank == 0:
        return float(decl.default if decl.default is not None else 1.0)
    if decl.rank == 1:
        return (0.5 * torch.randn(n, dtype=torch.float64, generator=gen)).tolist()
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    if decl.constraint == "positive_definite":
        return (a @ a.T / max(n, 1) + torch.eye(n, dtype=torch.float64)).tolist()
    return (0.3 * a).tolist()


def _targets(args):
    """(label, spec, fixed params or None, dims) for each target."""
    out = []
    paths = []
    for t in args.targets or [str(DEFINITIONS)]:
        p = Path(t)
        if t.endswith(".toml") or p.is_dir():
            if p.is_dir():
                paths += sorted(p.glob("*.toml"))
            elif p.exists():
                paths.append(p)
            elif (not p.is_absolute() and p.parent in (Path("."), Path("definitions"))
                  and (DEFINITIONS / p.name).is_file()):
                # the help's "definitions/rosenbrock.toml" (or "rosenbrock.toml") run from
                # another folder: the built-in definition of that name
                print(f"{t}: not in the current folder; reading the built-in "
                      f"{DEFINITIONS / p.name}", file=sys.stderr)
                paths.append(DEFINITIONS / p.name)
            else:
                raise EnergySyntaxError(
                    f"no such definition file: {t} (relative paths are read from the current "
                    f"folder, {Path.cwd()}); the built-in definitions are in {DEFINITIONS}")
        else:
            params = _params(args.param or [])
            spec, parsed = _formula_spec(t, params, strict=args.strict)
            dims = args.dims
            if dims is None:
                n, reason = infer_dim(parsed, params)
                dims = [1, 2, 5] if n is None else [n]
                if n is not None:
                    print(f"{_short(t)}: checking n = {n} only ({reason}); pass --dims to "
                          f"check others")
            out.append((t, spec, params, dims))
    for p in paths:
        spec = load_definition(p)
        lo, hi = spec.min_dim, spec.max_dim
        dims = args.dims or [d for d in (1, 2, 5) if d >= lo and (hi is None or d <= hi)] or [lo]
        if spec.n_particles is not None or spec.dim is not None:   # the constructor fixes n
            dims = [spec.n_particles * spec.particles if spec.n_particles is not None
                    else spec.dim]
        out.append((spec.class_name, spec, None, dims))
    return out


def _verify(args):
    from .verify import format_table, speedup, verify_energy
    gen = torch.Generator().manual_seed(args.seed)
    checks, speeds, skipped = [], [], []
    targets = _targets(args)
    for k, (label, spec, fixed, dims) in enumerate(targets, 1):
        started = time.perf_counter()
        if not args.quiet:
            print(f"verify [{k}/{len(targets)}] {_short(label)}: n = "
                  f"{', '.join(map(str, dims))} ...", end="", file=sys.stderr, flush=True)
        stage = [started]

        def progress(what):
            # each stage as it ends, so a slow energy (LJ-13: minutes) shows where it is
            if not args.quiet:
                now = time.perf_counter()
                print(f" {what} {now - stage[0]:.1f} s,", end="", file=sys.stderr, flush=True)
                stage[0] = now

        compiled = compile_spec(spec)
        cls = load_class(compiled.generated)
        progress("compiled")
        tested = {}
        for n in dims:
            params, energy, outside = _energy_at(cls, spec, fixed, n, gen)
            if outside is not None:          # this n is outside the energy's domain
                skipped.append(f"{label} n={n}: not checked ({str(outside).splitlines()[0]})")
                continue
            checks += verify_energy(label, energy, compiled.parsed, params, n,
                                    points=args.points, seed=args.seed)
            tested[n] = energy
            progress(f"n = {n} checked")
        if tested and not args.no_speed:
            n, energy = _speed_energy(cls, spec, fixed, tested, gen)
            speeds.append((label, n, speedup(energy, n)))
            progress("timed")
        if not args.quiet:
            print(f" total {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if not checks:
        print("error: no dimension could be checked:\n  " + "\n  ".join(skipped),
              file=sys.stderr)
        return 2
    print(format_table(checks, speeds))
    for line in skipped:
        print(line)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _sample(args):
    from ..samplers import MALA, HamiltonianMonteCarlo, LangevinDynamics
    from .api import from_expression
    params = _params(args.param or [])
    parsed = _parse_cli_formula(args.formula, params, strict=args.strict)
    dim = args.dim
    if dim is None:
        dim, reason = infer_dim(parsed, params)
        if dim is None:
            dim, reason = 2, "the default; pass --dim to change it"
        print(f"n = {dim} ({reason})")
    from .api import read_components
    read = read_components(parsed.expression)
    flat = [] if read is None else sorted(set(range(dim)) - read)
    if flat:
        shown = ", ".join(f"x[{k}]" for k in flat[:6]) + (", ..." if len(flat) > 6 else "")
        print(f"warning: the formula does not read {shown}: no force acts on "
              f"{'it' if len(flat) == 1 else 'them'}, so "
              f"{'it random-walks' if len(flat) == 1 else 'they random-walk'} and {'its' if len(flat) == 1 else 'their'} statistics below mean "
              f"nothing", file=sys.stderr)
    if args.plot and dim != 2:
        how = ("use --dim 2" if args.dim is not None or reason.startswith("the default")
               else f"this energy has n = {dim} ({reason}); drop --plot")
        print(f"error: --plot draws 2-D energies; {how}", file=sys.stderr)
        return 2
    if args.chains * dim > MAX_CLI_ELEMENTS:
        print(f"error: --chains {args.chains} x n = {dim} is {args.chains * dim} values per "
              f"state, more than {MAX_CLI_ELEMENTS}; use fewer chains", file=sys.stderr)
        return 2
    with warnings.catch_warnings():      # unset parameters were reported above, CLI-worded
        warnings.simplefilter("ignore", UnsetParameterWarning)
        energy = from_expression(args.formula, params=params)
    cls = {"langevin": LangevinDynamics, "mala": MALA, "hmc": HamiltonianMonteCarlo}[args.sampler]
    kw = {"n_leapfrog_steps": args.leapfrog} if args.sampler == "hmc" else {}
    loc = args.init_loc
    if isinstance(loc, list) and len(loc) != dim:
        print(f"error: --init-loc has {len(loc)} numbers but n = {dim}; give one number or "
              f"{dim}", file=sys.stderr)
        return 2
    x0 = torch.tensor(loc, dtype=torch.get_default_dtype()) + args.init_scale * torch.randn(
        args.chains, dim, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        bad = int((~torch.isfinite(energy(x0))).sum())
    if bad:
        print(f"error: {bad} of {args.chains} chains start where the energy is NaN or inf "
              f"(outside the domain of a log, sqrt, ...), where no step can move them. The "
              f"chains start at --init-loc + --init-scale * standard normal draws (now "
              f"{_short(str(loc), 30)} and {args.init_scale:g}): move --init-loc inside the "
              f"domain and narrow --init-scale, e.g. --init-loc 3 --init-scale 0.5 for -log(x)",
              file=sys.stderr)
        return 2
    try:
        sampler = cls(energy, step_size=args.step_size, seed=args.seed, **kw)
        with warnings.catch_warnings():   # diverged chains are reported below, CLI-worded
            warnings.filterwarnings("ignore", message=".*chains became non-finite",
                                    category=RuntimeWarning)
            final, diag = sampler.sample(x=x0, n_steps=args.steps,
                                         thin=max(1, args.steps // 200),
                                         return_diagnostics=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.dim = dim
    print(f"{args.sampler}: {args.chains} chains x {args.steps} steps in {args.dim}-D")
    print(diag.summary())
    if diag.nonfinite_chains:
        fix = ("use a smaller --step-size, or --sampler mala, which rejects such steps"
               if args.sampler == "langevin" else "use a smaller --step-size")
        print(f"error: the run diverged: {diag.nonfinite_chains} of {args.chains} chains became "
              f"NaN or inf (--step-size {args.step_size:g} is too large for this energy), so "
              f"there is no sample mean; {fix}", file=sys.stderr)
        return 1
    print(f"sample mean: {[round(v, 4) for v in final.mean(0).tolist()]}")
    if args.plot:
        from .. import plotting
        ax = plotting.plot_landscape(energy, samples=final, density=False, xlim=args.xlim,
                                     ylim=args.ylim, title=f"{args.formula}  ({args.sampler})")
        ax.figure.tight_layout()
        ax.figure.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
