"""Frozen records handed between the stages: the only types one stage gives another.

The pipeline (see ``compiler.py``) is parse -> rewrite -> lower (:class:`Program`)
-> ``derivatives.reverse_mode`` (a :class:`Kernel` and :class:`AdjointInfo`) ->
``tangent.jvp`` and ``diagonal.hessian_diagonal`` (more kernels) -> the passes of
``optimise`` (``Kernel -> Kernel``) -> ``emit`` (prints kernels).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from types import MappingProxyType

import sympy as sp


@dataclass(frozen=True)
class ParamDecl:
    """A declared parameter: how the generated constructor takes it.

    ``rank`` 0 is a scalar, 1 a vector, 2 a matrix. ``default`` is None for a
    required parameter. ``constraint`` is one of ``real``, ``positive``,
    ``positive_definite`` (checked by the generated constructor).
    """
    name: str
    rank: int = 0
    default: object = None
    doc: str = ""
    constraint: str = "real"
    shape: str = ""           # documentation of the shape, e.g. "[n]" or "[n, n]"


@dataclass(frozen=True)
class EnergySpec:
    """Everything the compiler needs to generate one energy class."""
    class_name: str
    formula: str
    params: tuple                      # of ParamDecl, in constructor order
    doc: str = ""
    references: tuple = ()
    origin: str = "<formula>"          # the definition file, or '<formula>'
    min_dim: int = 0                   # smallest n the energy is defined for
    max_dim: int | None = None         # largest n, or None
    summary: str = ""
    particles: int | None = None       # particle dimension d: x is N = n / d particles
    n_particles: int | None = None     # default particle count (constructor n_particles, dim)
    dim: int | None = None             # default dimension n (constructor dim)

    @property
    def positive_definite(self) -> frozenset:
        """Names of the parameters declared ``positive_definite``: the generated code reads
        them as symmetric matrices (their symmetric part)."""
        return frozenset(p.name for p in self.params if p.constraint == "positive_definite")


@dataclass(frozen=True)
class GeneratedSource:
    """The emitted module: its text and the class it defines."""
    source: str
    class_name: str
    origin: str
    extra: dict = field(default_factory=dict, hash=False, compare=False)


# -- the parsed formula ---------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """A named parameter of a formula: 0 scalar, 1 vector, 2 matrix."""
    name: str
    rank: int


@dataclass(frozen=True)
class Derived:
    """A parameter-only quantity such as ``inverse(S)``: computed once per value."""
    key: str        # 'inverse(S)'
    op: str         # 'inverse' | 'logdet' | 'det' | 'trace'
    param: str      # 'S'


@dataclass(frozen=True, eq=False)
class Parsed:
    """What the parse stage hands on: the energy and what it refers to.

    ``size_checks``: ``(a, b, message)``, sizes that must be equal at call time.
    """
    expression: sp.Expr
    params: MappingProxyType          # name -> ParamSpec
    derived: MappingProxyType         # key -> Derived
    constants: MappingProxyType       # key -> tuple of numbers
    size_checks: tuple = ()
    source: str = ""


# -- shape classes and keys ------------------------------------------------------------
class Shape(enum.Enum):
    """The shape class of a value inside a kernel.

    ``SCALAR``: a number or a parameter; ``BATCH``: ``[...]``, one per sample;
    ``POINT``: ``[P]``, one per point of a level, the same for every sample;
    ``BOTH``: ``[..., P]``.
    """
    SCALAR = "scalar"
    BATCH = "batch"
    POINT = "point"
    BOTH = "both"

    @property
    def per_sample(self) -> bool:
        return self in (Shape.BATCH, Shape.BOTH)

    @property
    def per_point(self) -> bool:
        return self in (Shape.POINT, Shape.BOTH)

    @staticmethod
    def join(*shapes: "Shape") -> "Shape":
        """The shape class of a value computed from values of the given classes."""
        batch = any(s.per_sample for s in shapes)
        point = any(s.per_point for s in shapes)
        return _JOIN[(batch, point)]


_JOIN = {(False, False): Shape.SCALAR, (True, False): Shape.BATCH,
         (False, True): Shape.POINT, (True, True): Shape.BOTH}


class LoadKind(enum.Enum):
    """What a load reads: the sample ``x``, a parameter (or derived or constant
    array), the result of a matrix-vector product, or a dense per-sample gradient
    (second order)."""
    X = "x"
    PARAM = "param"
    VECTOR = "vector"
    DENSE = "dense"


class Addressing(enum.Enum):
    """How a load's indices become tensor indexing (decided by ``lower``).

    ``ELEMENT``: constant indices at the root (``x[..., 0]``); ``WHOLE``: the
    whole last axis (a unit-stride slice that covers it); ``SLICE``: a
    unit-stride slice ``[lo + c : hi + c]``; ``STRIDED``: ``base[k*i + c]`` with a
    constant stride ``k >= 2``, a basic slice ``[k*lo + c : k*(hi - 1) + c + 1 : k]``
    (a view, no index tensor); ``GATHER``: index tensors from the layout.
    """
    ELEMENT = "element"
    WHOLE = "whole"
    SLICE = "slice"
    STRIDED = "strided"
    GATHER = "gather"


class VectorKind(enum.Enum):
    GRADIENT = "gradient"        # dE/dx
    HVP = "hvp"                  # the tangent of dE/dx: H v
    HDIAG = "hdiag"              # diag(H)
    MATVEC = "matvec"            # the adjoint of a matrix-vector product's result
    DENSE = "dense"              # the gradient of one per-sample value (second order)
    PARAMETER = "parameter"      # dE/dtheta of a parameter (or derived array) named ``name``


@dataclass(frozen=True)
class Vector:
    """An accumulated vector: an adjoint, a tangent of one, the Hessian diagonal.

    ``name``: the matrix-vector product's vector (``MATVEC``) or the per-sample
    result's symbol name (``DENSE``); empty otherwise.
    """
    kind: VectorKind
    name: str = ""

    @property
    def x_like(self) -> bool:
        """True when the vector has x's shape ``[..., n]``."""
        return self.kind not in (VectorKind.MATVEC, VectorKind.PARAMETER)

    def tangent(self) -> "Vector":
        """The tangent (forward-mode derivative along v) of this adjoint vector."""
        if self.kind is VectorKind.GRADIENT:
            return HVP
        if self.kind is VectorKind.MATVEC:
            return Vector(VectorKind.MATVEC, tangent_vector_name(self.name))
        raise ValueError(f"torchebm: no tangent of {self}; please report a bug")


def tangent_vector_name(vector: str) -> str:
    """The name of the tangent of a matrix-vector product's vector."""
    return vector + "_dot"


GRADIENT = Vector(VectorKind.GRADIENT)
HVP = Vector(VectorKind.HVP)
HDIAG = Vector(VectorKind.HDIAG)


@dataclass(frozen=True)
class Adjoint:
    """The key of an accumulated vector's value in ``defines``/``uses`` and outputs."""
    vector: Vector


def frozen_map(mapping=None) -> MappingProxyType:
    """A read-only copy of ``mapping``."""
    return MappingProxyType(dict(mapping or {}))


# -- the lowered program ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Load:
    """A tensor read at a level: ``base[indices]`` for every point of the level.

    ``offset``: for ``SLICE``/``WHOLE``/``STRIDED`` addressing, ``c`` in
    ``base[stride*i + c]``; ``stride``: ``k`` of a ``STRIDED`` load (1 otherwise).
    ``tangent``: reads the tangent ``v`` (or a tangent vector) instead of the base;
    ``like``: the load whose index tensors a tangent or dense load reuses.
    """
    symbol: sp.Symbol
    base: str                  # 'x', a parameter, a derived key, a constant, a vector
    indices: tuple             # SymPy integer expressions in the level's index variables
    kind: LoadKind
    addressing: Addressing
    offset: sp.Expr | None = None
    tangent: bool = False
    like: "Load | None" = None
    stride: int = 1


@dataclass(frozen=True, eq=False)
class Reduction:
    op: str                    # 'sum' | 'prod' | 'lse' | 'norm'
    body: sp.Expr
    result: sp.Symbol          # lives in the parent level (or the root)
    value: sp.Symbol           # the body's value at the level's points (the body itself
                               # when the body is one symbol)


@dataclass(frozen=True, eq=False)
class MatVec:
    """``vector = h @ A[rows, cols]``-style product over a root-parented level."""
    body: sp.Expr
    value: sp.Symbol
    matrix: str                # parameter or derived key
    row_major: bool            # True: y_r = sum_j A[r, j + c] h_j ; False: A[j + c, r]
    offset: sp.Expr            # c
    vector: str                # name of the result vector
    length: sp.Expr            # its length (rows or columns of A)
    level: int                 # id of the level of the product's points
    whole: bool = False        # the range covers the matrix's axis (no slice of A)

    @property
    def symbol(self) -> sp.Symbol:
        """The whole result vector ``[..., length]`` as one symbol."""
        return sp.Symbol(self.vector, real=True)


@dataclass(frozen=True, eq=False)
class Level:
    """A set of index points evaluated together as one tensor axis."""
    id: int
    parent: "Level | None"
    clauses: tuple             # ((var, lo, hi_exclusive), ...) outermost first
    loads: tuple = ()          # Load, in first-use order
    index_values: tuple = ()   # ((var, float symbol), ...)
    outer: tuple = ()          # ((root symbol, broadcast symbol), ...)
    reductions: tuple = ()
    matvec: MatVec | None = None
    terms: tuple = ()          # the formula's terms computed here, as text (comments)
    # bases whose STRIDED loads here tile their whole axis: stride k, offsets 0..k-1,
    # k * (points) = the axis length (x[2*i], x[2*i + 1] for i in range(n // 2), n even)
    tiled: frozenset = frozenset()

    @property
    def all_vars(self) -> list:
        up = self.parent.all_vars if self.parent else []
        return up + [c[0] for c in self.clauses]

    @property
    def rectangular(self) -> bool:
        """Own bounds independent of every index: points factor as parent x own."""
        ivars = set(self.all_vars)
        return all(not ((lo.free_symbols | hi.free_symbols) & ivars)
                   for _, lo, hi in self.clauses)

    @property
    def one_range(self) -> bool:
        """A root-parented level of a single range: its loads can be slices."""
        return self.parent is None and len(self.clauses) == 1


@dataclass(frozen=True, eq=False)
class Program:
    """The lowered energy: levels (children before parents) and root loads."""
    energy: sp.Expr                      # root expression, over root symbols
    levels: tuple                        # forward order (children before parents)
    root_loads: tuple                    # Load at the root
    vectors: MappingProxyType            # vector name -> MatVec
    symbol_names: MappingProxyType = field(default_factory=frozen_map)  # symbol -> stem
    size_subs: MappingProxyType = field(default_factory=frozen_map)     # sizes checked = n
    symmetric: frozenset = frozenset()   # matrices known to be symmetric
    # bases whose root loads (constant indices) read each of their n entries once,
    # n fixed: x[0], x[1] of an energy defined at n = 2 only
    root_tiled: frozenset = frozenset()

    def level(self, level_id: int) -> Level:
        return next(lv for lv in self.levels if lv.id == level_id)


# -- statements ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Stmt:
    level: Level | None

    def defines(self) -> tuple:
        return ()

    def uses(self) -> tuple:
        return ()


@dataclass(frozen=True, eq=False)
class Assign(Stmt):
    target: sp.Symbol
    expr: sp.Expr

    def defines(self):
        return (self.target,)

    def uses(self):
        return tuple(self.expr.free_symbols)


@dataclass(frozen=True, eq=False)
class LoadStmt(Stmt):
    load: Load

    def defines(self):
        return (self.load.symbol,)

    def uses(self):
        ld = self.load
        if ld.kind is LoadKind.DENSE:       # a gradient vector (second order)
            return (Adjoint(Vector(VectorKind.DENSE, ld.base)),)
        if ld.kind is not LoadKind.VECTOR:
            return ()
        name = tangent_vector_name(ld.base) if ld.tangent else ld.base
        return (sp.Symbol(name, real=True),)


@dataclass(frozen=True, eq=False)
class IndexValue(Stmt):
    target: sp.Symbol
    var: sp.Symbol

    def defines(self):
        return (self.target,)


@dataclass(frozen=True, eq=False)
class Unary(Stmt):
    """``target = f(source)`` for a non-elementwise f (the subclass says which)."""
    target: sp.Symbol
    source: sp.Symbol

    def defines(self):
        return (self.target,)

    def uses(self):
        return (self.source,)


@dataclass(frozen=True, eq=False)
class Broadcast(Unary):
    """A value of the enclosing level (or the root) repeated over this level's points."""


@dataclass(frozen=True, eq=False)
class Reduce(Unary):
    """Reduce ``source`` over this level's own points into the enclosing level.

    ``op``: 'sum' | 'prod' | 'lse' | 'norm', or 'sum_all' over every point of
    the level (an adjoint contribution to a per-sample value).
    """
    op: str = "sum"


@dataclass(frozen=True, eq=False)
class OthersProduct(Unary):
    """Product of all other terms of each segment (prod's gradient, exact with zeros)."""


@dataclass(frozen=True, eq=False)
class OthersProductTangent(Unary):
    """Tangent of the product of the other terms of each segment, exact with zeros."""
    tangent: sp.Symbol = None

    def uses(self):
        return (self.source, self.tangent)


@dataclass(frozen=True, eq=False)
class MatVecStmt(Stmt):
    matvec: MatVec
    adjoint: bool = False      # False: y = h @ A ; True: hbar = ybar @ A^T
    target: sp.Symbol | None = None

    def defines(self):
        return (self.target,) if self.adjoint else (self.matvec.symbol,)

    def uses(self):
        if self.adjoint:
            return (Adjoint(Vector(VectorKind.MATVEC, self.matvec.vector)),)
        return (self.matvec.value,)


@dataclass(frozen=True, eq=False)
class InitAdjoint(Stmt):
    vector: Vector

    def defines(self):
        return (Adjoint(self.vector),)


@dataclass(frozen=True, eq=False)
class Accumulate(Stmt):
    """``vector[load's indices] += source``; ``like`` names the input whose shape it has."""
    vector: Vector
    load: Load
    source: sp.Symbol
    like: str = "x"

    def defines(self):
        return (Adjoint(self.vector),)

    def uses(self):
        return (Adjoint(self.vector), self.source)


@dataclass(frozen=True, eq=False)
class Interleave(Stmt):
    """``vector = the sources interleaved``: ``sources[c]`` is the whole contribution at
    ``vector[k*i + c]`` (``k = len(sources)``) of a level whose strided loads tile the
    vector (``torch.stack(sources, -1).flatten(-2)``, one write, no zeros)."""
    vector: Vector
    sources: tuple
    like: str = "x"

    def defines(self):
        return (Adjoint(self.vector),)

    def uses(self):
        return tuple(self.sources)


@dataclass(frozen=True, eq=False)
class ParameterAccumulate(Stmt):
    """``vector[load's indices] += source`` into a parameter's adjoint.

    ``vector`` is ``Vector(PARAMETER, base)``: per sample ``[..., *theta.shape]``, or
    with ``summed`` the batch contracted with the weights ``w`` first (``[*theta.shape]``,
    ``sum_b w_b source_b``), so no per-sample adjoint is ever formed; ``scale`` (a
    number) multiplies that ``[*theta.shape]`` result.
    """
    vector: Vector
    load: Load
    source: sp.Expr
    summed: bool = False
    scale: sp.Expr = sp.S.One        # a number applied to the contracted result (summed)
    # the source is this product's vector ``h @ A`` and ``source`` is its ``h``: the batch
    # is contracted before the product, ``(w @ h) @ A`` (a batch-total kernel)
    matvec: "MatVec | None" = None
    # with ``matvec``: the source is instead the product's adjoint ``hbar = ybar @ A^T``
    # (``source`` unused, 0), contracted as ``(w @ ybar) @ A^T``: no ``[B, n]`` hbar
    adjoint: bool = False

    def defines(self):
        return (Adjoint(self.vector),)

    def uses(self):
        if self.adjoint:
            return (Adjoint(self.vector), Adjoint(Vector(VectorKind.MATVEC, self.matvec.vector)))
        return (Adjoint(self.vector), *self.source.free_symbols)


@dataclass(frozen=True, eq=False)
class MatrixAdjoint(Stmt):
    """The adjoint of the matrix ``A`` of ``y = h @ A`` (``matvec``) accumulated into
    ``vector``: ``outer(h, ybar)`` per sample, or with ``summed`` one matrix product
    ``h^T (w ybar)`` over the batch (no ``[B, n, n]`` temporary), times ``scale`` (a
    number pulled out of ``h``: the product then reads the forward's unscaled vector).

    ``total`` (summed only): also define this 0-d symbol as ``<A, contribution>``, which
    is ``sum_b w_b <y_b, ybar_b>``: the product's share of the weighted total energy
    when the energy is affine in ``y`` (a batch-total kernel, ``contract.py``)."""
    vector: Vector
    matvec: MatVec
    summed: bool = False
    scale: sp.Expr = sp.S.One
    total: sp.Symbol | None = None

    def defines(self):
        if self.total is not None:
            return (Adjoint(self.vector), self.total)
        return (Adjoint(self.vector),)

    def uses(self):
        return (Adjoint(self.vector), self.matvec.value,
                Adjoint(Vector(VectorKind.MATVEC, self.matvec.vector)))


@dataclass(frozen=True, eq=False)
class ParameterScalar(Stmt):
    """``target``: the adjoint of a scalar parameter from its per-sample total
    ``source``: ``[...]`` (a per-sample value, or a constant repeated over the batch),
    or with ``summed`` ``sum_b w_b source_b`` (0-d)."""
    target: sp.Symbol
    source: sp.Expr
    summed: bool = False

    def defines(self):
        return (self.target,)

    def uses(self):
        return tuple(self.source.free_symbols)


@dataclass(frozen=True, eq=False)
class DenseAccumulate(Stmt):
    """``vector += factor * a * c``, whole per-sample gradient vectors ``a``, ``c``.

    ``factor`` is per sample (or a number).
    """
    vector: Vector
    factor: sp.Expr
    a: Vector
    c: Vector

    def defines(self):
        return (Adjoint(self.vector),)

    def uses(self):
        return (Adjoint(self.vector), Adjoint(self.a), Adjoint(self.c),
                *self.factor.free_symbols)


@dataclass(frozen=True, eq=False)
class CoincidentAccumulate(Stmt):
    """``vector[idx_a(p)] += source(p)`` at the points p where two loads read one index.

    ``x[i] * x[j]`` over ``i, j in range(n)`` contributes its mixed second
    partial to the diagonal exactly where ``i == j``; the layout lists those
    points (``key``), usually few.
    """
    vector: Vector
    load: Load
    other: Load
    source: sp.Symbol
    key: str = ""

    def defines(self):
        return (Adjoint(self.vector),)

    def uses(self):
        return (Adjoint(self.vector), self.source)


@dataclass(frozen=True, eq=False)
class MatrixDiagonal(Stmt):
    """``target[p] = A[row0 + p, col0 + p]`` for the points of a one-range level."""
    target: sp.Symbol
    matrix: str
    row0: sp.Expr
    col0: sp.Expr

    def defines(self):
        return (self.target,)


@dataclass(frozen=True, eq=False)
class PointShift(Stmt):
    """``target[..., p] = source[..., start + p]``: a per-point value of another level."""
    target: sp.Symbol
    source: sp.Expr
    source_level: Level
    start: sp.Expr

    def defines(self):
        return (self.target,)

    def uses(self):
        return tuple(self.source.free_symbols)


@dataclass(frozen=True, eq=False)
class Free(Stmt):
    """Release values after their last use (``del``): ``keys`` (symbols or
    :class:`Adjoint` keys) that own memory, with the views that keep it alive."""
    keys: tuple = ()


# -- kernels --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Kernel:
    """Straight-line statements computing ``outputs`` from ``inputs``.

    ``outputs``: symbols and :class:`Adjoint` keys. ``shapes``: the shape class
    of every symbol the body defines (others are scalars). ``tangent``: the
    symbols shaped like the tangent ``v`` rather than ``x``. ``derived``: symbols
    whose values depend on parameters only, computed once per parameter value and
    dtype (the generated ``_derive``) instead of in the body. ``next_symbol``:
    the number the next new symbol gets (a stage that adds statements continues
    from it, so symbols stay unique across kernels of one program).
    ``output_names``: when given, the method returns ``{name: output}`` (the
    parameter gradients, keyed by parameter name or derived key).
    """
    name: str
    inputs: tuple
    outputs: tuple
    body: tuple
    program: Program
    energy: sp.Symbol
    shapes: MappingProxyType = field(default_factory=frozen_map)
    tangent: frozenset = frozenset()
    tangent_vectors: MappingProxyType = field(default_factory=frozen_map)  # name -> MatVec
    dense_roots: MappingProxyType = field(default_factory=frozen_map)      # Vector -> symbol
    next_symbol: int = 0
    derived: MappingProxyType = field(default_factory=frozen_map)  # symbol -> parameter-only
    output_names: tuple = ()   # names of the outputs when they are returned as a dict

    def shape_of(self, expr) -> Shape:
        return Shape.join(*[self.shapes.get(s, Shape.SCALAR) for s in expr.free_symbols])

    def replace(self, **changes) -> "Kernel":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class AdjointInfo:
    """What the gradient's reverse sweep learnt, for the Hessian diagonal.

    ``point_adjoint``: reduction or product -> adjoint of its body per point;
    ``result_adjoint``: reduction -> adjoint of its result; ``first_partials``:
    (owner or None for the root, symbol) -> derivative; ``partials``: (owner,
    symbol) -> (constant factor, per-point symbol); ``xdep``: symbols that depend
    on x.
    """
    point_adjoint: MappingProxyType
    result_adjoint: MappingProxyType
    first_partials: MappingProxyType
    partials: MappingProxyType
    xdep: frozenset
