"""Small torch helpers that generated energies call.

Only torch is imported here: a generated module runs with ``torchebm.core``
alone, without SymPy. Each helper is a stable form of something the
language offers (softplus, logaddexp) or a piece of index bookkeeping that
the layout of a level needs (``expand``, ``check_index``).
"""

from __future__ import annotations

import math

import torch

from ..errors import MemoryLimitError, ShapeError, SingularMatrixError

#: Largest number of index points of one level (each costs a tensor column per sample).
MAX_POINTS = 50_000_000


# -- numerics ------------------------------------------------------------------------
def softplus(u: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(u))``: ``u + log1p(exp(-u))`` for ``u > 0``, ``log1p(exp(u))`` else.

    Exact for every u (no threshold switch, unlike ``torch.nn.functional.softplus``).
    Each branch sees only inputs where ``exp`` is at most 1, so autograd gives
    ``sigmoid(u)`` everywhere (0.5 at 0; the form with ``clamp`` gives 1 there) and
    its second derivative stays finite at ``|u| = 1000`` (``torch.logaddexp``'s does not).
    """
    pos = u > 0
    zero = torch.zeros_like(u)
    up = torch.where(pos, u, zero)
    un = torch.where(pos, zero, u)
    return torch.where(pos, up + torch.log1p(torch.exp(-up)), torch.log1p(torch.exp(un)))


def _tensor(v, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return torch.as_tensor(v, dtype=like.dtype, device=like.device)


def _pair(a, b):
    """Two operands as tensors of one dtype (numbers take the tensor's dtype)."""
    like = a if isinstance(a, torch.Tensor) else b
    return _tensor(a, like), _tensor(b, like)


def _pow_value(b: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    singular = (b == 0) & (e < 1)
    safe = torch.where(singular, torch.ones_like(b), b)
    at_zero = torch.pow(torch.zeros((), dtype=b.dtype, device=b.device), e)   # shape of e
    return torch.where(singular, at_zero, torch.pow(safe, e))


class _Power(torch.autograd.Function):
    """``b**e`` whose derivatives are :func:`power_prime` and :func:`power_log`, at every
    order (they call :func:`power` again), in reverse mode, forward mode and vmap, so
    ``torch.autograd`` and ``torch.func`` (``grad``, ``hessian``) agree with the closed
    forms at ``b = 0``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(b, e):
        return _pow_value(b, e)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        b, e = ctx.saved_tensors
        gb = ge = None
        if ctx.needs_input_grad[0]:
            gb = _times(grad, power_prime(b, e)).sum_to_size(b.shape)
        if ctx.needs_input_grad[1]:
            ge = _times(grad, power_log(b, e)).sum_to_size(e.shape)
        return gb, ge

    @staticmethod
    def jvp(ctx, db, de):
        b, e = ctx.saved_tensors
        out = torch.zeros(torch.broadcast_shapes(b.shape, e.shape), dtype=b.dtype,
                          device=b.device)
        if db is not None:
            out = out + _times(db, power_prime(b, e))
        if de is not None:
            out = out + _times(de, power_log(b, e))
        return out


def _times(d, factor):
    """``d * factor``, 0 where ``d`` is 0: a zero tangent (an exponent that is not
    differentiated) never meets ``log`` of a negative base (nan)."""
    return torch.where(d == 0, torch.zeros_like(factor), d * factor)


def power(b, e):
    """``b**e`` for an exponent that is not an integer literal; shapes broadcast.

    The value is ``torch.pow(b, e)``. Its derivatives (autograd, ``torch.func``, any
    order) are ``e*b**(e - 1)`` and ``b**e log b`` without a division by ``b``: where
    ``b == 0`` and ``e < 1`` the derivative in b is infinite or absent and is 0 (the
    kink convention of the closed form, ``PowerPrime``); the derivative in ``e`` is 0
    at ``b == 0``.
    """
    b, e = _pair(b, e)
    return _Power.apply(b, e)


def power_prime(b, e):
    """``e*b**(e - 1)`` (d/db of ``b**e``), 0 where ``b == 0`` and ``e < 1``."""
    b, e = _pair(b, e)
    singular = (b == 0) & (e < 1)
    safe = torch.where(singular, torch.ones_like(b), b)
    return torch.where(singular, 0.0, e * power(safe, e - 1))


def power_log(b, e):
    """``b**e * log(b)`` (d/de of ``b**e``), 0 where ``b == 0``."""
    b, e = _pair(b, e)
    zero = b == 0
    safe = torch.where(zero, torch.ones_like(b), b)
    return torch.where(zero, torch.zeros_like(b), power(safe, e) * torch.log(safe))


_LOG2 = 0.6931471805599453


def log_cosh(u: torch.Tensor) -> torch.Tensor:
    """``log(cosh(u))``: ``log1p(2 sinh(u/2)**2)`` for ``|u| < 1`` (no cancellation near
    0), ``u + softplus(-2u) - log 2`` elsewhere (no overflow of cosh past 710).
    Each branch sees only inputs where it is finite, so autograd gives ``tanh(u)``."""
    small = u.abs() < 1
    us = torch.where(small, u, torch.zeros_like(u))
    near = torch.log1p(2 * torch.square(torch.sinh(us / 2)))
    far = u + softplus(-2 * u) - _LOG2
    return torch.where(small, near, far)


def hypot(a, b):
    """``sqrt(a**2 + b**2)`` without overflow or underflow (``torch.hypot``); its
    autograd derivative is 0 at the origin (``torch.hypot`` gives ``0/0 = nan``)."""
    a, b = _pair(a, b)
    zero = (a == 0) & (b == 0)
    one = torch.ones_like(a)
    r = torch.hypot(torch.where(zero, one, a), torch.where(zero, one, b))
    return torch.where(zero, torch.zeros_like(r), r)


def atan2(y, x):
    """``atan2(y, x)`` whose autograd is range-safe and 0 at the origin.

    The angle is computed from ``(y, x) / max(|y|, |x|)`` (the same angle): torch's
    own derivative ``x / (x**2 + y**2)`` then never under- or overflows
    (``1e-200`` gives ``5e199``, not ``inf``). At the origin the value is
    ``torch.atan2``'s, from inputs that autograd does not see (derivative 0).
    """
    y, x = _pair(y, x)
    m = torch.maximum(y.abs(), x.abs()).detach()
    origin = m == 0
    scale = torch.where(origin | ~torch.isfinite(m), torch.ones_like(m), m)
    ys = torch.where(origin, torch.zeros_like(y), y / scale)
    xs = torch.where(origin, torch.ones_like(x), x / scale)
    return torch.where(origin, torch.atan2(y.detach(), x.detach()), torch.atan2(ys, xs))


def safe_sqrt(s: torch.Tensor) -> torch.Tensor:
    """``sqrt(s)`` of a sum of squares; its autograd derivative is 0 where ``s == 0``
    (the closed form's convention for ``norm``) instead of ``inf * 0 = nan``."""
    if not (s.requires_grad and torch.is_grad_enabled()):
        return torch.sqrt(s)        # no autograd through it: the plain square root
    zero = s == 0
    safe = torch.where(zero, torch.ones_like(s), s)
    return torch.where(zero, torch.zeros_like(s), torch.sqrt(safe))


def over_square(a, r):
    """``a / r**2`` as ``(a / r) / r``: ``r**2`` would underflow for ``|r| < 1e-154``."""
    return (a / r) / r


def guard(cond: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` itself, but autograd only flows into it where ``cond`` holds.

    Feeding each branch of a ``torch.where`` its inputs through ``guard`` (the
    "double where") keeps an unselected branch's ``inf``/``nan`` derivative (``sqrt``
    at 0, ``log`` of a negative number) out of the gradient: the value is unchanged.
    """
    if not isinstance(v, torch.Tensor) or not (v.requires_grad and torch.is_grad_enabled()):
        return v                    # no autograd through it (the closed forms): v itself
    return torch.where(cond, v, v.detach())


def _logaddexp2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))`` as ``m + softplus(o - m)`` (m the larger, o the other).

    The same value as ``torch.logaddexp``, and autograd of it is safe at every order:
    ``torch.logaddexp``'s second derivative is ``inf/inf = nan`` at ``|a - b| = 2000``.
    """
    a, b = torch.broadcast_tensors(a, b)
    first = a >= b
    m = torch.where(first, a, b)
    o = torch.where(first, b, a)
    inf = torch.isinf(m)
    return torch.where(inf, m, m + softplus(torch.where(inf, torch.zeros_like(m), o - m)))


def logaddexp(*args):
    """``log(sum(exp(a)))`` of broadcastable tensors or numbers, max-shifted."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    like = tensors[0]
    vals = [a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=like.dtype,
                                                                   device=like.device)
            for a in args]
    out = vals[0]
    for v in vals[1:]:
        out = _logaddexp2(out, v)
    return out


def maximum(a, b):
    """Elementwise maximum of tensors or numbers (numbers take the tensor's dtype).

    At a tie autograd gives the whole derivative to ``a``, as the closed form does
    (``torch.maximum`` splits it in halves, ``clamp`` gives it to the tensor). NaN
    in either argument gives NaN.
    """
    a, b = _pair(a, b)
    return torch.where((a >= b) | torch.isnan(a), a, b)


def minimum(a, b):
    """Elementwise minimum of tensors or numbers; at a tie ``a`` takes the derivative."""
    a, b = _pair(a, b)
    return torch.where((a <= b) | torch.isnan(a), a, b)


def others_product(v: torch.Tensor, groups: int, per_group: int = -1) -> torch.Tensor:
    """For each term, the product of the other terms of its group (last axis).

    ``v`` is ``[..., groups * m]``; the result has its shape. Computed from
    exclusive cumulative products from both ends, so a zero factor gives the
    right value instead of the ``0/0`` of ``prod / v``.
    """
    if per_group < 0:
        per_group = v.shape[-1] // max(groups, 1)
    w = v.reshape(v.shape[:-1] + (groups, per_group))
    ones = torch.ones_like(w[..., :1])
    left = torch.cumprod(torch.cat([ones, w[..., :-1]], dim=-1), dim=-1)
    right = torch.cumprod(torch.cat([ones, w.flip(-1)[..., :-1]], dim=-1), dim=-1).flip(-1)
    return (left * right).flatten(-2)


def reduce_points(v: torch.Tensor, op: str, groups: int, per_group: int) -> torch.Tensor:
    """Reduce ``[..., groups * per_group]`` over each group of consecutive points."""
    w = v.reshape(v.shape[:-1] + (groups, per_group))
    if op == "sum":
        return w.sum(-1)
    if op == "prod":
        return w.prod(-1)
    if op == "norm":
        return norm(w)
    if w.shape[-1] == 0:
        return torch.full(w.shape[:-1], -torch.inf, dtype=w.dtype, device=w.device)
    return torch.logsumexp(w, dim=-1)


def segment_sum(v: torch.Tensor, seg: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum ``[..., P]`` into ``[..., groups]`` by segment id (ragged inner ranges)."""
    out = torch.zeros(v.shape[:-1] + (groups,), dtype=v.dtype, device=v.device)
    return out.index_add(-1, seg, v)


_IS_WRAPPED = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, scaled by its largest entry: ``[3e-200, 4e-200]``
    gives ``5e-200`` and ``[3e200, 4e200]`` gives ``5e200`` (``torch.linalg.vector_norm``
    squares unscaled: 0 and inf). The scale is a constant for autograd (the norm does
    not depend on it), so the derivative is ``(v/s) / |v/s|``, 0 at the origin, NaN
    everywhere when one entry is NaN. An empty axis gives 0. Eager CPU calls skip the
    scaling for rows where the plain norm is provably as accurate (one pass, not four).
    """
    if v.shape[-1] == 0:
        return v.new_zeros(v.shape[:-1])
    if v.is_cpu and not torch.compiler.is_compiling() and not (
            _IS_WRAPPED is not None and _IS_WRAPPED(v)):
        # eager on the CPU: the unscaled norm (one pass) where it is exact. A finite
        # result had no square overflow; one above sqrt(n tiny / eps) lost less than
        # eps to squares that underflowed (each below tiny). Rows outside (zeros, tiny
        # or huge entries, NaN) take the scaled form.
        # The test of every row is one reduction (the smallest and largest norm, 5 us
        # at 4096 rows) rather than isfinite, >=, & and all (50 us); NaN fails both
        # comparisons. Only when some row fails is the per-row mask formed.
        r = torch.linalg.vector_norm(v, dim=-1)
        info = torch.finfo(v.dtype)
        floor = (v.shape[-1] * info.tiny / info.eps) ** 0.5
        if r.numel() == 0:
            return r
        lo, hi = torch.aminmax(r)
        if lo.item() >= floor and hi.item() < math.inf:
            return r
        ok = torch.isfinite(r) & (r >= floor)
        return torch.where(ok, r, _scaled_norm(v))
    return _scaled_norm(v)


def _scaled_norm(v: torch.Tensor) -> torch.Tensor:
    m = v.detach().abs().amax(-1, keepdim=True)
    scale = torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))
    return scale.squeeze(-1) * torch.linalg.vector_norm(v / scale, dim=-1)


def logsumexp(v: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` over the last axis, ``-inf`` for an empty axis."""
    if v.shape[-1] == 0:
        return torch.full(v.shape[:-1], -torch.inf, dtype=v.dtype, device=v.device)
    return torch.logsumexp(v, dim=-1)


# -- linear algebra on parameters -------------------------------------------------------
#: dtypes whose matrix decompositions run in float32 (CPU kernels do not exist for them,
#: and their 8- or 11-bit mantissas would make the factors meaningless); the result is
#: cast back, and autograd differentiates through both casts
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _batched(m: torch.Tensor) -> bool:
    """True for a tensor of a ``torch.func`` transform (``vmap`` for model ensembling over
    a matrix parameter, and the ``grad`` inside it), and while ``torch.compile`` or
    ``torch.export`` traces a user's module around the energy: no data-dependent branch
    there (``torch.equal`` and ``int(info)`` have no batching rule, and would break the
    graph), so the decompositions take LU (``torch.linalg.inv``, ``torch.logdet``)."""
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.is_functorch_wrapped_tensor(m)


def _spd_cholesky(m: torch.Tensor):
    """The Cholesky factor of ``m`` if it is symmetric positive definite, else None.

    ``cholesky_ex`` reads only the lower triangle, so symmetry is checked first:
    a non-symmetric matrix with a positive definite lower triangle is not SPD.
    """
    if not torch.equal(m, m.mT):
        return None
    chol, info = torch.linalg.cholesky_ex(m)
    return chol if int(info) == 0 else None


def symmetric(m: torch.Tensor) -> torch.Tensor:
    """``(m + m^T) / 2``: how a matrix declared positive definite is read. It equals ``m``
    bit for bit when ``m`` is symmetric, and is symmetric bit for bit otherwise, so a
    covariance a float32 product or an optimiser step left a few ulps off symmetric keeps
    the Cholesky route and gradients that are themselves symmetric."""
    return (m + m.mT) / 2


def inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a general matrix, by LU (float16/bfloat16 in float32, cast back). Its
    gradient is ``-P^T a P^T`` at every value, a symmetric one included (a Cholesky route
    there would give the symmetric part instead: a gradient that jumps when the matrix
    moves one ulp off symmetric). Matrices declared positive definite use
    :func:`inverse_spd`.

    Raises:
        SingularMatrixError: a singular matrix (outside ``torch.func`` transforms and
            tracing, where ``torch.linalg.inv``'s own error is raised)."""
    if m.dtype in _LOW_PRECISION:
        return inverse(m.float()).to(m.dtype)
    if _batched(m):
        return torch.linalg.inv(m)
    inv, info = torch.linalg.inv_ex(m)
    if int(info) != 0:
        raise SingularMatrixError(f"inverse() of a singular matrix (shape {tuple(m.shape)}); "
                                  f"give an invertible matrix parameter")
    return inv


def inverse_spd(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a matrix declared positive definite (read as :func:`symmetric`, so ``m``
    is symmetric here): through its Cholesky factor, LU if it is not positive definite
    (LU alone under ``vmap`` and tracing; float16/bfloat16 in float32, cast back)."""
    p, _ = inverse_route(m, spd=True)
    return p.to(m.dtype)


def inverse_route(m: torch.Tensor, spd: bool = False):
    """``(P, cholesky)``: ``m``'s inverse by the route :func:`inverse_spd` (``spd``) or
    :func:`inverse` takes (in float32 for float16/bfloat16), and whether it was the
    Cholesky factor's."""
    if m.dtype in _LOW_PRECISION:
        m = m.float()
    chol = None if not spd or _batched(m) else _spd_cholesky(m)
    if chol is not None:
        return torch.cholesky_inverse(chol), True
    return inverse(m), False


def inverse_vjp(m: torch.Tensor, a: torch.Tensor, route=None, spd: bool = False) -> torch.Tensor:
    """``m``'s gradient from an adjoint ``a`` of ``inverse(m)`` (``a: [..., n, n]``,
    leading dimensions per sample), by the same route as :func:`inverse`, without a graph.
    ``route``: :func:`inverse_route` of this ``m`` when the caller has it (a training loop
    differentiates at the same parameter value more than once); computed otherwise, by
    :func:`inverse_spd`'s route when ``spd``.

    With ``P = m^-1``, ``dP = -P dm P``, so ``a`` gives ``-P^T a P^T`` (Giles 2008, "An
    extended collection of matrix derivative results", sec. 2.2). Through the Cholesky
    factor, which reads ``m`` as symmetric, it is that of the symmetric part,
    ``-P sym(a) P``: autograd's values through :func:`inverse` on each route."""
    p, spd = inverse_route(m, spd) if route is None else route
    a = a.to(p.dtype)
    if not spd:
        return (-(p.mT @ a @ p.mT)).to(m.dtype)
    g = -(p @ ((a + a.mT) / 2) @ p)
    # symmetric to the last bit ((g + g^T) / 2 is, the product is not): an optimiser step
    # then keeps a symmetric matrix exactly symmetric, and so on the Cholesky route
    return ((g + g.mT) / 2).to(m.dtype)


def outer_sum(pairs) -> torch.Tensor:
    """``sum_k u_k v_k^T`` of rank-one factors ``((u, v), ...)``, ``u, v: [..., n]`` ->
    ``[..., n, n]`` (a generated per-sample adjoint of ``inverse(S)``)."""
    out = None
    for u, v in pairs:
        term = u.unsqueeze(-1) * v.unsqueeze(-2)
        out = term if out is None else out + term
    return out


def inverse_vjp_outer(m: torch.Tensor, pairs, route=None, spd: bool = False) -> torch.Tensor:
    """:func:`inverse_vjp` of the adjoint ``a = sum_k u_k v_k^T`` given as rank-one
    factors ``((u, v), ...)`` (``u, v: [..., n]``, per sample) -> ``[..., n, n]``.

    ``-P^T (u v^T) P^T = -(P^T u)(P v)^T`` (the Cholesky route: the symmetric part),
    so the ``[..., n, n]`` adjoint is never formed and no ``[..., n, n] x [n, n]``
    product is made: two ``[..., n] x [n, n]`` products per pair and one outer
    product, instead of two batched matrix products of ``B n^3`` work."""
    p, spd = inverse_route(m, spd) if route is None else route
    g = outer_sum([(u.to(p.dtype) @ p, v.to(p.dtype) @ p.mT) for u, v in pairs])
    g = (g + g.mT).mul_(-0.5) if spd else g.neg_()
    return g.to(m.dtype)


def logdet(m: torch.Tensor) -> torch.Tensor:
    """log-determinant: ``2 sum(log(diag(L)))`` for SPD ``m``, ``torch.logdet`` otherwise
    (and under ``vmap``; float16/bfloat16 in float32, cast back)."""
    if m.dtype in _LOW_PRECISION:
        return logdet(m.float()).to(m.dtype)
    if _batched(m):
        return torch.logdet(m)
    chol = _spd_cholesky(m)
    if chol is not None:
        return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return torch.logdet(m)


def det(m: torch.Tensor) -> torch.Tensor:
    if m.dtype in _LOW_PRECISION:
        return torch.linalg.det(m.float()).to(m.dtype)
    return torch.linalg.det(m)


def trace(m: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)


# -- layouts --------------------------------------------------------------------------
def expand(count: int, lo, hi, device):
    """Points of one more nested ``range(lo, hi)`` for each of ``count`` outer points.

    ``lo`` and ``hi`` are ints or LongTensors ``[count]``. Returns ``(seg, j)``:
    for every new point, the outer point it belongs to and its new index.
    """
    lo = torch.as_tensor(lo, dtype=torch.long, device=device).expand(count)
    hi = torch.as_tensor(hi, dtype=torch.long, device=device).expand(count)
    counts = torch.clamp(hi - lo, min=0)
    total = int(counts.sum()) if count else 0
    if total > MAX_POINTS:
        raise MemoryLimitError(
            f"a reduction would run over {total} index points (more than {MAX_POINTS}); "
            f"check its range(...) bounds, or raise torchebm.core._runtime.MAX_POINTS if the "
            f"memory is there")
    seg = torch.repeat_interleave(torch.arange(count, device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(seg.numel(), device=device) - starts[seg]
    return seg, lo[seg] + offset


def check_index(idx: torch.Tensor, size: int, what: str, n: int) -> torch.Tensor:
    """Raise ShapeError if any index is outside ``[0, size)``."""
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ShapeError(
                f"{what} reads index {bad}, but the array has length {size} (n = {n}); "
                f"check the range of the loop or the dimension of x")
    return idx


def check_range(lo: int, hi: int, size: int, what: str, n: int) -> None:
    """Raise if a unit-stride slice ``[lo, hi)`` (non-empty) leaves ``[0, size)``."""
    if hi > lo and (lo < 0 or hi > size):
        bad = lo if lo < 0 else hi - 1
        raise ShapeError(
            f"{what} reads index {bad}, but the array has length {size} (n = {n}); "
            f"check the range of the loop or the dimension of x")


def check_size(actual: int, expected: int, message: str) -> None:
    if actual != expected:
        raise ShapeError(message)


def points(v, x: torch.Tensor, count: int) -> torch.Tensor:
    """``v`` (a number, ``[P]``, ``[..., 1]`` or ``[..., P]``) broadcast to ``[..., P]``."""
    if not isinstance(v, torch.Tensor) or v.dtype != x.dtype:
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)   # n-only values are float64
    return v.expand(x.shape[:-1] + (count,))


def energy_weights(weights, energy):
    """The weights of a batch-summed parameter gradient: ``weights`` ``[...]`` as
    given, or a pair ``(a, c)`` (numbers or ``[...]``) meaning ``a + c * energy``
    (per-sample energies ``[...]``; a loss quadratic in them, such as contrastive
    divergence's regulariser)."""
    if isinstance(weights, tuple):
        a, c = weights
        return a + c * energy
    return weights


def pad_slice(v: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:
    """``v`` (the values of ``[lo, hi)``) placed in zeros of length ``size``, last axis."""
    if hi <= lo:                               # an empty range contributes nothing
        return v.new_zeros(v.shape[:-1] + (size,))
    return torch.nn.functional.pad(v, (lo, size - hi))


def add_slice(acc: torch.Tensor, v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``acc + pad_slice(v, lo, hi, acc.shape[-1])`` without the padded copy of ``v``.

    Args:
        acc: ``[..., size]``, the sum so far.
        v: ``[..., hi - lo]``, the values of positions ``[lo, hi)`` of the last axis
            (the leading dimensions broadcast against ``acc``'s).

    Returns:
        A new tensor ``[..., size]`` (the broadcast leading shape): ``acc`` outside
        ``[lo, hi)`` and ``acc + v`` inside.

    Written as one concatenation of the untouched ends and the sum in the middle:
    Inductor compiles it into stores of each piece into the output (no per-element
    bounds test, as a zero padding needs); eager, it is one addition over the slice
    and one copy. A gradient with shifted terms such as Rosenbrock's ``x[i + 1]``
    costs 0.7x of the padded sum compiled (4096 x 64 float32).
    """
    size = acc.shape[-1]
    if hi <= lo:                               # an empty range contributes nothing
        return acc + pad_slice(v, lo, hi, size)
    mid = acc[..., lo:hi] + v
    batch = mid.shape[:-1]
    parts = [acc[..., :lo].expand(*batch, lo)] if lo > 0 else []
    parts.append(mid)
    if hi < size:
        parts.append(acc[..., hi:].expand(*batch, size - hi))
    return torch.cat(parts, -1) if len(parts) > 1 else mid


def index_mod(i, m: int):
    """``i % m`` of index arithmetic (``x[(i + 1) % (n - 3)]``), refusing a modulus of 0.

    Raises:
        ShapeError: ``m`` is 0 at this dimension (torch would raise a bare
            ``RuntimeError('ZeroDivisionError')``).
    """
    if m == 0:
        raise ShapeError("an index of the formula is taken modulo 0 at this dimension n; "
                         "'%' needs a positive modulus: use a larger n, or change the formula")
    return i % m


def as_index(i, count: int, device) -> torch.Tensor:
    """An index expression (an int or a LongTensor over the points) as a LongTensor [P]."""
    return torch.as_tensor(i, dtype=torch.long, device=device).expand(count)


def others_product_tangent(v: torch.Tensor, dv: torch.Tensor, groups: int,
                           per_group: int = -1) -> torch.Tensor:
    """Tangent of :func:`others_product` along ``dv``, exact when factors are zero.

    For each term i: ``sum_{j != i} dv_j prod_{k != i, j} v_k``, written as
    ``R_i dL_i + L_i dR_i`` with ``L``/``R`` the exclusive products from the
    left/right and ``dL``/``dR`` their tangents. A tangent of an exclusive
    product is ``L_i sum_{k < i} dv_k / v_k`` while no factor is zero, ``dv``
    of the zero factor times the product of the others when one is, and 0
    from two zeros on.
    """
    v, dv = torch.broadcast_tensors(v, dv)
    if per_group < 0:
        per_group = v.shape[-1] // max(groups, 1)
    shape = v.shape[:-1] + (groups, per_group)
    w, dw = v.reshape(shape), dv.reshape(shape)

    def exclusive(a):
        return torch.cat([torch.zeros_like(a[..., :1]), a[..., :-1]], dim=-1)

    def left(w, dw):
        zero = w == 0
        safe = torch.where(zero, torch.ones_like(w), w)
        ones = torch.ones_like(w[..., :1])
        prod_nonzero = torch.cumprod(torch.cat([ones, safe[..., :-1]], dim=-1), dim=-1)
        zeros_before = exclusive(zero.to(w.dtype).cumsum(-1))
        ratio = exclusive(torch.where(zero, torch.zeros_like(w), dw / safe).cumsum(-1))
        dzero = exclusive(torch.where(zero, dw, torch.zeros_like(w)).cumsum(-1))
        prod = torch.where(zeros_before == 0, prod_nonzero, torch.zeros_like(w))
        d = torch.where(zeros_before == 0, prod_nonzero * ratio,
                        torch.where(zeros_before == 1, dzero * prod_nonzero,
                                    torch.zeros_like(w)))
        return prod, d

    lp, ld = left(w, dw)
    rp, rd = left(w.flip(-1), dw.flip(-1))
    rp, rd = rp.flip(-1), rd.flip(-1)
    return (rp * ld + lp * rd).flatten(-2)
