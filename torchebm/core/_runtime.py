"""Small torch helpers that generated energies call.

Only torch is imported here: a generated module runs with ``torchebm.core``
alone, without SymPy. Each helper is a stable form of something the
language offers (softplus, logaddexp) or a piece of index bookkeeping that
the layout of a level needs (``expand``, ``check_index``).
"""

from __future__ import annotations

import torch

from ..errors import MemoryLimitError, ShapeError, SingularMatrixError

#: Largest number of index points of one level (each costs a tensor column per sample).
MAX_POINTS = 50_000_000


# -- numerics ------------------------------------------------------------------------
def softplus(u: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(u))`` as ``max(u, 0) + log1p(exp(-|u|))``: exact for every u."""
    return torch.clamp(u, min=0) + torch.log1p(torch.exp(-torch.abs(u)))


def logaddexp(*args):
    """``log(sum(exp(a)))`` of broadcastable tensors or numbers, max-shifted."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    like = tensors[0]
    vals = [a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=like.dtype,
                                                                   device=like.device)
            for a in args]
    out = vals[0]
    for v in vals[1:]:
        out = torch.logaddexp(out, v)
    return out


def maximum(a, b):
    """Elementwise maximum of tensors or numbers (numbers keep float64 precision)."""
    if not isinstance(a, torch.Tensor):
        return torch.clamp(b, min=a)
    if not isinstance(b, torch.Tensor):
        return torch.clamp(a, min=b)
    return torch.maximum(a, b)


def minimum(a, b):
    """Elementwise minimum of tensors or numbers."""
    if not isinstance(a, torch.Tensor):
        return torch.clamp(b, max=a)
    if not isinstance(b, torch.Tensor):
        return torch.clamp(a, max=b)
    return torch.minimum(a, b)


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
    if w.shape[-1] == 0:
        return torch.full(w.shape[:-1], -torch.inf, dtype=w.dtype, device=w.device)
    return torch.logsumexp(w, dim=-1)


def segment_sum(v: torch.Tensor, seg: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum ``[..., P]`` into ``[..., groups]`` by segment id (ragged inner ranges)."""
    out = torch.zeros(v.shape[:-1] + (groups,), dtype=v.dtype, device=v.device)
    return out.index_add(-1, seg, v)


def logsumexp(v: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` over the last axis, ``-inf`` for an empty axis."""
    if v.shape[-1] == 0:
        return torch.full(v.shape[:-1], -torch.inf, dtype=v.dtype, device=v.device)
    return torch.logsumexp(v, dim=-1)


# -- linear algebra on parameters -------------------------------------------------------
def _spd_cholesky(m: torch.Tensor):
    """The Cholesky factor of ``m`` if it is symmetric positive definite, else None.

    ``cholesky_ex`` reads only the lower triangle, so symmetry is checked first:
    a non-symmetric matrix with a positive definite lower triangle is not SPD.
    """
    if not torch.equal(m, m.mT):
        return None
    chol, info = torch.linalg.cholesky_ex(m)
    return chol if int(info) == 0 else None


def inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse through a Cholesky factor when ``m`` is SPD, LU otherwise."""
    chol = _spd_cholesky(m)
    if chol is not None:
        return torch.cholesky_inverse(chol)
    inv, info = torch.linalg.inv_ex(m)
    if int(info) != 0:
        raise SingularMatrixError(f"inverse() of a singular matrix (shape {tuple(m.shape)}); "
                                  f"give an invertible matrix parameter")
    return inv


def logdet(m: torch.Tensor) -> torch.Tensor:
    """log-determinant: ``2 sum(log(diag(L)))`` for SPD ``m``, ``torch.logdet`` otherwise."""
    chol = _spd_cholesky(m)
    if chol is not None:
        return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return torch.logdet(m)


def det(m: torch.Tensor) -> torch.Tensor:
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
            f"check its range(...) bounds")
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


def pad_slice(v: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:
    """``v`` (the values of ``[lo, hi)``) placed in zeros of length ``size``, last axis."""
    if hi <= lo:                               # an empty range contributes nothing
        return v.new_zeros(v.shape[:-1] + (size,))
    return torch.nn.functional.pad(v, (lo, size - hi))


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
