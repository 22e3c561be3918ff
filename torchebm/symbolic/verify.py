"""Check a compiled energy against independent oracles (``torchebm-codegen verify``).

For each dimension and random float64 points:

* ``energy~mpmath``: generated forward vs the SymPy expression evaluated
  with 30 digits (:mod:`torchebm.symbolic.oracle`);
* ``grad~autograd``: closed-form gradient vs ``torch.autograd.grad`` of the
  generated forward;
* ``grad~fd``: closed-form gradient vs central finite differences of the
  mpmath oracle (no torch code involved);
* ``e&g==fwd,grad``: ``energy_and_gradient`` equals ``forward`` and
  ``gradient`` called separately, bit for bit.
* ``hessian~autograd``: closed-form ``hessian`` vs the Hessian of the
  generated forward by double backward (``torch.autograd.functional``);
* ``hvp~autograd``, ``hdiag~autograd``, ``laplacian~autograd``: the
  closed-form Hessian-vector product, Hessian diagonal and Laplacian vs the
  same autograd Hessian.
* ``grad~func``: the closed-form gradient vs ``torch.func.grad`` of the
  generated forward, a third path besides autograd and mpmath;
* ``theta~autograd``, ``theta-sum~autograd``, ``theta-total~autograd``: the
  closed-form parameter derivatives (per sample, ``parameter_gradient``; summed
  with weights, ``parameter_gradient_sum``; and the weighted total energy with
  its gradient, the batch-total kernel where the formula has one) vs autograd of
  the generated forward in the parameters, on a copy of the energy whose
  parameters are trainable (optional: an energy without parameters has none);
* ``special~autograd``, ``special-hdiag~func``: at points where numerics
  break (all zeros; entries from 0, +-1e-200, +-1e200, +-1000), the closed-form
  gradient and Hessian diagonal vs ``torch.func.grad`` and ``torch.func.hessian``
  of the forward. At the all-zero point (kinks, ``0**p``, the origin of a norm)
  both must be finite and agree; at the extreme points an intermediate may
  overflow in one path only, so they are compared where both are finite.

Errors are norm-wise relative per point, ``|got - want|_inf / max(|want|_inf, 1)``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from .oracle import Oracle, OracleError

TOLERANCES = {"energy~mpmath": 1e-10, "grad~autograd": 1e-10, "grad~fd": 1e-7,
              "e&g==fwd,grad": 0.0, "dtype": 0.0, "hessian~autograd": 1e-9,
              "hvp~autograd": 1e-9, "hdiag~autograd": 1e-9, "laplacian~autograd": 1e-9,
              "grad~func": 1e-10, "special~autograd": 1e-9, "special-hdiag~func": 1e-9,
              "theta~autograd": 1e-9, "theta-sum~autograd": 1e-9, "theta-total~autograd": 1e-9}

SPECIAL_CHECKS = ("grad~func", "special~autograd", "special-hdiag~func")
PARAMETER_CHECKS = ("theta~autograd", "theta-sum~autograd", "theta-total~autograd")

#: Magnitudes where numerics break: zeros, squares that under- or overflow, saturation.
SPECIAL = (0.0, 1e-200, -1e-200, 1e200, -1e200, 1000.0, -1000.0)


@dataclass
class Check:
    energy: str
    n: int
    check: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    points: int = 0
    failed_at: list = field(default_factory=list)
    note: str = ""
    optional: bool = False      # may find no comparable point (special points off the domain)

    @property
    def ok(self) -> bool:
        return not self.failed_at and (self.points > 0 or self.optional)


def _rel(got, want):
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    if not bool(torch.isfinite(got).all()):
        return math.inf, math.inf
    err = float((got - want).abs().max()) if got.numel() else 0.0
    return err, err / max(float(want.abs().max()) if want.numel() else 0.0, 1.0)


def sample_points(n, count, generator):
    return torch.randn(count, n, dtype=torch.float64, generator=generator)


def domain_points(oracle, n, count, generator, tries=20):
    """``[count, n]`` random points where the energy is real (the oracle accepts them).

    Normal draws first; a draw outside the domain (``log(x)`` at x < 0) is replaced by
    another, alternately its absolute value, up to ``tries`` times per point."""
    x = sample_points(n, count, generator)
    for k in range(count):
        for attempt in range(tries):
            try:
                oracle(x[k].tolist())
                break
            except (OracleError, ZeroDivisionError, OverflowError, TypeError, ValueError):
                draw = sample_points(n, 1, generator)[0]
                x[k] = draw.abs() if attempt % 2 == 0 else draw
    return x


def special_points(n, generator, count=4):
    """``[count, n]`` float64 points: all zeros first, then entries drawn from SPECIAL."""
    special = torch.tensor(SPECIAL, dtype=torch.float64)
    x = special[torch.randint(len(SPECIAL), (count, n), generator=generator)]
    x[0] = 0.0
    return x


def _func_paths(energy, row):
    """``torch.func.grad`` and the diagonal of ``torch.func.hessian`` of the forward."""
    fn = lambda z: energy(z.unsqueeze(0)).sum()       # noqa: E731
    return torch.func.grad(fn)(row), torch.diagonal(torch.func.hessian(fn)(row))


def _record(check, got, want, strict, row):
    """Compare where ``want`` is finite; ``got`` must be finite too when ``strict``."""
    if not bool(torch.isfinite(torch.as_tensor(want)).all()):
        return
    if not strict and not bool(torch.isfinite(got).all()):
        return
    abs_err, rel_err = _rel(got, want)
    check.points += 1
    check.max_abs, check.max_rel = max(check.max_abs, abs_err), max(check.max_rel, rel_err)
    if not rel_err <= TOLERANCES[check.check]:
        check.failed_at.append([float(f"{v:.6g}") for v in row])


def special_checks(label, energy, n, seed=0, points=None):
    """``grad~func`` at normal points (``points``, default two normal draws; verify passes
    points of the domain), and the ``special-*`` checks (see the module doc)."""
    g = torch.Generator().manual_seed(seed + 1)
    checks = {name: Check(label, n, name, optional=name != "grad~func")
              for name in SPECIAL_CHECKS}
    x = sample_points(n, 2, g)         # drawn either way: the special points stay the same
    if points is not None:
        x = points
    with torch.no_grad():
        grad = energy.gradient(x)
    for k in range(x.shape[0]):
        fg, _ = _func_paths(energy, x[k])
        _record(checks["grad~func"], grad[k], fg, True, x[k].tolist())
    xs = special_points(n, g)
    with torch.no_grad():
        grad, hdiag = energy.gradient(xs), energy.hessian_diagonal(xs)
    for k in range(xs.shape[0]):
        fg, fh = _func_paths(energy, xs[k])
        _record(checks["special~autograd"], grad[k], fg, k == 0, xs[k].tolist())
        _record(checks["special-hdiag~func"], hdiag[k], fh, k == 0, xs[k].tolist())
    for name, c in checks.items():
        if c.points == 0:
            c.note = ("torch.func.grad is not finite at any checked point" if name == "grad~func"
                      else "autograd is not finite at any special point (outside the domain)")
    return list(checks.values())


def verify_energy(label, energy, parsed, params, n, points=4, seed=0, fd=True):
    """Run every check for one energy instance at dimension ``n``; return the Checks."""
    g = torch.Generator().manual_seed(seed)
    oracle = Oracle(parsed, params)
    x = domain_points(oracle, n, points, g)
    checks = {name: Check(label, n, name) for name in TOLERANCES
              if (fd or name != "grad~fd") and name not in SPECIAL_CHECKS + PARAMETER_CHECKS}
    checks["dtype"].note = "outputs follow x's dtype (float32, float64)"
    with torch.no_grad():
        e = energy(x)
        grad = energy.gradient(x)
        e2, g2 = energy.energy_and_gradient(x)
    xg = x.clone().requires_grad_(True)
    ag = torch.autograd.grad(energy(xg).sum(), xg)[0]
    v = torch.randn(x.shape, dtype=x.dtype, generator=g)
    with torch.no_grad():
        second = {"hessian~autograd": energy.hessian(x), "hvp~autograd":
                  energy.hessian_vector_product(x, v), "hdiag~autograd":
                  energy.hessian_diagonal(x), "laplacian~autograd": energy.laplacian(x)}
    auto_h = torch.stack([torch.autograd.functional.hessian(
        lambda z: energy(z.unsqueeze(0)).sum(), x[k]) for k in range(points)])
    want = {"hessian~autograd": auto_h, "hvp~autograd": (auto_h @ v.unsqueeze(-1)).squeeze(-1),
            "hdiag~autograd": torch.diagonal(auto_h, dim1=-2, dim2=-1),
            "laplacian~autograd": torch.diagonal(auto_h, dim1=-2, dim2=-1).sum(-1)}
    dtype_check = checks["dtype"]
    for dt in (torch.float32, torch.float64):
        xd = x.to(dt)
        outs = [energy(xd), energy.gradient(xd), *energy.energy_and_gradient(xd)]
        dtype_check.points += 1
        if any(o.dtype != dt for o in outs):
            dtype_check.max_abs = dtype_check.max_rel = 1.0
            dtype_check.failed_at.append(f"{dt} in -> {[str(o.dtype) for o in outs]} out")
    for k in range(points):
        row = x[k].tolist()
        try:
            ref = oracle(row)
        except (OracleError, ZeroDivisionError, OverflowError, TypeError) as exc:
            for c in checks.values():
                c.note = f"point skipped: {exc}"[:100]
            continue
        results = {
            "energy~mpmath": _rel(e[k], float(ref)),
            "grad~autograd": _rel(grad[k], ag[k]),
            "e&g==fwd,grad": (0.0, 0.0) if (torch.equal(e2[k], e[k])
                                            and torch.equal(g2[k], grad[k])) else (1.0, 1.0),
        }
        for name, got in second.items():
            results[name] = _rel(got[k], want[name][k])
        if fd:
            try:
                results["grad~fd"] = _rel(grad[k], [float(v) for v in oracle.gradient(row)])
            except (OracleError, ZeroDivisionError, OverflowError, TypeError):
                pass
        for name, (abs_err, rel_err) in results.items():
            if name == "dtype":
                continue
            c = checks[name]
            c.points += 1
            c.max_abs, c.max_rel = max(c.max_abs, abs_err), max(c.max_rel, rel_err)
            if not rel_err <= TOLERANCES[name]:
                c.failed_at.append([round(v, 6) for v in row])
    return (list(checks.values()) + special_checks(label, energy, n, seed, points=x[:2])
            + parameter_checks(label, energy, n, x, g))


def _trainable_copy(energy):
    """A copy of ``energy`` whose parameters (buffers of a non-trainable energy) are
    ``nn.Parameter`` s with the same values."""
    twin = copy.deepcopy(energy)
    for _, attr, _ in getattr(type(energy), "param_specs", ()):
        value = getattr(twin, attr)
        if not isinstance(value, torch.nn.Parameter):
            delattr(twin, attr)
            twin.register_parameter(attr, torch.nn.Parameter(value.detach().clone()))
    return twin


def parameter_checks(label, energy, n, x, generator):
    """The ``theta*`` checks (module doc) at the points ``x: [P, n]``, float64."""
    checks = {name: Check(label, n, name, optional=True) for name in PARAMETER_CHECKS}
    twin = _trainable_copy(energy)
    params = dict(twin.named_parameters())
    if not params:
        for c in checks.values():
            c.note = "no parameters"
        return list(checks.values())
    names = list(params)
    w = torch.randn(x.shape[0], dtype=x.dtype, generator=generator)

    def autograd(values):
        grads = torch.autograd.grad(values, list(params.values()), allow_unused=True)
        return {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)}

    def record(name, got, want):
        c = checks[name]
        abs_err, rel_err = max((_rel(got[k], want[k]) for k in want), key=lambda e: e[1])
        c.points += 1
        c.max_abs, c.max_rel = max(c.max_abs, abs_err), max(c.max_rel, rel_err)
        if not rel_err <= TOLERANCES[name]:
            c.failed_at.append(name)

    per = twin.parameter_gradient(x)
    for k in range(x.shape[0]):
        want = autograd(twin(x[k:k + 1]).sum())
        record("theta~autograd", {key: v[k] for key, v in per.items()}, want)
    want = autograd((w * twin(x)).sum())
    record("theta-sum~autograd", twin.parameter_gradient_sum(x, w), want)
    (total,), grads = twin._energy_total_and_parameter_gradient_sum((x, w))
    record("theta-total~autograd", {**grads, "(total)": total},
           {**want, "(total)": (w * twin(x)).sum().detach()})
    if getattr(type(twin), "_parameter_gradient_total", None) is None:
        checks["theta-total~autograd"].note = "no batch-total kernel: summed kernel checked"
    return list(checks.values())


def speedup(energy, n, batch=2048, repeats=7):
    """Median time of autograd's gradient over the closed form's, float32 [batch, n]."""
    x = torch.randn(batch, n)

    def autograd():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(energy(xg).sum(), xg)

    def closed():
        energy.gradient(x)

    times = {"a": [], "c": []}
    autograd(), closed()
    for _ in range(repeats):
        for key, fn in (("a", autograd), ("c", closed)):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return med["a"] / med["c"]


LABEL_WIDTH = 32


def short_labels(labels, width: int = LABEL_WIDTH) -> dict:
    """Each label as shown in the table's first column: itself when it fits ``width``
    characters, else ``[k] <start>...`` (the full text is listed under the table)."""
    out, k = {}, 0
    for label in labels:
        if label in out:
            continue
        flat = " ".join(label.split())
        if len(flat) <= width:
            out[label] = flat
        else:
            k += 1
            head = f"[{k}] "
            out[label] = head + flat[:width - len(head) - 3] + "..."
    return out


def format_table(checks, speedups) -> str:
    """The verify report: one row per check; long formulas are shortened in the first
    column and given in full below the table."""
    short = short_labels([c.energy for c in checks] + [label for label, _, _ in speedups])
    rows = [("energy", "n", "check", "points", "max abs err", "max rel err", "status")]
    for c in checks:
        rows.append((short[c.energy], str(c.n), c.check, str(c.points), f"{c.max_abs:.2e}",
                     f"{c.max_rel:.2e}", "ok" if c.ok else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    if checks:
        lines.append("status: max rel err (per point |got - want|_inf / max(|want|_inf, 1)) "
                     "against the check's tolerance; the special points reach +-1e200, so "
                     "abs errors there scale with the values")
    for label, shown in short.items():
        if shown.startswith("[") and shown != label:
            lines.append(f"{shown.split(' ', 1)[0]} {' '.join(label.split())}")
    for c in checks:
        if not c.ok:
            if c.failed_at:
                lines.append(f"FAIL {c.energy} n={c.n} {c.check}: error {c.max_rel:.3g} > "
                             f"{TOLERANCES[c.check]:g} at x = {c.failed_at[:3]}")
            else:
                lines.append(f"FAIL {c.energy} n={c.n} {c.check}: no point checked "
                             f"({c.note or 'no point of the domain found'})")
    if speedups:
        lines.append("")
        lines.append("gradient speed-up over autograd (float32, batch 2048, median of 7; at small "
                     "n per-call overhead dominates both):")
        for label, n, s in speedups:
            lines.append(f"  {short[label]} n={n}: {s:.2f}x")
    return "\n".join(lines)
