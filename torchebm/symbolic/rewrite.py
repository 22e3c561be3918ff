"""Stage 2, rewrite: small named rules that make the energy numerically sound.

Run in order by :func:`stabilize`; each rule is a function named for its
pattern, with the rewrite in its docstring, applied with SymPy's ``replace``.
They change how a value is computed, never what it is.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from . import functions as F
from .symbols import depends_on_x


def is_sum_of_squares(e: sp.Expr) -> bool:
    """True when ``e`` is a sum of even powers times factors free of x.

    Such a sum vanishes only where its squared terms (and their gradients) do;
    a factor free of x (a parameter, 1/n) of the wrong sign makes the sqrt NaN
    anyway, so it does not matter for the gradient rule.
    """
    if e.is_Number:
        return bool(e >= 0)
    if isinstance(e, sp.Pow):
        if e.exp.is_Integer and e.exp % 2 == 0 and e.exp > 0:
            return True
        return e.base.is_nonnegative is True and e.base.is_Symbol and e.exp.is_number
    if isinstance(e, sp.Sum):
        return is_sum_of_squares(e.function)
    if isinstance(e, sp.Add):
        return all(is_sum_of_squares(a) for a in e.args)
    if isinstance(e, sp.Mul):
        squares = [a for a in e.args if depends_on_x(a)]
        return bool(squares) and all(is_sum_of_squares(a) for a in squares)
    return False


def sqrt_of_squares(expr: sp.Expr) -> sp.Expr:
    """``sqrt(s)`` with ``s`` a sum of squares -> ``SafeSqrt(s)``: gradient 0 where s = 0."""
    def query(e):
        return (isinstance(e, sp.Pow) and (e.exp == sp.S.Half or e.exp == sp.Float(0.5))
                and is_sum_of_squares(e.base))
    return expr.replace(query, lambda e: F.SafeSqrt(e.base))


def log_one_plus(expr: sp.Expr) -> sp.Expr:
    """``log(1 + u)`` -> ``log1p(u)``: accurate when u is tiny."""
    return expr.replace(
        lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Add)
        and sp.S.One in e.args[0].args,
        lambda e: log1p(e.args[0] - 1))


def exp_minus_one(expr: sp.Expr) -> sp.Expr:
    """``c*exp(u) - c`` (inside a sum) -> ``c*expm1(u)``: accurate when u is tiny."""
    def query(e):
        return isinstance(e, sp.Add) and _expm1_pair(e) is not None

    def value(e):
        term, coeff, u = _expm1_pair(e)
        others = [a for a in e.args if a is not term]
        others.remove(-coeff)
        return sp.Add(*others) + coeff * expm1(u)
    return expr.replace(query, value)


def _expm1_pair(add: sp.Add):
    numbers = [a for a in add.args if a.is_Number]
    for term in add.args:
        coeff, rest = term.as_coeff_Mul()
        if isinstance(rest, sp.exp) and -coeff in numbers:
            return term, coeff, rest.args[0]
    return None


def log1p_exp(expr: sp.Expr) -> sp.Expr:
    """``log1p(exp(u))`` -> ``softplus(u)``: no overflow for large u."""
    return expr.replace(lambda e: isinstance(e, log1p) and isinstance(e.args[0], sp.exp),
                        lambda e: F.Softplus(e.args[0].args[0]))


def _provably_positive(c) -> bool:
    """``c > 0`` for every value of its parameters; sizes (``n``, ``len(w)``) count as
    positive (``mean`` of an empty vector is NaN either way)."""
    sizes = {s: sp.Dummy(positive=True, integer=True) for s in c.free_symbols
             if s.is_integer and s.is_nonnegative}
    return bool((c.subs(sizes) if sizes else c).is_positive)


def _exp_terms(e):
    """``e`` as a list of exponents ``[u_k]`` with ``e = sum_k exp(u_k)``, or None."""
    if isinstance(e, sp.exp):
        return [e.args[0]]
    if isinstance(e, sp.Add):
        parts = [_exp_terms(a) for a in e.args]
        if any(p is None for p in parts):
            return None
        return [u for p in parts for u in p]
    if isinstance(e, sp.Mul):
        free = [a for a in e.args if not depends_on_x(a)]
        rest = [a for a in e.args if depends_on_x(a)]
        coefficient = sp.Mul(*free)
        if not _provably_positive(coefficient):  # log(c) of a negative c is NaN, and a
            return None                           # parameter's sign is unknown: keep log(...)
        inner = _exp_terms(sp.Mul(*rest)) if rest and free else None
        if inner is None:
            return None
        c = sp.log(coefficient)
        return [u + c for u in inner]
    if isinstance(e, F.Sum):
        inner = _exp_terms(e.function)
        if inner is None:
            return None
        return [F.LogSumExp(u, *e.limits) for u in inner]
    if e.is_number and e.is_positive:
        return [sp.log(e)]
    return None


def log_of_exps(expr: sp.Expr) -> sp.Expr:
    """``log(c exp(a) + exp(b) + sum(exp(...)) + ...)`` -> ``LogAddExp(a + log c, b, LSE(...))``.

    Any positive combination of exponentials becomes a max-shifted log-sum-exp,
    so ``log(sum(exp(x) + exp(-x)))`` or ``log(mean(exp(x)))`` cannot overflow.
    """
    def query(e):
        return (isinstance(e, sp.log) and e.args[0].has(sp.exp)
                and not isinstance(e.args[0], sp.exp) and _exp_terms(e.args[0]) is not None)

    def value(e):
        terms = _exp_terms(e.args[0])
        if len(terms) == 2 and sp.S.Zero in terms:      # log(1 + exp(u)) is softplus(u)
            return F.Softplus(terms[1] if terms[0] == 0 else terms[0])
        return F.LogAddExp(*terms) if len(terms) > 1 else terms[0]
    return expr.replace(query, value)


def log_sigmoid(expr: sp.Expr) -> sp.Expr:
    """``log(sigmoid(u))`` -> ``-softplus(-u)``; ``log(1 - sigmoid(u))`` -> ``-softplus(u)``.

    ``sigmoid(-1000)`` underflows to 0 (log gives ``-inf``; the value is -1000) and
    ``1 - sigmoid(40)`` rounds to 0.
    """
    def one_minus_sigmoid(a):
        if isinstance(a, sp.Add) and len(a.args) == 2 and sp.S.One in a.args:
            other = a.args[0] if a.args[1] == 1 else a.args[1]
            c, rest = other.as_coeff_Mul()
            if c == -1 and isinstance(rest, F.Sigmoid):
                return rest.args[0]
        return None

    def query(e):
        return isinstance(e, sp.log) and (isinstance(e.args[0], F.Sigmoid)
                                          or one_minus_sigmoid(e.args[0]) is not None)

    def value(e):
        a = e.args[0]
        if isinstance(a, F.Sigmoid):
            return -F.Softplus(-a.args[0])
        return -F.Softplus(one_minus_sigmoid(a))
    return expr.replace(query, value)


def log_of_reciprocal(expr: sp.Expr) -> sp.Expr:
    """``log(1/u)`` -> ``-log(u)``: ``log(1/(1 + exp(-x)))``, a hand-written log-sigmoid,
    then meets the log-sum-exp rule (``1/(1 + exp(1000))`` is 0 and its log ``-inf``)."""
    return expr.replace(
        lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Pow)
        and e.args[0].exp == -1,
        lambda e: -sp.log(e.args[0].base))


def log_cosh(expr: sp.Expr) -> sp.Expr:
    """``log(cosh(u))`` -> ``LogCosh(u)`` (``|u| + log1p(exp(-2|u|)) - log 2``): cosh
    overflows past ``|u| = 710`` (energy ``inf``, gradient ``sinh/cosh = nan``)."""
    return expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.cosh),
                        lambda e: F.LogCosh(e.args[0].args[0]))


def log_erfc(expr: sp.Expr) -> sp.Expr:
    """``log(erfc(u))`` -> ``log 2 + log_ndtr(-sqrt(2) u)``: erfc underflows past u = 27."""
    return expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.erfc),
                        lambda e: sp.log(2) + F.LogNdtr(-sp.sqrt(2) * e.args[0].args[0]))


def angles(expr: sp.Expr) -> sp.Expr:
    """``atan2(y, x)`` -> ``Atan2(y, x)``: derivatives ``(x/r)/r`` with ``r = hypot(y, x)``
    (``x/(x**2 + y**2)`` under- or overflows), 0 at the origin."""
    return expr.replace(lambda e: isinstance(e, sp.atan2),
                        lambda e: F.Atan2(*e.args))


def _power_base(e: sp.Pow):
    """The base and exponent for :class:`F.Power`, or None to keep SymPy's ``Pow``."""
    b, p = e.base, e.exp
    if p.is_Integer or b.is_number:
        return None
    if not depends_on_x(b):                       # a**x, a a parameter that may be 0:
        return (b, p) if depends_on_x(p) else None    # d/dx = PowerLog, 0 at a = 0
    if isinstance(b, F.SafeSqrt):                 # norm(x)**p = sum(x**2)**(p/2)
        return b.args[0], p / 2
    if not p.is_number:                           # x**a, a a parameter (or x-dependent)
        return b, p
    if p.is_positive and (isinstance(b, sp.Abs) or (is_sum_of_squares(b) and p != sp.S.Half
                                                    and p != sp.Float(0.5))):
        return b, p                               # abs(u)**1.5, sum(x**2)**0.75
    return None


def powers(expr: sp.Expr) -> sp.Expr:
    """``b**e`` -> ``Power(b, e)`` for a non-literal exponent, for ``abs(u)**p``, for a
    sum of squares to a positive power (p not an integer), and for a parameter base
    under an exponent in x (``a**x``: SymPy's ``a**x*log(a)`` is ``0*(-inf)`` at
    ``a = 0``; ``PowerLog`` gives its limit 0 there, as autograd does for ``x >= 0``).

    SymPy's derivative ``e*b**e/b`` is ``0/0`` at ``b = 0``; ``Power``'s is
    ``e*b**(e - 1)`` with ``0**0 = 1``, and 0 (the kink convention) where the
    derivative is infinite (``e < 1``). Through the chain rule a sum of squares
    then has the limit of its derivative at 0 (``sum(x**2)**0.75``: 0).
    """
    return expr.replace(lambda e: isinstance(e, sp.Pow) and _power_base(e) is not None,
                        lambda e: F.Power(*_power_base(e)))


def _reduction(e) -> bool:
    return isinstance(e, (sp.Sum, sp.Product, F.LogSumExp, F.Norm))


def _square_root(body):
    """``u`` with ``u**2 == body`` for a product of even powers and factors free of x
    (``a**2*x[i]**2`` -> ``a*x[i]``) or a where of such, else None."""
    if isinstance(body, sp.Pow) and body.exp.is_Integer and body.exp % 2 == 0:
        return body.base ** (body.exp / 2)
    if isinstance(body, sp.Mul):
        roots = []
        for f in body.args:
            r = _square_root(f) if depends_on_x(f) else sp.sqrt(f)
            if r is None:
                return None
            roots.append(r)
        return sp.Mul(*roots)
    if isinstance(body, sp.Piecewise):           # where(c, u, w)**2, folded by SymPy
        roots = [(_square_root(e) if depends_on_x(e) or e != 0 else e, c)
                 for e, c in body.args]
        if any(r is None for r, _ in roots):
            return None
        return sp.Piecewise(*roots)
    return None


def _root_term(t):
    """A range-safe ``sqrt(t)`` for one nonnegative term of a sum of squares: ``c*sum(u**2)``
    -> ``sqrt(c) Norm(u)``, ``u**2`` -> ``u``, a constant known nonnegative -> ``sqrt(c)``;
    else None."""
    if not depends_on_x(t):
        return sp.sqrt(t) if t.is_nonnegative else None
    const, s = t.as_independent(sp.Sum, as_Add=False)
    if isinstance(s, sp.Sum) and not depends_on_x(const):
        root = _square_root(s.function)
        if root is not None and depends_on_x(root):
            return sp.sqrt(const) * F.Norm(root, *s.limits)
        return None
    if t.has(sp.Sum, sp.Product, F.LogSumExp, F.Norm):
        return None
    return _square_root(t)


def _nonnegative_root(s):
    """A range-safe ``sqrt(s)`` of a sum of squares that is never negative (``Norm``
    times nonnegative factors, else ``abs`` of the root: ``x[0]**2`` -> ``abs(x[0])``),
    or None."""
    root = _root_term(s)
    if root is None:
        return None
    factors = sp.Mul.make_args(root)
    if any(isinstance(f, F.Norm) for f in factors) and all(
            isinstance(f, F.Norm) or f.is_nonnegative for f in factors):
        return root
    return sp.Abs(root)


def range_safe_norms(expr: sp.Expr) -> sp.Expr:
    """``sqrt(sum(u**2 for i ...))`` (``norm(u)``) -> ``Norm(u, i ...)``, computed scaled by
    the largest entry, and ``sqrt(u**2 + v**2)`` -> ``hypot(u, v)``: ``sum(u**2)``
    underflows to 0 below ``1e-154`` and overflows above ``1e154``; the norm itself is
    representable. A sum of squares under a non-integer power or a log goes through the
    same root: ``s**p`` -> ``r**(2p)`` (``norm(x)**0.5``, ``sum(x**2)**0.75``) and
    ``log(s)`` -> ``2 log(r)``.

    Only outside other reductions (a nested norm over a ragged range stays a sum).
    """
    def walk(e):
        if isinstance(e, F.SafeSqrt):
            root = _root_term(e.args[0])
            if root is not None:
                return root
            terms = e.args[0].args if isinstance(e.args[0], sp.Add) else ()
            # sqrt(u**2 + v**2) = hypot(u, v); not with 3 terms (a nested hypot would put
            # the kink convention of the inner one at points where the whole is smooth)
            if len(terms) == 2 and not any(_reduction(a) for t in terms
                                           for a in sp.preorder_traversal(t)):
                roots = [_root_term(t) for t in terms]
                if all(r is not None for r in roots):
                    return F.Hypot(*roots)
        # a sum of squares under a power or a log (norm(x)**p, sqrt(norm(x)), log(norm(x)**2)):
        # through its range-safe root, s**p = r**(2p) and log(s) = 2 log(r)
        if isinstance(e, (F.Power, sp.log)) and depends_on_x(e.args[0]) \
                and is_sum_of_squares(e.args[0]):
            root = _nonnegative_root(e.args[0])
            if root is not None:
                return F.Power(root, 2 * e.args[1]) if isinstance(e, F.Power) \
                    else 2 * sp.log(root)
        if _reduction(e) or not e.args or e.is_Atom:
            return e
        args = [walk(a) for a in e.args]
        return e if all(a is b for a, b in zip(args, e.args)) else e.func(*args)
    return walk(expr)


#: Functions whose derivatives are finite wherever their arguments are: a ``where``
#: branch built only from these (and polynomials) needs no guarded inputs.
_TAME = (sp.Abs, sp.sign, F.Sign, sp.sin, sp.cos, sp.tanh, sp.atan, sp.erf, F.Sigmoid,
         F.Softplus, F.LogAddExp, F.Maximum, F.Minimum, F.Guard, F.Norm)


def _tame(expr) -> bool:
    """True when autograd of ``expr`` cannot meet inf or nan at finite inputs of moderate
    size (a polynomial of tame functions), so an unselected branch of it is harmless."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Pow):
            if not (node.exp.is_Integer and node.exp > 0):
                return False
        elif isinstance(node, (sp.Function, sp.Sum, sp.Product, F.LogSumExp, F.Norm)) \
                and not isinstance(node, _TAME):
            return False
    return True


def _guard_leaves(e, selected):
    """``e`` with each input that may carry a gradient (components, parameters, reduction
    results) wrapped in ``Guard(., selected)``."""
    if isinstance(e, sp.Indexed) or _reduction(e):
        return F.Guard(e, selected) if depends_on_x(e) or e.free_symbols else e
    if isinstance(e, sp.Symbol):
        return e if (e.is_integer or not e.is_real) else F.Guard(e, selected)
    if isinstance(e, (sp.Piecewise, F.Guard)) or not e.args:
        return e
    return e.func(*[_guard_leaves(a, selected) for a in e.args])


def guard_branches(expr: sp.Expr) -> sp.Expr:
    """``where(c, a, b)``: the inputs of a branch whose derivative can be inf or nan
    (``sqrt`` at 0, ``log`` of a negative) are wrapped in ``Guard(., selected)``.

    The closed forms never mix branches, but autograd of the generated code does:
    ``where(x > 0, sqrt(x), -x)`` at ``x = 0`` gives ``0 * inf = nan`` through the
    unselected ``sqrt``. Guarded ("double where"), autograd and ``torch.func`` give the
    selected branch's derivative.
    """
    def value(pw):
        earlier, pairs = [], []
        for e, c in pw.args:
            selected = sp.And(c, *[sp.Not(p) for p in earlier])
            earlier.append(c)
            if not (e.is_Number or _tame(e) or selected in (sp.true, sp.false)):
                e = _guard_leaves(e, selected)
            pairs.append((e, c))
        return sp.Piecewise(*pairs, evaluate=False)
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), value)


PHASES = (log_of_reciprocal, log_sigmoid, log_cosh, log_erfc, angles, sqrt_of_squares, powers,
          range_safe_norms, log_of_exps, log_one_plus, exp_minus_one, log1p_exp,
          guard_branches)


def stabilize(expr: sp.Expr, debug: bool = False) -> sp.Expr:
    """Apply every rule of :data:`PHASES` in order."""
    for rule in PHASES:
        expr = rule(expr)
        if debug:
            print(f"after {rule.__name__}: {expr}")
    return expr
