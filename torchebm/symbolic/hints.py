"""Likely intents behind parameter names that look like typos (``sinx``, ``x1``).

A bare name in a formula is a parameter, so ``sum(x**2 + sinx)`` compiles with a
parameter ``sinx`` defaulting to 1.0. These helpers name what the user probably
meant, for the warning of :func:`from_expression` and the parser's errors.
"""

from __future__ import annotations

import re

_COMPONENT = re.compile(r"^x_?(\d+)$")


def _one_edit(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` differ by at most one insertion, deletion or substitution."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(p != q for p, q in zip(a, b)) <= 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    for k in range(len(long_)):
        if long_[:k] + long_[k + 1:] == short:
            return True
    return False


def component_hint(name: str) -> str | None:
    """``'x[1]'`` for ``x1`` or ``x_1`` (components of x are indexed), else None."""
    m = _COMPONENT.match(name)
    return f"x[{int(m.group(1))}]" if m else None


def function_hint(name: str) -> str | None:
    """``'sin(x)'`` for ``sinx`` or ``sin_x``, ``'sqrt(x)'`` for ``sqrx``: a function name
    (within one edit, for names of 3 letters or more) followed by ``x``, else None."""
    from .parse import ALLOWED_FUNCTIONS
    for suffix in ("_x", "x"):
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            head = name[:-len(suffix)]
            if head in ALLOWED_FUNCTIONS:
                return f"{head}(x)"
            close = [f for f in ALLOWED_FUNCTIONS
                     if len(head) >= 3 and len(f) >= 3 and _one_edit(head, f)]
            if len(close) == 1:
                return f"{close[0]}(x)"
    return None


def likely_intent(name: str) -> str | None:
    """What a parameter name probably meant: ``'x[1]'``, ``'sin(x)'``, or None."""
    return component_hint(name) or function_hint(name)


def describe(name: str) -> str:
    """``'sinx' (did you mean sin(x)?)`` or ``'mu'``."""
    intent = likely_intent(name)
    if intent is None:
        return repr(name)
    what = "the component " if intent.startswith("x[") else ""
    return f"{name!r} (did you mean {what}{intent}?)"


def one_based_note(names) -> str:
    """A note when component-like names count from 1 (``x1, x2``: probably ``x[0], x[1]``)."""
    found = sorted((int(_COMPONENT.match(k).group(1)), k) for k in names if _COMPONENT.match(k))
    if not found or found[0][0] != 1:
        return ""
    given = ", ".join(k for _, k in found)
    meant = ", ".join(f"x[{i - 1}]" for i, _ in found)
    verb = "count" if len(found) > 1 else "counts"
    return f" Indices start at 0: if {given} {verb} from 1, write {meant}."


def unset_parameters_message(formula: str, names: list[str], strict: bool,
                             cli: bool = False) -> str:
    """The warning (or, with strict, error) for scalar parameters given no value.

    ``cli`` words the fix for the command line (``-p name=value``, ``--strict``)."""
    listed = ", ".join(describe(k) for k in names)
    plural = "s" if len(names) > 1 else ""
    plain = [k for k in names if likely_intent(k) is None]
    if cli:
        example = " ".join(f"-p {k}=VALUE" for k in plain)
    else:
        example = "from_expression(formula, " + ", ".join(f"{k}=..." for k in plain) + ")"
    how = f"fix the formula, or give values ({example})" if plain and len(plain) < len(names) \
        else f"give values ({example})" if plain else "fix the formula"
    flag = "--strict" if cli else "strict=True"
    verb = "were" if plural else "was"
    if strict:
        return (f"formula {formula!r}: parameter{plural} {listed} {verb} given no value "
                f"(every bare name is a parameter; without {flag} "
                f"{'they' if plural else 'it'} would default to 1.0); {how}."
                + one_based_note(names))
    return (f"formula {formula!r}: parameter{plural} {listed} {verb} given no value and "
            f"default{'' if plural else 's'} to 1.0 (every bare name is a parameter); {how}; "
            f"{flag} makes this an error." + one_based_note(names))
