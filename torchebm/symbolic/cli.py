"""``torchebm-codegen`` (also ``python -m torchebm.symbolic``): build, show, verify."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

from ..errors import EnergySyntaxError
from .build import DEFINITIONS, OUTPUT, build
from .compiler import compile_spec
from .definitions import load_definition
from .load import load_class
from .parse import parse_formula


def _param(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"-p takes name=value, e.g. -p a=1.0 or -p mu=[0,1]; "
                                         f"got {text!r}")
    name, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value.strip())   # numbers and nested lists only
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"-p {name}: {value!r} is not a number or a list "
                                         f"of numbers") from None
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float, list, tuple)):
        raise argparse.ArgumentTypeError(f"-p {name}: give a number or a list of numbers")
    return name.strip(), parsed


def _dims(text: str):
    try:
        dims = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims takes integers like 1,2,17; got {text!r}")
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError("--dims needs at least one dimension >= 0")
    return dims


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="torchebm-codegen",
        description="Compile energy formulas into torch modules with closed-form gradients.")
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="regenerate the built-in energies from definitions/")
    b.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each stale generated file")
    b.add_argument("--definitions", type=Path, default=DEFINITIONS)
    b.add_argument("--output", type=Path, default=OUTPUT)

    s = sub.add_parser("show", help="print (or write) the generated module of a formula")
    s.add_argument("formula")
    s.add_argument("--name", default="ExpressionEnergy", help="class name")
    s.add_argument("-p", "--param", type=_param, action="append", default=[],
                   help="parameter value, name=value (a number or a list)")
    s.add_argument("-o", "--output", type=Path,
                   help="write the module to this file (importable without SymPy)")

    v = sub.add_parser("verify", help="check gradients and second derivatives against autograd "
                                      "and mpmath oracles")
    v.add_argument("targets", nargs="*",
                   help="formulas, definition files or folders (default: every definition)")
    v.add_argument("-p", "--param", type=_param, action="append", default=[])
    v.add_argument("--dims", type=_dims, help="dimensions to test, e.g. 1,2,17")
    v.add_argument("--dtype", choices=["float64"], default="float64",
                   help="precision of the checks (float64; float32 is too coarse for them)")
    v.add_argument("--points", type=int, default=4, help="random points per dimension")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-speed", action="store_true", help="skip the speed-up column")

    m = sub.add_parser("sample", help="sample a formula with Langevin, MALA or HMC",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("formula", help="the energy, e.g. 'sum((x**2 - 1)**2)'")
    m.add_argument("-p", "--param", type=_param, action="append", default=[],
                   help="parameter value, name=value (a number or a list)")
    m.add_argument("--dim", type=int, help="dimension n (default: the length of a vector "
                                           "parameter, else 2)")
    m.add_argument("--chains", type=int, default=1000, help="number of chains")
    m.add_argument("--steps", type=int, default=1000, help="steps per chain")
    m.add_argument("--sampler", choices=["langevin", "mala", "hmc"], default="mala")
    m.add_argument("--step-size", type=float, default=0.05, help="step size (leapfrog epsilon)")
    m.add_argument("--leapfrog", type=int, default=10, help="HMC leapfrog steps")
    m.add_argument("--init-scale", type=float, default=1.0,
                   help="chains start at init-scale * standard normal draws")
    m.add_argument("--seed", type=int, default=0, help="random seed")
    m.add_argument("--plot", type=Path, help="write a picture of landscape and samples (2-D)")
    m.add_argument("--xlim", type=float, nargs=2, help="plot window along x[0]")
    m.add_argument("--ylim", type=float, nargs=2, help="plot window along x[1]")

    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            return build(check=args.check, definitions=args.definitions, output=args.output)
        if args.command == "show":
            return _show(args)
        if args.command == "sample":
            return _sample(args)
        return _verify(args)
    except EnergySyntaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _formula_spec(formula, params, name="ExpressionEnergy"):
    """The spec of a command-line formula: values given with -p become its defaults."""
    from .api import formula_spec, rank_of
    parsed = parse_formula(formula, {k: rank_of(k, v) for k, v in params.items()})
    unknown = set(params) - set(parsed.params)
    if unknown:
        raise EnergySyntaxError(f"unknown parameter(s) {sorted(unknown)} for {formula!r}; "
                                f"its parameters: {sorted(parsed.params) or 'none'}")
    return formula_spec(formula, parsed, name, defaults=params)


def _show(args):
    params = dict(args.param)
    spec = _formula_spec(args.formula, params, args.name)
    source = compile_spec(spec).generated.source
    if args.output:
        try:
            args.output.write_text(source, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"wrote {args.output}")
    else:
        print(source)
    return 0


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
            else:
                raise EnergySyntaxError(f"no such definition file: {t}")
        else:
            params = dict(args.param)
            spec = _formula_spec(t, params)
            sizes = {len(v) for v in params.values() if isinstance(v, (list, tuple))}
            dims = args.dims or (sorted(sizes) if sizes else [1, 2, 5])
            out.append((t, spec, params, dims))
    for p in paths:
        spec = load_definition(p)
        lo, hi = spec.min_dim, spec.max_dim
        dims = args.dims or [d for d in (1, 2, 5) if d >= lo and (hi is None or d <= hi)] or [lo]
        out.append((spec.class_name, spec, None, dims))
    return out


def _verify(args):
    from .verify import format_table, speedup, verify_energy
    gen = torch.Generator().manual_seed(args.seed)
    checks, speeds, skipped = [], [], []
    for label, spec, fixed, dims in _targets(args):
        compiled = compile_spec(spec)
        cls = load_class(compiled.generated)
        tested = {}
        for n in dims:
            params = dict(fixed) if fixed is not None else {
                d.name: _synthesize(d, n, gen) for d in spec.params}
            kwargs = {attr: params[name] for name, attr, _ in cls.param_specs if name in params}
            energy = cls(**kwargs)
            try:
                energy(torch.zeros(1, n, dtype=torch.float64))
            except EnergySyntaxError as exc:     # this n is outside the energy's domain
                skipped.append(f"{label} n={n}: not checked ({str(exc).splitlines()[0]})")
                continue
            checks += verify_energy(label, energy, compiled.parsed, params, n,
                                    points=args.points, seed=args.seed)
            tested[n] = energy
        if not tested:
            continue
        if not args.no_speed:
            n = max(tested)
            speeds.append((label, n, speedup(tested[n], n)))
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
    params = dict(args.param)
    sizes = {len(v) for v in params.values() if isinstance(v, (list, tuple))}
    dim = args.dim if args.dim is not None else (max(sizes) if sizes else 2)
    if args.plot and dim != 2:
        print("error: --plot draws 2-D energies; use --dim 2", file=sys.stderr)
        return 2
    energy = from_expression(args.formula, params=params)
    cls = {"langevin": LangevinDynamics, "mala": MALA, "hmc": HamiltonianMonteCarlo}[args.sampler]
    kw = {"n_leapfrog_steps": args.leapfrog} if args.sampler == "hmc" else {}
    try:
        sampler = cls(energy, step_size=args.step_size, seed=args.seed, **kw)
        x0 = args.init_scale * torch.randn(max(args.chains, 1), dim,
                                           generator=torch.Generator().manual_seed(args.seed))
        if args.chains < 1:
            raise ValueError("--chains must be at least 1")
        final, diag = sampler.sample(x=x0, n_steps=args.steps, thin=max(1, args.steps // 200),
                                     return_diagnostics=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.dim = dim
    print(f"{args.sampler}: {args.chains} chains x {args.steps} steps in {args.dim}-D")
    print(diag.summary())
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
