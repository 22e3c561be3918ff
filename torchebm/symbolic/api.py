"""``from_expression``: a formula in, a verified-by-construction energy module out."""

from __future__ import annotations

import difflib
import keyword
import threading
import warnings
from collections import OrderedDict

import sympy as sp
import torch

from ..errors import EnergySyntaxError, ParameterError, UnsetParameterWarning
from . import budget
from .compiler import compile_parsed, with_second_order
from .emit import RESERVED
from .ir import EnergySpec, ParamDecl
from .load import load_class, unload_class
from .parse import BUILT_IN_NAMES, PARTICLE_NAMES, parse_formula

CACHE_SIZE = 256
_cache: "OrderedDict[tuple, type]" = OrderedDict()
_lock = threading.Lock()


def rank_of(name, value) -> int:
    """0 for a scalar value, 1 for a vector, 2 for a matrix."""
    if isinstance(value, bool):
        raise TypeError(f"parameter {name} must be a number or a tensor, not bool")
    if isinstance(value, (int, float)):
        return 0
    if isinstance(value, torch.Tensor):
        return value.dim()
    if isinstance(value, (list, tuple)) or hasattr(value, "__array__"):
        try:
            return torch.as_tensor(value, dtype=torch.float64).dim()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ParameterError(f"parameter {name} cannot be made a tensor: {exc}") from None
    raise TypeError(f"parameter {name} must be a number or a tensor, not "
                    f"{type(value).__name__}")


_building: dict = {}          # key -> the lock held while that formula compiles


def compile_class(formula: str, ranks: dict, name: str | None = None,
                  particles: int | None = None):
    """The energy class for a formula and parameter ranks (cached, thread-safe).

    Each formula compiles under a lock of its own: a cache hit never waits for
    another formula's compile, and two threads asking for the same formula
    compile it once.
    """
    key = (formula, tuple(sorted(ranks.items())), name, particles)
    with _lock:
        cls = _cache.get(key)
        if cls is not None:
            _cache.move_to_end(key)
            return cls
        building = _building.setdefault(key, threading.Lock())
    with building:
        with _lock:
            cls = _cache.get(key)
        if cls is not None:
            return cls
        try:
            cls = _compile(formula, ranks, name, particles)
        except BaseException:
            with _lock:
                _building.pop(key, None)
            raise
        with _lock:     # cached and unmarked at once: a later caller finds one or the other
            _cache[key] = cls
            _building.pop(key, None)
            while len(_cache) > CACHE_SIZE:
                unload_class(_cache.popitem(last=False)[1])
        return cls


class _DeferredSecondOrder:
    """Generates a class's Hessian-vector product and diagonal on first use.

    ``from_expression`` compiles the energy and gradient only; the first call
    of a second-order method (or ``.source``, ``.compile()``) runs the
    second-order stages, loads the complete module and moves its methods onto
    the class, so instances made before keep working.
    """

    def __init__(self, compiled, owner):
        self.compiled = compiled
        self.owner = owner      # the generated class (a subclass's call completes it too)
        self.lock = threading.Lock()

    def __call__(self):
        cls = self.owner
        with self.lock:
            if cls.__dict__.get("_second_order") is not self:
                return                      # another thread finished it
            full = with_second_order(self.compiled)
            complete = load_class(full.generated)
            for attr, value in vars(complete).items():
                if attr.startswith("_") and callable(value) and not attr.startswith("__"):
                    setattr(cls, attr, value)
            cls.structured_hessian_diagonal = complete.structured_hessian_diagonal
            cls._source = full.generated.source
            cls._companions = getattr(cls, "_companions", ()) + (complete,)
            cls._layout_generation = cls._layout_generation + 1
            cls._second_order = None
            self.compiled = None


class _CompletesOnRead:
    """``structured_hessian_diagonal`` of a deferred class: reading it generates the
    second-order code (which replaces this descriptor by the generated bool)."""

    def __get__(self, obj, cls):
        cls._second_order()
        return cls.structured_hessian_diagonal      # now the generated bool


def formula_spec(formula: str, parsed, class_name: str = "ExpressionEnergy",
                 defaults: dict | None = None, particles: int | None = None) -> EnergySpec:
    """The EnergySpec of a formula: its parameters in order of appearance, scalars
    defaulting to ``defaults[name]`` or 1.0, vectors and matrices to ``defaults`` or
    required."""
    defaults = defaults or {}

    def default(p):
        v = defaults.get(p.name)
        if isinstance(v, (list, tuple)):
            return tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in v)
        if v is not None:
            return float(v)
        return 1.0 if p.rank == 0 else None
    decls = tuple(ParamDecl(p.name, p.rank, default(p)) for p in parsed.params.values())
    return EnergySpec(class_name, formula, decls, summary=f"Energy ``{formula}``.",
                      particles=particles)


def read_components(expr) -> frozenset | None:
    """The components ``x[k]`` a formula reads, when it reads only fixed, non-negative
    indices (no ``n``); else None (it reads ``x`` as a whole or through ranges)."""
    from .symbols import N, X
    loads = [e for e in expr.atoms(sp.Indexed) if e.base == X]
    if loads and N not in expr.free_symbols and all(
            len(e.indices) == 1 and e.indices[0].is_Integer and e.indices[0] >= 0
            for e in loads):
        return frozenset(int(e.indices[0]) for e in loads)
    return None


def components_dimension(expr) -> int | None:
    """``m + 1`` for a formula that reads only the components ``x[0] .. x[m]`` (fixed,
    non-negative indices, no ``n``), else None: the smallest ``n`` it takes, and the
    one the command line samples at (a wider ``x`` adds coordinates the energy does
    not read)."""
    read = read_components(expr)
    return None if read is None else max(read) + 1


def _compile(formula, ranks, name, particles=None):
    class_name = name or "ExpressionEnergy"
    if (not isinstance(class_name, str) or not class_name.isidentifier()
            or keyword.iskeyword(class_name) or class_name in RESERVED
            or class_name.startswith("_")):
        raise EnergySyntaxError(f"name={name!r} is not usable as a class name; give an "
                                f"identifier such as 'MyEnergy'")
    with budget.guard():
        parsed = parse_formula(formula, ranks, particles=particles)
        spec = formula_spec(formula, parsed, class_name, particles=particles)
        compiled = compile_parsed(spec, parsed, second_order=False)
    cls = load_class(compiled.generated)
    cls._second_order = _DeferredSecondOrder(compiled, cls)
    cls.structured_hessian_diagonal = _CompletesOnRead()
    cls._expression = parsed.expression
    cls._rebuild = (formula, tuple(sorted(ranks.items())), name, particles)
    return cls


def _rebuild_instance(formula, ranks, name, *rest):
    """Unpickle a from_expression energy: compile its class again, then load its state.

    ``rest`` is ``(particles, state, trainable)``, or ``(state, trainable)`` in pickles
    made before ``particles=`` existed."""
    particles, state, trainable = rest if len(rest) == 3 else (None, *rest)
    cls = compile_class(formula, dict(ranks), name, particles)
    params = {attr: state[attr] for _, attr, _ in cls.param_specs}
    energy = cls(**params, trainable=trainable)
    energy.load_state_dict(state)
    return energy


def _rank_error(formula, values, ranks, name, particles):
    """A ParameterError when the formula compiles with every array-valued parameter
    taken as a scalar: then the value, not the formula, is what is wrong."""
    arrays = [k for k, r in ranks.items() if r > 0]
    if not arrays:
        return None
    try:
        compile_class(formula, {**ranks, **{k: 0 for k in arrays}}, name, particles)
    except EnergySyntaxError:
        return None
    shapes = ", ".join(f"{k} has shape {list(torch.as_tensor(values[k]).shape)}"
                       for k in arrays)
    return ParameterError(
        f"formula {formula!r} uses {', '.join(arrays)} as a scalar, but {shapes}; give a "
        f"number (or a 0-d tensor), or index the parameter in the formula (a[i], a @ x)")


def from_expression(formula, *, name: str | None = None, trainable=False, params=None,
                    compile: bool = False, strict: bool = False, particles: int | None = None,
                    **kwargs):
    """Compile a formula into an energy module with a closed-form gradient.

    Args:
        formula: the energy of one sample ``x`` (a vector of length ``n``), in
            the expression language (see docs/language.md), e.g.
            ``"sum(a*x**2 + b*sin(x))"``; or a SymPy expression built from
            ``torchebm.symbolic.x``, ``n`` and its functions.
        name: class name of the generated module (default ``ExpressionEnergy``).
        trainable: True, or the names of the parameters to register as
            ``nn.Parameter`` (the others are buffers).
        params: parameter values as a dict (for names such as ``lambda`` that
            are not valid keywords).
        compile: run the generated code through ``torch.compile`` (fused mode,
            see ``CompiledEnergy.compile``).
        strict: raise ``ParameterError`` instead of warning when a scalar
            parameter is given no value.
        particles: the dimension ``d`` of one particle, for particle systems:
            ``x`` ``[..., n]`` is then ``N = n / d`` particles, ``x[i]`` is
            particle i (a d-vector), ``x[i, c]`` its coordinate c, ``N`` their
            count and ``mean_particle`` their mean; vector functions apply per
            particle (``norm(x[i] - x[j])``, ``dot(x[i], x[j])``). A pair sum
            over particles is one level of ``N (N - 1) / 2`` pairs. See
            docs/language.md, "Particle systems".
        **kwargs: parameter values. Scalars default to 1.0, with one
            ``UnsetParameterWarning`` naming every defaulted parameter (and the
            likely intent of names such as ``sinx`` -> ``sin(x)`` or ``x1`` ->
            ``x[1]``); vectors ``[K]`` and matrices ``[K, M]`` must be given.
            (``particles`` is this function's keyword, never a parameter.)

    Returns:
        A ``CompiledEnergy`` instance: ``E(x)`` maps ``[..., n] -> [...]``,
        ``E.gradient(x)`` ``[..., n] -> [..., n]`` in closed form.

    Raises:
        EnergySyntaxError (a ValueError): the formula is outside the language,
            not one scalar per sample, or does not depend on x.
        ParameterError (a ValueError): a parameter is unknown, missing (a vector
            or matrix; any, with ``strict=True``), of the wrong rank or violates
            its constraint.
        ShapeError (a ValueError): at the first call, with ``particles=d``, an
            ``x`` whose length ``n`` is not a multiple of ``d``.

    Warns:
        UnsetParameterWarning: scalar parameters given no value (they are 1.0).
    """
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> value, not {type(params).__name__}")
    values = dict(params or {})
    for k in values:
        if not isinstance(k, str):
            raise TypeError(f"parameter names must be strings, not {k!r}")
    for k, v in kwargs.items():
        if k in values:
            raise ParameterError(f"parameter {k} is given twice (as a keyword and in params)")
        values[k] = v
    if isinstance(formula, sp.Basic):
        from .sympy_input import formula_from_sympy
        formula = formula_from_sympy(formula)
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string or a SymPy expression, not "
                        f"{type(formula).__name__}")
    ranks = {k: rank_of(k, v) for k, v in values.items()}
    try:
        cls = compile_class(formula, ranks, name, particles)
    except EnergySyntaxError as error:
        raise _rank_error(formula, values, ranks, name, particles) or error
    declared = {p[0]: p for p in cls.param_specs}
    unknown = [k for k in values if k not in declared]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(declared), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if k in BUILT_IN_NAMES + PARTICLE_NAMES:
            hint = f"; {k!r} is built into the language and takes no value"
        known = ", ".join(declared) or "none"
        raise ParameterError(f"unknown parameter {k!r} for formula {formula!r}{hint} "
                             f"(its parameters: {known})")
    args = {}
    for pname, attr, rank in cls.param_specs:
        if pname in values:
            args[attr] = values[pname]
        elif rank > 0:
            raise ParameterError(f"parameter {pname} is used as a "
                                 f"{'vector' if rank == 1 else 'matrix'}; give its value")
    unset = [pname for pname, _, _ in cls.param_specs if pname not in values]
    if unset:
        from .hints import unset_parameters_message
        message = unset_parameters_message(formula, unset, strict)
        if strict:
            raise ParameterError(message)
        warnings.warn(message, UnsetParameterWarning, stacklevel=2)
    if trainable is not True and trainable is not False:
        trainable = set(trainable)
    energy = cls(**args, trainable=trainable)
    return energy.compile() if compile else energy
