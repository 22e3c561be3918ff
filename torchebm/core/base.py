"""Base classes of every energy: hand-written (`BaseEnergyFunction`) and compiled.

An energy maps a batch of samples ``x: [..., n]`` to energies ``[...]``
(lower is more likely). ``gradient`` is ``dE/dx: [..., n]`` and ``score`` is
``-gradient``. A 1-D ``x`` of shape ``[n]`` is a batch of one and gives
energy ``[1]`` and gradient ``[1, n]`` (TorchEBM's convention).
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import math
import operator
import re
import threading
import warnings

import torch
from torch import nn

from ..errors import DeviceError, MemoryLimitError, ParameterError, ShapeError
from . import _runtime as _rt


def _as_batch(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [..., n], not {type(x).__name__}; "
                        f"convert it with torch.as_tensor(x, dtype=torch.float64)")
    if x.layout != torch.strided:
        raise TypeError(f"x must be a dense (strided) tensor, not {x.layout}; use x.to_dense()")
    if not (x.is_floating_point()):
        raise TypeError(f"x must be a floating-point tensor, not {x.dtype}; convert it with "
                        f"x.to(torch.get_default_dtype())")
    if x.dim() == 0:
        raise ShapeError("x is a 0-d tensor; give a sample of shape [n] or a batch "
                         "of shape [..., n]")
    return x.unsqueeze(0) if x.dim() == 1 else x


def _as_direction(x: torch.Tensor, v) -> torch.Tensor:
    """``v`` checked against the batch ``x`` (a 1-D ``v`` goes with a 1-D ``x``)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor of the shape of x, not {type(v).__name__}")
    given = tuple(v.shape)
    if v.dim() == 1 and x.dim() == 2 and x.shape[0] == 1:
        v = v.unsqueeze(0)      # a 1-D x and v: one sample
    if v.shape != x.shape:
        shown = tuple(x.shape[1:]) if given and len(given) == 1 and x.shape[0] == 1 else \
            tuple(x.shape)
        raise ShapeError(f"v has shape {given} but x has shape {shown}; the direction "
                         f"of a Hessian-vector product has the shape of x")
    if v.device != x.device:
        raise DeviceError(f"v is on {v.device} but x is on {x.device}")
    if not v.is_floating_point() or v.dtype != x.dtype:
        v = v.to(x.dtype)
    return v


def _batch_weights(weights, x: torch.Tensor) -> torch.Tensor:
    """``weights`` for ``x: [..., n]`` as a tensor of shape ``[...]`` in x's dtype
    (ones when None; a number is the same weight for every sample).

    Raises:
        ShapeError: weights whose shape is not x's batch shape.
    """
    batch = x.shape[:-1]
    if weights is None:
        return x.new_ones(batch)
    weights = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    if weights.dim() == 0:                   # one number: the same weight for every sample
        return weights.expand(batch)
    if weights.shape != batch:
        raise ShapeError(f"weights of shape {tuple(weights.shape)} for x of shape "
                         f"{tuple(x.shape)}: give one weight per sample, shape "
                         f"{tuple(batch)}")
    return weights


def _check_device_available(device) -> None:
    """Raise DeviceError if ``device`` (a torch.device or None) cannot hold a tensor here."""
    if device is None or device.type in ("cpu", "meta"):
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceError(f"device {str(device)!r} is not available on this machine ({first}); "
                          f"keep the energy on 'cpu', or check torch.cuda.is_available() "
                          f"before moving it") from None


def _grad(output, x, grad_output=None, **kwargs):
    """``torch.autograd.grad`` of ``output`` for ``x``, zeros where it does not depend on x."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(output, x, grad_output, allow_unused=True, **kwargs)
    return torch.zeros_like(x) if g is None else g


def _transform_level(values) -> bool:
    """True if a tensor among ``values`` belongs to a running torch.func transform.

    Tensors made inside ``torch.func.hessian`` (even ``arange``) are wrapped for
    that transform's level; cached and reused after it, they fail ("escaped?").
    """
    return _in_transform(*values)


_Tensor = torch.Tensor
_IS_WRAPPED = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
if _IS_WRAPPED is None:            # a torch without torch.func: nothing is ever wrapped
    def _IS_WRAPPED(t):
        return False


def _in_transform(*tensors) -> bool:
    """True when a tensor is traced by torch.func (grad, jacrev, jvp, vmap, hessian): then
    derivatives keep their graph whatever ``create_graph`` says, because torch.func
    respects an inner ``no_grad`` and would differentiate a detached result to zero."""
    if torch.compiler.is_compiling():   # Dynamo cannot trace _IS_WRAPPED
        return False
    for t in tensors:                # a loop, not any(generator): this runs every call
        if isinstance(t, _Tensor) and _IS_WRAPPED(t):
            return True
    return False


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a, b) -> bool:
    """``a`` and ``b`` hold the same bits: unlike ``torch.equal``, -0.0 differs from 0.0
    (``atan2``, ``1/t`` tell them apart) and a NaN equals itself."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_floating_point() and a.element_size() in _BITS:
        bits = _BITS[a.element_size()]
        return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    return torch.equal(a, b)


def _same_content(view, t, saved) -> bool:
    """``t`` holds the bits ``saved``: bytes read through the NumPy ``view`` of a CPU
    scalar, else a tensor copy compared by :func:`_same_bits`."""
    return view.tobytes() == saved if view is not None else _same_bits(t, saved)


_NO_CONTEXT = contextlib.nullcontext()
_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled   # no_grad without a context object per call
_is_compiling = torch.compiler.is_compiling


def _maybe_no_grad(create_graph):
    return _NO_CONTEXT if create_graph else torch.no_grad()


class _Site:
    """What a call with ``x`` of one ``(n, dtype, is_cpu)`` needs besides ``x``.

    Built by the checked path (:meth:`CompiledEnergy._inputs_checked`) once every
    check has passed. The fast path uses it while ``x`` is dense and on
    ``x_device`` and every parameter is still the one it saw: ``params`` holds
    ``(table, attr, tensor, data_ptr, shape)`` per parameter (``table`` is the
    module's ``_buffers`` or ``_parameters``; ``shape`` is None for scalars), and a
    call checks ``table.get(attr) is tensor``, its ``data_ptr()`` and (for arrays)
    its shape; ``device`` is the first parameter's. ``storages`` keeps the storages
    seen alive, so that no new tensor can be allocated at a recorded address: a
    ``.data = ...`` assignment always changes ``data_ptr()``.

    ``derived`` is ``(saved, values)``: the derived ``values`` (cast to this dtype
    and device) and the parameters' content when they were computed, one entry
    per parameter: the bytes of a CPU scalar (read through ``views``, NumPy views
    of the parameters' storage: a tenth of a microsecond, several times less than
    ``item()``) or a tensor copy (compared bit for bit). One tuple, replaced whole,
    so that a reader never pairs new content with old values.
    """

    __slots__ = ("lay", "width", "guard", "x_device", "params", "storages", "views", "first",
                 "device", "derive", "generation", "derived")

    def __init__(self, lay, n, x_device, params, derive, generation):
        self.lay = lay
        self.width = lay["width"]
        self.guard = self.width > n          # the memory guard depends on the batch: per call
        self.x_device = x_device
        self.params = params
        self.storages = [t.untyped_storage() for _, _, t, _, _ in params]
        self.views = tuple(_scalar_view(t) for _, _, t, _, _ in params)
        self.first = params[0][2] if params else None
        self.device = self.first.device if params else None
        self.derive = derive                 # the class has a _derive (fixed per generation)
        self.generation = generation
        self.derived = None


def _scalar_view(t):
    """A NumPy view of a CPU scalar tensor's storage (its bytes in 0.1 us), else None."""
    if t.dim() or not t.is_cpu or t.is_conj() or t.is_neg():
        return None
    try:
        return t.detach().numpy()
    except (RuntimeError, TypeError):
        return None


_STRIDED = torch.strided
_getitem = dict.__getitem__
_requires_grad = operator.attrgetter("requires_grad")


def _one_sample_is_a_batch(module, args):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 1:
        return (args[0].unsqueeze(0),) + tuple(args[1:])
    return None


class BaseEnergyFunction(nn.Module, metaclass=abc.ABCMeta):
    """An energy function ``E(x)``; subclasses implement :meth:`forward`.

    ``gradient`` and ``energy_and_gradient`` default to autograd through
    ``forward``, so a hand-written or neural-network energy works as is;
    compiled energies override them with closed forms.

    Example:
        >>> class MyCustomEnergy(BaseEnergyFunction):
        ...     def forward(self, x):
        ...         return 0.5 * (x**2).sum(-1)
        >>> MyCustomEnergy().gradient(torch.ones(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    def __init__(self):
        super().__init__()
        if type(self).forward is not CompiledEnergy.forward:
            # a hand-written forward sees a 1-D sample as a batch of one, like compiled ones
            self.register_forward_pre_hook(_one_sample_is_a_batch)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of ``x: [..., n]`` -> ``[...]``."""

    def gradient(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``dE/dx`` of ``x: [..., n]`` -> ``[..., n]`` by autograd.

        With ``create_graph=False`` (the default) the result is detached, as in
        TorchEBM; ``create_graph=True`` keeps the graph for second derivatives.
        """
        return self.energy_and_gradient(x, create_graph=create_graph)[1]

    def energy_and_gradient(self, x: torch.Tensor, create_graph: bool = False):
        """``(E(x) [...], dE/dx [..., n])`` from one forward and one backward pass."""
        x = _as_batch(x)
        with torch.enable_grad():
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            energy = self(xg)
            grad = _grad(energy.sum(), xg, create_graph=create_graph)
        if not create_graph:
            return energy.detach(), grad.detach()
        return energy, grad

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The score ``-dE/dx`` of ``x: [..., n]`` -> ``[..., n]``."""
        return -self.gradient(x)

    def to(self, *args, **kwargs):
        """``nn.Module.to``, refusing a device this machine does not have.

        ``nn.Module.to`` touches only the module's tensors, so an energy without
        parameters would accept ``.to("cuda")`` on a CPU-only machine and fail
        later, at the first sample; this fails at once.

        Raises:
            DeviceError (a RuntimeError): the device is not available here.
        """
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        _check_device_available(device)
        return super().to(*args, **kwargs)

    def cuda(self, device=None):
        """``nn.Module.cuda``, refusing when CUDA is not available (see :meth:`to`)."""
        _check_device_available(torch.device("cuda") if device is None else
                                torch.device("cuda", device) if isinstance(device, int)
                                else torch.device(device))
        return super().cuda(device)

    def _trainable_parameters(self) -> dict:
        """``dict(named_parameters())``, refusing an energy that has none."""
        params = dict(self.named_parameters())
        if not params:
            raise ParameterError(
                f"{type(self).__name__} has no trainable parameters; build it with "
                f"trainable=True (or a list of names) to differentiate in its parameters")
        return params

    def parameter_gradient(self, x: torch.Tensor) -> dict:
        """Per-sample ``dE/dtheta`` of ``x: [..., n]`` for each trainable parameter.

        Returns ``{name: [..., *theta.shape]}`` in ``named_parameters()`` order
        (detached): entry ``b`` is the gradient of ``E(x[b])`` alone. Computed
        by ``torch.func.vmap`` over ``torch.func.grad`` of this module's own
        forward (for a compiled energy, of its generated closed-form energy
        code), so one vectorised pass, not one backward per sample.

        For a (weighted) sum over samples, as contrastive divergence needs,
        :meth:`parameter_gradient_sum` is cheaper; this gives the per-sample values
        (Fisher scores, per-sample clipping, variance estimates).

        Raises:
            ParameterError: an energy without trainable parameters.
        """
        from torch.func import functional_call, grad, vmap
        params = {name: p.detach() for name, p in self._trainable_parameters().items()}
        x = _as_batch(x)
        batch = x.shape[:-1]
        flat = x.detach().reshape(-1, x.shape[-1])
        buffers = dict(self.named_buffers())

        def one(p, xi):
            return functional_call(self, (p, buffers), (xi.unsqueeze(0),)).sum()

        with torch.enable_grad():
            out = vmap(grad(one), in_dims=(None, 0))(params, flat)
        return {name: g.reshape(batch + g.shape[1:]).detach() for name, g in out.items()}

    def parameter_gradient_sum(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
        """``sum_b weights_b dE(x_b)/dtheta`` for each trainable parameter.

        ``x: [..., n]``, ``weights: [...]`` (default: all ones) -> ``{name:
        theta.shape}`` in ``named_parameters()`` order, detached, in each parameter's
        dtype. With ``weights = 1/B`` it is the mean parameter gradient that contrastive
        divergence needs. Here: one backward pass of ``(weights * E(x)).sum()``
        (autograd); compiled energies contract the batch inside closed-form code.

        Raises:
            ParameterError: an energy without trainable parameters.
            ShapeError: ``weights`` whose shape is not ``x``'s batch shape.
        """
        params = self._trainable_parameters()
        x = _as_batch(x).detach()
        weights = _batch_weights(weights, x)
        with torch.inference_mode(False), torch.enable_grad():
            total = (self(x) * weights).sum()
            # an energy that no parameter reaches through a differentiable path (a
            # parameter only in a condition, where(x > c, ...)) has zero gradients
            grads = (torch.autograd.grad(total, list(params.values()), allow_unused=True)
                     if total.requires_grad else [None] * len(params))
        return {name: (torch.zeros_like(p) if g is None else g.detach())
                for (name, p), g in zip(params.items(), grads)}

    # -- second derivatives ---------------------------------------------------------------
    #: ``hessian`` refuses outputs of more elements than this (``batch * n * n``);
    #: raise it per call (``max_elements=``) or per instance.
    max_hessian_elements: int = 2**25

    def hessian_vector_product(self, x: torch.Tensor, v: torch.Tensor,
                               create_graph: bool = False) -> torch.Tensor:
        """``H(x) v``, the Hessian of E at ``x: [..., n]`` times ``v: [..., n]`` -> ``[..., n]``.

        Here by double backward through autograd (two passes over ``forward``);
        compiled energies override it with a closed form. Detached unless
        ``create_graph=True``.

        Raises:
            ShapeError: ``v`` whose shape differs from ``x``'s.
        """
        x = _as_batch(x)
        v = _as_direction(x, v)
        with torch.enable_grad():
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            g = _grad(self(xg).sum(), xg, create_graph=True)
            hv = _grad(g, xg, v, create_graph=create_graph)
        return hv if create_graph else hv.detach()

    def hessian(self, x: torch.Tensor, max_elements: int | None = None,
                create_graph: bool = False) -> torch.Tensor:
        """The Hessian ``d2E/dx2`` of ``x: [..., n]`` -> ``[..., n, n]`` (symmetric).

        Memory grows as ``batch * n * n``; above ``max_elements`` (default
        :attr:`max_hessian_elements`, 2**25) it raises instead of allocating.
        Prefer :meth:`hessian_vector_product`, :meth:`hessian_diagonal` or
        :meth:`laplacian` when they are what you need.

        Raises:
            MemoryLimitError: the Hessian would have more than ``max_elements``
                elements.
        """
        x = _as_batch(x)
        self._check_hessian_size(x, max_elements)
        n = x.shape[-1]
        rows = []
        for i in range(n):
            e = torch.zeros_like(x)
            e[..., i] = 1
            rows.append(self.hessian_vector_product(x, e, create_graph=create_graph))
        return torch.stack(rows, dim=-2) if rows else x.new_zeros(x.shape + (0,))

    def hessian_diagonal(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``d2E/dx_i^2`` of ``x: [..., n]`` -> ``[..., n]``.

        Here by autograd: one backward pass per dimension through the
        gradient's graph (``n`` passes). Compiled energies override it with a
        closed form.
        """
        x = _as_batch(x)
        with torch.enable_grad():
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            g = _grad(self(xg).sum(), xg, create_graph=True)
            cols = [_grad(g[..., i].sum(), xg, retain_graph=True,
                          create_graph=create_graph)[..., i] for i in range(x.shape[-1])]
        out = torch.stack(cols, dim=-1) if cols else torch.zeros_like(x)
        return out if create_graph else out.detach()

    def laplacian(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The Laplacian ``sum_i d2E/dx_i^2`` (trace of the Hessian) of ``x: [..., n]`` -> ``[...]``."""
        return self.hessian_diagonal(x, create_graph=create_graph).sum(-1)

    def gradient_and_laplacian(self, x: torch.Tensor, create_graph: bool = False):
        """``(dE/dx [..., n], laplacian [...])``, here by autograd (score matching)."""
        return (self.gradient(x, create_graph=create_graph),
                self.laplacian(x, create_graph=create_graph))

    def _check_hessian_size(self, x, max_elements, width=None):
        limit = self.max_hessian_elements if max_elements is None else max_elements
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"max_elements must be an int, not {type(limit).__name__}")
        n = x.shape[-1]
        total = math.prod(x.shape[:-1]) * n * max(n, width or 0)
        if total > limit:
            what = (f"has {total} elements" if not width or width <= n else
                    f"needs temporaries of {total} elements (batch x n x {width} points of "
                    f"the formula's largest sum)")
            raise MemoryLimitError(
                f"the Hessian of x of shape {tuple(x.shape)} {what}, more than the limit of "
                f"{limit}; pass max_elements= (or set energy.max_hessian_elements) to allow "
                f"it, use a smaller batch, or use hessian_vector_product / hessian_diagonal / "
                f"laplacian")


class CompiledEnergy(BaseEnergyFunction):
    """Base of generated energies: closed-form ``gradient``, caches, parameters.

    A generated subclass defines ``formula``, ``parameters`` and the methods
    ``_layout``, ``_energy``, ``_gradient`` and ``_energy_and_gradient`` (and
    ``_derive`` for parameter-only linear algebra). This class validates the
    input, turns a 1-D ``x`` into a batch of one, and caches what depends
    only on ``n`` (index tensors) or only on the parameters (``inverse(cov)``).
    """

    formula: str = ""
    _layout_generation: int = 0   # bumped when deferred second-order code replaces _layout
    structured_hessian_diagonal: bool = False   # generated _hessian_diagonal exists
    param_specs: tuple = ()    # (user name, attribute name, rank) per parameter
    param_constraints: dict = {}   # user name -> 'positive' | 'positive_definite' (others real)
    constants: tuple = ()
    origin: str = ""
    particles: int | None = None   # particle dimension d the code was generated for (x: N*d)
    n_particles: int | None = None   # set by built-ins whose constructor fixes the size of x
    dim: int | None = None
    _fixed_n: int | None = None

    def __init__(self):
        super().__init__()
        self._layout_cache: dict = {}
        self._sites: dict = {}     # (n, dtype, is_cpu) of x -> _Site (the fast path)
        self._fused: dict | None = None
        self._cache_lock = threading.Lock()
        self.register_load_state_dict_post_hook(CompiledEnergy._validate_after_load)

    @staticmethod
    def _validate_after_load(module, incompatible_keys):
        """A loaded state must satisfy the same constraints as the constructor's arguments."""
        for name, attr, _ in module.param_specs:
            constraint = module.param_constraints.get(name, "real")
            _check_constraint(type(module).__name__, name, getattr(module, attr), constraint)
        module._clear_caches()

    # -- size of x ------------------------------------------------------------------------
    def _set_particles(self, n_particles, dim):
        """Constructor of a particle built-in: ``n_particles`` particles of ``dim``
        coordinates, so x is ``[..., n_particles * dim]``.

        Raises:
            ParameterError: a count that is not a positive integer, or a ``dim`` other
                than the particle dimension the class was generated for.
        """
        cls = type(self).__name__
        for name, value in (("n_particles", n_particles), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} of {cls} must be a positive integer, got "
                                     f"{value!r:.40}")
        if dim != self.particles:
            raise ParameterError(
                f"{cls} is generated for particles in {self.particles}-D, got dim={dim}; for "
                f"{dim}-D particles compile its formula: torchebm.symbolic.from_expression("
                f"{cls}.formula, particles={dim}, ...)")
        self.n_particles, self.dim, self._fixed_n = n_particles, dim, n_particles * dim
        self._size_text = f"n_particles={n_particles}, dim={dim}"

    def _set_dim(self, dim):
        """Constructor of a built-in whose size is given as ``dim`` (x is ``[..., dim]``).

        Raises:
            ParameterError: a ``dim`` that is not a positive integer, or not a multiple
                of the particle dimension (for formulas over pairs of coordinates).
        """
        cls = type(self).__name__
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ParameterError(f"dim of {cls} must be a positive integer, got {dim!r:.40}")
        if self.particles and dim % self.particles:
            raise ParameterError(f"dim of {cls} must be a multiple of {self.particles} (the "
                                 f"formula reads x in groups of {self.particles}), got {dim}")
        self.dim, self._fixed_n = dim, dim
        self._size_text = f"dim={dim}"
        if self.particles:
            self.n_particles = dim // self.particles

    def _check_fixed_n(self, n):
        if self._fixed_n is not None and n != self._fixed_n:
            raise ShapeError(f"{type(self).__name__}({self._size_text}) takes x of shape [..., "
                             f"{self._fixed_n}], got [..., {n}]")

    # -- parameters -------------------------------------------------------------------
    def _set_param(self, name, attr, value, rank, constraint="real", trainable=False):
        cls = type(self).__name__
        if isinstance(value, nn.Parameter):
            tensor = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor, list,
                                                                   tuple)) and not hasattr(
                    value, "__array__"):
                raise TypeError(f"parameter {name} of {cls} must be a number or a tensor, "
                                f"not {type(value).__name__}")
            if isinstance(value, torch.Tensor) and value.is_complex():
                raise ParameterError(f"parameter {name} of {cls} is complex; energies are "
                                     f"real, give a real tensor")
            try:
                # parameters are kept in float64 and cast to x.dtype per call
                tensor = torch.as_tensor(value, dtype=torch.float64) if not isinstance(
                    value, torch.Tensor) else value.detach().clone().to(torch.float64)
            except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
                raise ParameterError(f"parameter {name} of {cls} cannot be made a tensor: "
                                     f"{exc}") from None
            if not tensor.is_floating_point():
                tensor = tensor.to(torch.float64)
        _check_rank(cls, name, tensor, rank)
        # the symmetry of a positive-definite matrix is judged at the rounding of the
        # dtype it was made in (float16 products are off by their ulps), not float64's
        made_in = (value.dtype if isinstance(value, torch.Tensor) and value.is_floating_point()
                   else tensor.dtype)
        _check_constraint(cls, name, tensor, constraint, made_in)
        if not isinstance(trainable, bool):
            unknown = set(trainable) - {p[0] for p in self.param_specs}
            if unknown:
                raise ParameterError(
                    f"trainable names {sorted(unknown)} are not parameters of {cls}; its "
                    f"parameters are {[p[0] for p in self.param_specs]}")
        wanted = trainable is True or (not isinstance(trainable, bool) and name in trainable)
        if wanted:
            self.register_parameter(attr, tensor if isinstance(tensor, nn.Parameter)
                                    else nn.Parameter(tensor))
        else:
            self.register_buffer(attr, tensor.detach() if isinstance(tensor, nn.Parameter)
                                 else tensor)

    def _check_shapes(self, declared: dict):
        """Parameters declared with the same size letter (``[n]``, ``[n, n]``) must agree."""
        seen = {}
        attrs = {name: attr for name, attr, _ in self.param_specs}
        for name, dims in declared.items():
            shape = tuple(getattr(self, attrs[name]).shape)
            for axis, letter in enumerate(dims):
                if letter.isdigit():
                    if shape[axis] != int(letter):
                        raise ParameterError(
                            f"Expected parameter {name} of {type(self).__name__} to have size "
                            f"{letter} along axis {axis}, but its shape is {shape}")
                    continue
                if letter in seen and seen[letter][1] != shape[axis]:
                    other, size = seen[letter]
                    raise ParameterError(
                        f"parameters {other} and {name} of {type(self).__name__} disagree on "
                        f"{letter}: {other} has {letter} = {size} but {name} has shape {shape}")
                seen.setdefault(letter, (name, shape[axis]))

    def _set_constant(self, attr, values):
        self.register_buffer(attr, torch.tensor(values, dtype=torch.float64), persistent=False)

    # -- caches ------------------------------------------------------------------------------
    def _arrays(self):
        return [getattr(self, attr) for _, attr, rank in self.param_specs if rank > 0]

    def _get_layout(self, x):
        n = x.shape[-1]
        if self._fixed_n is not None:
            self._check_fixed_n(n)
        key = (n, x.device, x.dtype, tuple(tuple(a.shape) for a in self._arrays()),
               self._layout_generation)
        lay = self._layout_cache.get(key)
        if lay is None and torch.compiler.is_compiling():
            return self._layout(n, x.device, x.dtype)   # traced; no lock inside a graph
        if lay is None:
            with self._cache_lock:
                lay = self._layout_cache.get(key)
                if lay is None:
                    lay = self._layout(n, x.device, x.dtype)
                    if _transform_level(lay.values()):
                        return lay     # made inside torch.func: valid only there
                    if len(self._layout_cache) > 64:
                        self._layout_cache.clear()
                    self._layout_cache[key] = lay
        return lay

    def _clear_caches(self):
        """Forget layouts, sites and derived values (a parameter was replaced or moved)."""
        self._layout_cache.clear()
        self._sites.clear()

    def _apply(self, fn, *args, **kwargs):
        # .to() / .double() / .cuda() move or cast the parameters: start the caches afresh
        out = super()._apply(fn, *args, **kwargs)
        if "_sites" in self.__dict__:
            self._clear_caches()
        return out

    def _derive_now(self, x):
        """``_derive()``'s values cast to ``x``'s dtype and device (uncached)."""
        dtype, device = x.dtype, x.device
        return {k: v.to(device=device, dtype=dtype) if isinstance(v, _Tensor) else v
                for k, v in (self._derive() or {}).items()}

    def _derived(self, site, x):
        """Parameter-only values (``inverse(S)``, ``0.5*k``) for ``x``'s dtype and device,
        cached in ``site`` by parameter content.

        The cache compares the parameters with their content when the values were
        derived, so no write goes unseen: ``E.S.data.mul_(2)`` and writes through a
        NumPy view bump no version counter, but they change the content (a
        ``.data = ...`` assignment changes ``data_ptr()``, which the fast path
        checks first). The comparison is skipped when ``_derive`` gave nothing; for
        CPU scalar parameters it reads their bytes through a NumPy view, otherwise
        it is one bitwise ``torch.equal`` per parameter, far less than the
        factorisation it saves. Bits, not values: -0.0 differs from 0.0 (``atan2``
        tells them apart) and a NaN equals itself. Never cached when the graph to a
        parameter that requires grad is wanted, or inside a ``torch.func``
        transform; never called while ``torch.compile`` traces.
        """
        tensors = [p[2] for p in site.params]
        graph = _grad_enabled() and any(map(_requires_grad, tensors))
        hit = site.derived
        if hit is not None and not graph:
            saved, values = hit
            if not values:
                return values                # nothing depends on the parameters
            try:
                if all(map(_same_content, site.views, tensors, saved)):
                    return values
            except RuntimeError:             # another device or dtype, a transform's tensor
                pass
        values = self._derive_now(x)
        if graph or _transform_level(values.values()) or _transform_level(tensors):
            return values                    # with a graph, or inside a transform
        saved = tuple(t.detach().clone() if v is None else v.tobytes()
                      for v, t in zip(site.views, tensors))
        site.derived = (saved, values)
        return values

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, all or nothing: a state that fails a
        parameter's constraint (or a strict key check) leaves the module as it was.

        Raises:
            ParameterError: a loaded value violates its parameter's constraint.
            RuntimeError: missing or unexpected keys (``strict=True``), wrong shapes.
        """
        before = {name: (t, t.detach().clone()) for name, t in
                  list(self._parameters.items()) + list(self._buffers.items()) if t is not None}
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            with torch.no_grad():
                for name, (t, saved) in before.items():
                    table = self._parameters if name in self._parameters else self._buffers
                    table[name] = t
                    if t.shape == saved.shape:
                        t.copy_(saved)
                    else:
                        t.data = saved
            self._clear_caches()
            raise

    def __setattr__(self, name, value):
        """``E.a = 3.0`` (or a list, array or tensor) sets parameter ``a``, checked
        against its rank and constraint; it stays a buffer or ``nn.Parameter``."""
        attrs = type(self).__dict__.get("_param_attrs")
        if attrs is None:
            attrs = {attr: (pname, rank) for pname, attr, rank in type(self).param_specs}
            type.__setattr__(type(self), "_param_attrs", attrs)
        if (name in attrs and not isinstance(value, nn.Parameter)
                and (name in self.__dict__.get("_buffers", ())
                     or name in self.__dict__.get("_parameters", ()))):
            self._assign_param(name, value, *attrs[name])
            return
        if name in attrs and isinstance(value, nn.Parameter):
            # a new nn.Parameter replaces the parameter: its rank and constraint are
            # checked as the constructor's (a covariance must stay positive definite)
            pname, rank = attrs[name]
            cls = type(self).__name__
            _check_rank(cls, pname, value, rank)
            _check_constraint(cls, pname, value, self.param_constraints.get(pname, "real"))
            super().__setattr__(name, value)
            self._clear_caches()
            return
        super().__setattr__(name, value)

    def _assign_param(self, attr, value, pname, rank):
        current = getattr(self, attr)
        trainable = isinstance(current, nn.Parameter)
        probe = type(self).__new__(type(self))       # validate without touching self
        nn.Module.__init__(probe)
        probe.__dict__["_param_attrs"] = {}
        CompiledEnergy._set_param(probe, pname, attr, value, rank,
                                  self.param_constraints.get(pname, "real"), trainable=False)
        new = getattr(probe, attr)
        with torch.no_grad():
            if new.shape == current.shape:
                current.copy_(new.to(device=current.device))
            else:
                table = self._parameters if trainable else self._buffers
                # a new shape: a new tensor, with the old one's dtype, device and (for a
                # parameter) requires_grad, so .float() or a freeze survives the resize
                new = new.to(device=current.device, dtype=current.dtype)
                table[attr] = (nn.Parameter(new, requires_grad=current.requires_grad)
                               if trainable else new)
                if trainable:
                    warnings.warn(
                        f"{type(self).__name__}.{attr} changed shape from "
                        f"{list(current.shape)} to {list(new.shape)}: it is a new "
                        f"nn.Parameter, so an optimiser built on the old one no longer "
                        f"trains it; build the optimiser again", UserWarning, stacklevel=3)
        self._clear_caches()

    def _check_device(self, x):
        if x.shape[-1] == 0:
            raise ShapeError(f"x has dimension n = 0 (shape {tuple(x.shape)}); an energy "
                             f"needs samples with at least one component")
        for _, attr, _ in self.param_specs:
            t = getattr(self, attr)
            if t.device != x.device:
                raise DeviceError(
                    f"x is on {x.device} but parameter {attr} of {type(self).__name__} is on "
                    f"{t.device}; move one of them, e.g. energy.to(x.device)")
            break

    # -- public API -----------------------------------------------------------------------------
    _derive = None             # generated when the formula has parameter-only linear algebra

    #: Most elements of one temporary of a sum wider than x (``batch * points``): a call
    #: whose widest sum would need more raises instead of asking the allocator for them.
    #: 2**28 elements are 2 GiB in float64. Raise it per instance if you have the memory.
    max_level_elements: int = 2**28

    def _check_level_size(self, x, width):
        batch = math.prod(x.shape[:-1])
        if batch * width > self.max_level_elements:
            raise MemoryLimitError(
                f"the widest sum of this formula has {width} terms per sample at n = "
                f"{x.shape[-1]}; with a batch of {batch} its temporaries would hold "
                f"{batch * width} elements, more than energy.max_level_elements = "
                f"{self.max_level_elements}. Use a smaller batch, or raise "
                f"energy.max_level_elements if the memory is there")

    #: Set by the compiler on classes whose second-order code is generated on first use.
    _second_order = None

    def _ensure_second_order(self):
        """Generate the Hessian-vector product, the diagonal and the parameter gradients
        now if they were deferred."""
        pending = type(self)._second_order
        if pending is not None:
            pending()

    def _inputs(self, x, second=False):
        """``(x as a batch, layout, parameter-only values)`` for the generated code.

        The fast path: one dictionary lookup on ``(n, dtype, is_cpu)`` of ``x``
        finds a :class:`_Site` that :meth:`_inputs_checked` made after every check
        passed. It serves while ``x`` is a dense tensor on the site's device, each
        parameter is the tensor the site saw (same object in the same table, same
        ``data_ptr()``, arrays of the same shape), the first keeps its device, and
        the class keeps its layout code; the memory guard (it depends on the batch)
        runs per call, and the derived values are compared by parameter content.
        Anything else (a new kind of ``x``, a replaced, moved or reshaped
        parameter, ``.data = ...``, a non-tensor, a 0-d tensor, tracing by
        ``torch.compile``) takes the checked path, which raises the errors.

        Raises:
            TypeError, ShapeError, DeviceError, MemoryLimitError: see
                :meth:`_inputs_checked`.
        """
        if second and self._second_order is not None:
            self._ensure_second_order()
        try:
            shape = x.shape
            n = shape[-1]
            cpu = x.is_cpu
            site = self._sites.get((n, x.dtype, cpu))
        except (AttributeError, IndexError, TypeError):
            return self._inputs_checked(x)
        if (site is None or site.generation != self._layout_generation
                or not isinstance(x, _Tensor) or x.layout is not _STRIDED or _is_compiling()
                or (not cpu and x.device != site.x_device)):
            return self._inputs_checked(x)
        params = site.params
        if params:
            for table, attr, t, ptr, size in params:
                if (table.get(attr) is not t or t.data_ptr() != ptr
                        or (size is not None and t.shape != size)):
                    return self._inputs_checked(x)  # replaced, moved, `.data = ...`
            if (not site.first.is_cpu) if cpu else (site.first.device != site.device):
                return self._inputs_checked(x)
        if len(shape) == 1:
            x = x.unsqueeze(0)
        if site.guard:
            self._check_level_size(x, site.width)
        if not site.derive:
            return x, site.lay, None
        hit = site.derived
        if hit is not None and not _grad_enabled():      # the common hit, inlined
            saved, values = hit
            if not values:
                return x, site.lay, values
            views = site.views
            if len(views) == 1:
                if views[0] is not None and views[0].tobytes() == saved[0]:
                    return x, site.lay, values
            else:
                for view, b in zip(views, saved):
                    if view is None or view.tobytes() != b:
                        break
                else:
                    return x, site.lay, values
        return x, site.lay, self._derived(site, x)

    def _inputs_checked(self, x):
        """:meth:`_inputs` with every check, and the :class:`_Site` that skips them next time.

        Raises:
            TypeError: x not a dense floating-point tensor.
            ShapeError: a 0-d x, n = 0, or n that the formula or parameters do not fit.
            DeviceError: x on another device than the parameters.
            MemoryLimitError: the widest sum's temporaries exceed ``max_level_elements``.
        """
        given = x
        x = _as_batch(x)
        self._check_device(x)
        lay = self._get_layout(x)            # first: it checks sizes (square matrices, ...)
        width = lay["width"]
        if width > x.shape[-1]:
            self._check_level_size(x, width)
        attrs = tuple(attr for _, attr, _ in self.param_specs)
        if not all(a in self._buffers or a in self._parameters for a in attrs):
            # a torch utility (nn.utils.parametrize, prune, weight_norm) provides the
            # parameter as a computed attribute: read it through getattr at every call
            # (the derived values follow it, and autograd reaches its original)
            self._sites.pop((given.shape[-1], given.dtype, given.is_cpu), None)
            return x, lay, None if self._derive is None else self._derive_now(x)
        tables = tuple(self._buffers if a in self._buffers else self._parameters
                       for a in attrs)
        tensors = [table[a] for table, a in zip(tables, attrs)]
        if (_is_compiling() or _transform_level(lay.values()) or _transform_level(tensors)
                or x.device.type == "meta"):
            # traced (the derived values join the graph), a layout or parameters of a
            # torch.func transform, or storage-less tensors: nothing to keep, and the
            # site of these parameters is stale (compiled calls replay while it stands)
            if not _is_compiling():
                self._sites.pop((given.shape[-1], given.dtype, given.is_cpu), None)
            return x, lay, None if self._derive is None else self._derive_now(x)
        params = tuple((table, a, t, t.data_ptr(), t.shape if t.dim() else None)
                       for table, a, t in zip(tables, attrs, tensors))
        site = _Site(lay, x.shape[-1], x.device, params, self._derive is not None,
                     self._layout_generation)
        if len(self._sites) >= 64:
            self._sites.clear()
        self._sites[given.shape[-1], given.dtype, given.is_cpu] = site
        return x, lay, None if self._derive is None else self._derived(site, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of ``x: [..., n]`` -> ``[...]`` (``[n]`` -> ``[1]``)."""
        if self._fused:
            return self._call("_energy", *self._inputs(x))
        return self._energy(*self._inputs(x))

    def parameter_gradient(self, x: torch.Tensor) -> dict:
        """Per-sample ``dE/dtheta`` of ``x: [..., n]`` for each trainable parameter,
        ``{name: [..., *theta.shape]}`` in ``named_parameters()`` order, detached, in
        each parameter's dtype.

        Closed form: the generated ``_parameter_gradient`` is the reverse sweep of the
        energy with the parameters as inputs (``symbolic.derivatives.parameter_adjoints``),
        one forward and one backward pass over the same CSE'd statements as the
        gradient. A parameter used only through a derived value (``inverse(S)``,
        ``logdet(S)``) gets the closed-form adjoint of that value, chained to the
        parameter: ``inverse(S)`` in closed form (:meth:`_chain_inverses`), others by
        autograd through ``_derive`` (parameter-only and independent of the batch: one
        batched vector-Jacobian product). After :meth:`compile` the kernel runs fused
        (one Inductor kernel). Formulas without generated parameter adjoints use
        ``torch.func`` (see ``BaseEnergyFunction``).

        Raises:
            ParameterError: an energy without trainable parameters.
        """
        self._ensure_second_order()             # generated with the second order
        if getattr(type(self), "_parameter_gradient", None) is None:
            return super().parameter_gradient(x)
        return self._closed_parameter_gradient([(x, None)])[1]

    def parameter_gradient_sum(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
        """``sum_b weights_b dE(x_b)/dtheta`` for each trainable parameter, ``x: [..., n]``,
        ``weights: [...]`` (default ones) -> ``{name: theta.shape}``, detached, in each
        parameter's dtype.

        Closed form (the generated ``_parameter_gradient_sum``): the batch is
        contracted inside the kernel, a vector parameter's adjoint as one
        ``weights @ adjoint`` product and a matrix's as one ``h^T (weights * ybar)``
        matrix product, so no per-sample ``[B, *theta.shape]`` tensor is formed.
        Parameters used through derived values are chained as in
        :meth:`parameter_gradient` (``inverse(S)`` in closed form, others by one
        autograd backward through ``_derive``, parameter-only). After :meth:`compile`
        the kernel runs fused: one Inductor kernel per call, reading ``x`` once.

        Raises:
            ParameterError: an energy without trainable parameters.
            ShapeError: ``weights`` whose shape is not ``x``'s batch shape.
        """
        self._ensure_second_order()             # generated with the second order
        if getattr(type(self), "_parameter_gradient_sum", None) is None:
            return super().parameter_gradient_sum(x, weights)
        return self._closed_parameter_gradient([(x, weights)], summed=True)[1]

    def _energy_and_parameter_gradient_sum(self, *jobs):
        """``([E(x) [...] per job], {name: sum over jobs of sum_b w_b dE(x_b)/dtheta})``
        for jobs ``(x [..., n], weights)``, one generated pass each; ``weights`` may be a
        pair ``(a, c)`` (numbers or ``[...]``): ``w = a + c * E(x)``, the weights of a
        loss quadratic in the energies (contrastive divergence with its regulariser).
        Derived values are chained to the parameters once for all jobs. Detached. Only
        for classes with a generated ``_parameter_gradient_sum``."""
        return self._closed_parameter_gradient(jobs, summed=True)

    def _energy_total_and_parameter_gradient_sum(self, *jobs):
        """``([sum_b w_b E(x_b) (0-d) per job], {name: sum over jobs of sum_b w_b
        dE(x_b)/dtheta})`` for jobs ``(x [..., n], weights)`` with fixed weights (numbers
        or ``[...]``): the weights of a loss linear in the energies. Uses the generated
        ``_parameter_gradient_total`` where the class has one (its matrix-vector
        products contracted over the batch before the matrix: one matrix product per
        job instead of two), else the batch-summed kernel and a weighted sum of its
        energies, else (a formula without generated parameter adjoints) autograd of
        ``sum_b w_b E(x_b)``. Detached.

        Raises:
            TypeError: a pair ``(a, c)`` as weights (energy-dependent weights need the
                per-sample energies: :meth:`_energy_and_parameter_gradient_sum`).
            ShapeError: weights whose shape is not the job's batch shape."""
        for _, weights in jobs:
            if isinstance(weights, tuple):
                raise TypeError("_energy_total_and_parameter_gradient_sum takes fixed weights "
                                "(a number or a tensor [...]), not a pair (a, c); use "
                                "_energy_and_parameter_gradient_sum for weights a + c*E")
        self._ensure_second_order()             # generated with the second order
        kernel = "_parameter_gradient_total"
        if getattr(type(self), "_parameter_gradient_sum", None) is None:
            params = self._trainable_parameters()
            totals, grads = [], {name: torch.zeros_like(p) for name, p in params.items()}
            for x, weights in jobs:
                x = _as_batch(x).detach()
                w = _batch_weights(weights, x)
                with torch.inference_mode(False), torch.enable_grad():
                    total = (self(x) * w).sum()
                    parts = (torch.autograd.grad(total, list(params.values()),
                                                 allow_unused=True)
                             if total.requires_grad else [None] * len(params))
                totals.append(total.detach())
                for name, g in zip(params, parts):
                    if g is not None:
                        grads[name] = grads[name] + g.detach()
            return totals, grads
        if getattr(type(self), kernel, None) is None:
            energies, grads = self._closed_parameter_gradient(jobs, summed=True)
            totals = []
            for (x, weights), e in zip(jobs, energies):
                w = _batch_weights(weights, e.unsqueeze(-1))
                totals.append((w * e).sum())
            return totals, grads
        return self._closed_parameter_gradient(jobs, summed=True, kernel=kernel)

    def _closed_parameter_gradient(self, jobs, summed=False, kernel="_parameter_gradient_sum"):
        params = self._trainable_parameters()
        attr_of = {name: attr for name, attr, _ in self.param_specs}
        # attributes a torch utility (nn.utils.parametrize, ...) computes from other
        # parameters: their adjoints are chained to those by autograd (_chain_derived)
        computed = {attr for attr in attr_of.values()
                    if attr not in self._parameters and attr not in self._buffers}
        result, chained, energies = {}, {}, []
        for x, weights in jobs:
            x = _as_batch(x).detach()
            enabled = _grad_enabled()
            _set_grad_enabled(False)
            try:
                xb, lay, der = self._inputs(x)
                if summed:
                    if not isinstance(weights, tuple):
                        weights = _batch_weights(weights, xb)
                    out = dict(self._call(kernel, xb, weights, lay, der))
                    energy = out.pop("(energy)")      # not an identifier: no parameter's
                else:
                    out = self._call("_parameter_gradient", xb, lay, der)
            finally:
                _set_grad_enabled(enabled)
            batch = xb.shape[:-1]
            for key, value in out.items():
                attr = attr_of.get(key)
                if attr in computed:         # chained to the originals below
                    attr, key = None, _COMPUTED_PREFIX + attr
                # a derived value (inverse(S)): chained to its parameters below
                into, key = (chained, key) if attr is None else (result, attr)
                if attr is None or attr in params:
                    into[key] = value if key not in into else into[key] + value
            if kernel == "_parameter_gradient_total":
                energies.append(energy)                      # the weighted total, 0-d
            elif summed:
                if energy.shape != batch:                    # an energy constant in x
                    energy = torch.as_tensor(energy, dtype=xb.dtype,
                                             device=xb.device).expand(batch)
                energies.append(energy)
        if chained:
            self._chain_derived(chained, params, result, None if summed else batch)
        final, spd = {}, self._spd_attributes()
        for name, p in params.items():
            g = result.get(name)
            if g is None:                    # the energy does not depend on it
                g = p.new_zeros(p.shape if summed else batch + p.shape)
            elif name in spd:                # read as (S + S^T) / 2: the gradient is sym(g)
                g = _rt.symmetric(g)
            final[name] = g.detach().to(p.dtype)
        return energies, final

    def _spd_attributes(self) -> frozenset:
        """Attributes of the parameters declared ``positive_definite``: the generated code
        reads them as their symmetric part (``_runtime.symmetric``). Computed once per
        class, as ``_param_attrs``."""
        cls = type(self)
        attrs = cls.__dict__.get("_spd_attrs")
        if attrs is None:
            attrs = frozenset(attr for name, attr, _ in cls.param_specs
                              if cls.param_constraints.get(name) == "positive_definite")
            type.__setattr__(cls, "_spd_attrs", attrs)
        return attrs

    def _chain_inverses(self, adjoints, params, result, batch):
        """Chain the adjoints of derived values ``inverse(S)`` of a matrix parameter ``S``
        to ``S`` in closed form (:func:`_runtime.inverse_vjp`: autograd's values through
        ``_derive`` without recording a graph, which for a small matrix costs far more
        than the two matrix products), adding to ``result``; return the other adjoints
        (for autograd)."""
        names = {name: attr for name, attr, rank in self.param_specs if rank == 2}
        rest = {}
        for key, adj in adjoints.items():
            match = _INVERSE_KEY.match(key)
            s = params.get(names.get(match.group(1))) if match else None
            if s is None:
                rest[key] = _rt.outer_sum(adj) if isinstance(adj, tuple) else adj
                continue
            attr = names[match.group(1)]
            with torch.no_grad():
                # a positive-definite S is inverted as its symmetric part (_derive)
                spd = attr in self._spd_attributes()
                m = _rt.symmetric(s.detach()) if spd else s.detach()
                route = self._inverse_route(attr, m, spd)
                if isinstance(adj, tuple):      # per sample: rank-one factors
                    g = _rt.inverse_vjp_outer(m, adj, route, spd)
                else:
                    a = adj.reshape((() if batch is None else tuple(batch)) + s.shape)
                    g = _rt.inverse_vjp(m, a, route, spd)
            result[attr] = g if attr not in result else result[attr].to(g.dtype) + g
        return rest

    def _inverse_route(self, attr, s, spd):
        """:func:`_runtime.inverse_route` of the matrix parameter ``attr`` (value ``s``;
        ``spd``: declared positive definite),
        kept with a copy of ``s`` and reused while ``s`` keeps that value (compared by
        content, as the derived values are): a loss differentiated again at the same
        parameters factors the matrix once, not at every call."""
        if _rt._batched(s):
            return None             # inside a torch.func transform: no cache
        cache = self.__dict__.setdefault("_inverse_routes", {})
        hit = cache.get(attr)
        if (hit is not None and hit[0].dtype == s.dtype and hit[0].device == s.device
                and hit[0].shape == s.shape and torch.equal(hit[0], s)):
            return hit[1]
        route = _rt.inverse_route(s, spd)
        cache[attr] = (s.clone(), route)
        return route

    def _chain_derived(self, adjoints, params, result, batch):
        """Add ``sum_k adjoint_k . d derived_k / d theta`` to ``result`` for every
        trainable ``theta``: autograd through ``_derive`` (parameter-only, so its graph
        is small and independent of the batch). ``batch``: per-sample adjoints
        ``[*batch, *shape]`` (a batched vector-Jacobian product), or None (summed)."""
        if batch is not None and math.prod(batch) == 0:
            return                  # no sample: the caller fills zeros of [*batch, *shape]
        adjoints = self._chain_inverses(adjoints, params, result, batch)
        if not adjoints:
            return
        # every parameter, frozen ones too (requires_grad=False), is differentiated,
        # in any grad mode (inference_mode included): it is switched on here only
        frozen = [p for p in params.values() if not p.requires_grad]
        with torch.inference_mode(False), torch.enable_grad():
            for p in frozen:
                p.requires_grad_(True)
            try:
                derived = dict(self._derive() or {}) if self._derive is not None else {}
                spd = self._spd_attributes()
                for k in adjoints:
                    if k.startswith(_COMPUTED_PREFIX):   # a computed parameter, read directly
                        attr = k[len(_COMPUTED_PREFIX):]
                        value = getattr(self, attr)
                        derived[k] = _rt.symmetric(value) if attr in spd else value
                keys = [k for k in adjoints if isinstance(derived.get(k), torch.Tensor)
                        and derived[k].requires_grad]
                if not keys:
                    return
                outs = [derived[k] for k in keys]
                names = list(params)
                # per-sample adjoints: one batched vector-Jacobian product over the batch
                shape = () if batch is None else (math.prod(batch),)
                cots = [adjoints[k].clone().to(o.dtype).reshape(shape + o.shape)
                        for k, o in zip(keys, outs)]
                grads = torch.autograd.grad(outs, [params[n] for n in names], cots,
                                            allow_unused=True,
                                            is_grads_batched=batch is not None)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
        for name, g in zip(names, grads):
            if g is None:
                continue
            if batch is not None:
                g = g.reshape(tuple(batch) + params[name].shape)
            g = g.to(params[name].dtype)
            result[name] = g if name not in result else result[name].to(g.dtype) + g

    def gradient(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Closed-form ``dE/dx`` of ``x: [..., n]`` -> ``[..., n]``.

        Detached unless ``create_graph=True``, which keeps the graph through
        ``x`` and the parameters (for score matching or training). Inside a
        ``torch.func`` transform (``jacrev(E.gradient)``, ``hessian``, ``vmap``)
        the graph is always kept, so that the transform differentiates it.
        """
        # Under no_grad there is nothing to detach (and switching grad mode off would be
        # a no-op), so only a call with grad mode on asks whether torch.func traces x
        # (inline: this runs every call; Dynamo cannot trace _IS_WRAPPED).
        if (create_graph or not _grad_enabled()
                or (isinstance(x, _Tensor) and not _is_compiling() and _IS_WRAPPED(x))):
            if self._fused:
                return self._call("_gradient", *self._inputs(x))
            return self._gradient(*self._inputs(x))
        _set_grad_enabled(False)
        try:
            if self._fused:
                return self._call("_gradient", *self._inputs(x))
            return self._gradient(*self._inputs(x))
        finally:
            _set_grad_enabled(True)

    def energy_and_gradient(self, x: torch.Tensor, create_graph: bool = False):
        """``(E(x) [...], dE/dx [..., n])`` from one pass sharing subexpressions."""
        if (create_graph or not _grad_enabled()
                or (isinstance(x, _Tensor) and not _is_compiling() and _IS_WRAPPED(x))):
            return self._call("_energy_and_gradient", *self._inputs(x))
        _set_grad_enabled(False)
        try:
            return self._call("_energy_and_gradient", *self._inputs(x))
        finally:
            _set_grad_enabled(True)

    def hessian_vector_product(self, x: torch.Tensor, v: torch.Tensor,
                               create_graph: bool = False) -> torch.Tensor:
        """Closed-form ``H(x) v`` of ``x, v: [..., n]`` -> ``[..., n]``.

        Forward mode over the closed-form gradient: a few gradients' cost,
        never ``n`` passes. Detached unless ``create_graph=True``.

        Raises:
            ShapeError: ``v`` whose shape differs from ``x``'s.
        """
        x, lay, der = self._inputs(x, second=True)
        v = _as_direction(x, v)
        with _maybe_no_grad(create_graph or _in_transform(x, v)):
            return self._call("_hessian_vector_product", x, v, lay, der)

    def hessian(self, x: torch.Tensor, max_elements: int | None = None,
                create_graph: bool = False) -> torch.Tensor:
        """Closed-form Hessian ``d2E/dx2`` of ``x: [..., n]`` -> ``[..., n, n]``.

        The Hessian-vector product run on the ``n`` unit vectors at once (one
        vectorised call). Its temporaries have ``batch * n * width`` elements,
        ``width`` the most points of any sum of the formula (``n`` for
        elementwise sums, ``n (n - 1) / 2`` for pair sums); above
        ``max_elements`` (default :attr:`max_hessian_elements`, 2**25) it raises
        instead of allocating.

        Raises:
            MemoryLimitError: the Hessian would have more than ``max_elements``
                elements.
        """
        x, lay, der = self._inputs(x, second=True)
        self._check_hessian_size(x, max_elements, lay["width"])
        n = x.shape[-1]
        eye = torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[:-1] + (n, n))
        with _maybe_no_grad(create_graph or _in_transform(x)):
            return self._call("_hessian_vector_product", x.unsqueeze(-2), eye, lay, der)

    def hessian_diagonal(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Closed-form ``d2E/dx_i^2`` of ``x: [..., n]`` -> ``[..., n]``.

        When the formula allows it (``structured_hessian_diagonal``) the
        generated ``_hessian_diagonal`` computes it in the cost of a gradient
        (``O(B n)`` for elementwise and neighbour sums, ``O(B n^2)`` for pair
        sums). Otherwise it is read off Hessian-vector products with unit
        vectors, in chunks of at most :attr:`max_hessian_elements` elements.
        """
        x, lay, der = self._inputs(x, second=True)
        with _maybe_no_grad(create_graph or _in_transform(x)):
            if self.structured_hessian_diagonal:
                return self._call("_hessian_diagonal", x, lay, der)
            return self._diagonal_from_products(x, lay, der)

    def laplacian(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Closed-form Laplacian (trace of the Hessian) of ``x: [..., n]`` -> ``[...]``."""
        return self.hessian_diagonal(x, create_graph=create_graph).sum(-1)

    def gradient_and_laplacian(self, x: torch.Tensor, create_graph: bool = False):
        """``(dE/dx [..., n], laplacian [...])`` sharing one forward pass (score matching)."""
        x, lay, der = self._inputs(x, second=True)
        with _maybe_no_grad(create_graph or _in_transform(x)):
            if self.structured_hessian_diagonal:
                grad, diag = self._call("_gradient_and_hessian_diagonal", x, lay, der)
            else:
                grad = self._call("_gradient", x, lay, der)
                diag = self._diagonal_from_products(x, lay, der)
        return grad, diag.sum(-1)

    def locate_nonfinite(self, x: torch.Tensor, method: str = "gradient", v=None):
        """Where the first NaN or inf of ``method`` on ``x: [..., n]`` comes from.

        Runs the generated method (``"energy"``, ``"gradient"``,
        ``"energy_and_gradient"``, ``"hessian_vector_product"`` with ``v: [..., n]``,
        ``"hessian_diagonal"``) one line at a time, checks every value a line assigns,
        and returns a :class:`torchebm.core._locate.NonFinite` for the first non-finite
        one: its line in :attr:`source`, the code, and the formula's terms that line
        computes (the comment over its group of lines); a non-finite ``x``, ``v`` or
        parameter is reported as such. Returns None when the method's results are
        finite (a NaN or inf in the branch of a ``where`` that is not taken is
        discarded by design, not reported). A
        debugging aid: it is slower than the method (a check after every line).

        Raises:
            ValueError: an unknown ``method``, ``v`` missing or given where it is not
                used, or ``"hessian_diagonal"`` for an energy without a closed-form one.
            TypeError, ShapeError: as the method itself for a bad ``x``.
        """
        from ._locate import locate_nonfinite
        return locate_nonfinite(self, x, method, v)

    def _diagonal_from_products(self, x, lay, der):
        n = x.shape[-1]
        batch = max(math.prod(x.shape[:-1]), 1)
        chunk = max(1, min(n, self.max_hessian_elements // (batch * max(n, lay["width"]))))
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        cols = []
        for start in range(0, n, chunk):
            rows = eye[start:start + chunk]
            hv = self._call("_hessian_vector_product", x.unsqueeze(-2),
                            rows.expand(x.shape[:-1] + rows.shape), lay, der)
            cols.append(torch.diagonal(hv[..., start:start + chunk], dim1=-2, dim2=-1))
        return torch.cat(cols, dim=-1)

    def _call(self, name, *args):
        fused = self._fused
        if not fused:
            return getattr(self, name)(*args)
        direct = self.__dict__.get("_direct")
        if direct is not None:
            out = direct.call(self, name, args)
            if out is not NotImplemented:
                return out
        fn = fused.get(name)
        return (fn or getattr(self, name))(*args)

    def compile(self, **options):
        """Fused mode: run the generated code through ``torch.compile(fullgraph=True)``.

        The generated functions are pure tensor code (layouts and parameter-only
        values are computed outside and passed in), so they compile without
        graph breaks. Each new shape or dtype compiles once (seconds); after
        that, large batches run close to the memory floor.

        Without ``options``, calls that need no autograd graph (the default
        ``create_graph=False``, or nothing requiring grad) skip TorchDynamo's
        per-call frame hook and guards: each generated function is traced once
        per input signature (shapes, strides, dtype, device of ``x`` and of the
        parameters) into an ATen graph, compiled by Inductor and called
        directly (``torchebm.core._direct``), which saves about ten eager
        operations' time per call. Calls that build a graph, run inside
        ``torch.func`` transforms or inside other compiled code use the
        ``torch.compile`` functions. The parameter kernels
        (``parameter_gradient``, ``parameter_gradient_sum``, and so contrastive
        divergence's closed-form gradient) are fused too, where generated.
        ``options`` go to ``torch.compile`` (and then every call uses it). Returns
        ``self``.
        """
        from ._direct import DirectCalls
        self._ensure_second_order()
        direct = not options or options == {"fullgraph": True}
        options.setdefault("fullgraph", True)
        names = ["_energy", "_gradient", "_energy_and_gradient", "_hessian_vector_product"]
        if self.structured_hessian_diagonal:
            names += ["_hessian_diagonal", "_gradient_and_hessian_diagonal"]
        names += [name for name in ("_parameter_gradient", "_parameter_gradient_sum",
                                    "_parameter_gradient_total")
                  if getattr(type(self), name, None) is not None]
        self._fused = {name: torch.compile(getattr(self, name), **options) for name in names}
        self._direct = DirectCalls() if direct else None
        return self

    @property
    def class_source(self) -> str:
        """The generated Python source of this energy's class, as compiled (with its
        second derivatives): its ``__init__`` defaults are the formula's (1.0 for
        scalars given no value)."""
        self._ensure_second_order()
        src = getattr(type(self), "_source", None)
        if src is None:
            import inspect
            import sys
            src = inspect.getsource(sys.modules[type(self).__module__])
        return src

    @property
    def source(self) -> str:
        """The generated Python source of this instance: :attr:`class_source` with the
        parameter defaults of ``__init__`` and of the docstring's ``Default:`` set to
        this instance's current values, so that the text, saved to a file and imported,
        builds an equal energy. (``show -p name=value`` on the command line prints the
        same.)"""
        texts = {}     # (name, attribute) -> Python literal of the value (floats round-trip)
        for name, attr, rank in self.param_specs:
            value = getattr(self, attr).detach().to("cpu", torch.float64)
            texts[name, attr] = python_literal(_as_tuples(value.tolist()) if rank
                                               else float(value))
        return _with_defaults(self.class_source, texts)

    @property
    def expression(self):
        """The energy as a SymPy expression (imports SymPy on first use)."""
        expr = getattr(type(self), "_expression", None)
        if expr is None:
            ranks = {name: rank for name, _, rank in self.param_specs}
            expr = _compiler_hook("expression")(self.formula, ranks, self.particles)
            type(self)._expression = expr
        return expr

    def latex(self) -> str:
        """The energy in LaTeX, from SymPy's printer."""
        import sympy
        return sympy.latex(self.expression)

    def extra_repr(self) -> str:
        parts = [repr(self.formula)]
        if self._fixed_n is not None:
            parts.append(self._size_text)
        for name, attr, rank in self.param_specs:
            t = getattr(self, attr)
            parts.append(f"{name}={t.item():g}" if rank == 0 else
                         f"{name}=<{'x'.join(map(str, t.shape))}>")
        return ", ".join(parts)

    def __reduce_ex__(self, protocol):
        rebuild = getattr(type(self), "_rebuild", None)
        if rebuild is None:        # a committed (importable) class pickles by reference
            return super().__reduce_ex__(protocol)
        trainable = {name for name, attr, _ in self.param_specs
                     if isinstance(getattr(self, attr), nn.Parameter)}
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        return _compiler_hook("rebuild"), (*rebuild, state, trainable)

    def __setstate__(self, state):
        state = dict(state)
        state.pop("_derived_cache", None)    # a pickle from before the per-site caches
        state["_sites"] = {}
        super().__setstate__(state)
        self._cache_lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cache_lock", None)
        state["_layout_cache"] = {}
        state["_sites"] = {}
        state["_fused"] = None
        state["_direct"] = None
        return state


#: the key of a derived value ``inverse(<matrix parameter>)`` in the generated ``_derive``
_INVERSE_KEY = re.compile(r"inverse\((\w+)\)\Z")
#: key of a direct read's adjoint of a computed (parametrized) parameter attribute, in
#: the adjoints chained by autograd; not an identifier, so no derived value's name
_COMPUTED_PREFIX = "(computed) "


def _as_tuples(v):
    return tuple(_as_tuples(e) for e in v) if isinstance(v, list) else float(v)


#: Hooks the compiler (``torchebm.symbolic``) registers when it is imported; the runtime
#: stands below the compiler and never imports it by name. ``"expression"``:
#: ``(formula, ranks) -> SymPy expression``; ``"rebuild"``: the pickle constructor of a
#: ``from_expression`` energy (it compiles the formula again).
COMPILER_HOOKS: dict = {}


def register_compiler_hook(name: str, fn) -> None:
    """Called by ``torchebm.symbolic`` at import (see :data:`COMPILER_HOOKS`)."""
    COMPILER_HOOKS[name] = fn


def _compiler_hook(name: str):
    if name not in COMPILER_HOOKS:
        # the compiler is an optional layer above: load it by name to register its hooks
        importlib.import_module("torchebm.symbolic")
    return COMPILER_HOOKS[name]


def python_literal(value) -> str:
    """A float or nested tuple of floats as Python source that imports (inf, nan too).

    The one spelling of numbers in generated source: the compiler's printing gate
    (``torchebm.symbolic.gate``) formats with it after its checks."""
    if isinstance(value, tuple):
        items = [python_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "-float('inf')"
    return repr(float(value))


def _with_defaults(src: str, texts: dict) -> str:
    """``src`` with ``def __init__(self, a=1.0, ...)`` and each parameter's ``Default:``
    in the class docstring set from ``texts`` ((name, attribute) -> literal)."""
    import ast
    if not texts:
        return src
    defaults = {attr: text for (_, attr), text in texts.items()}
    lines = src.split("\n")
    for k, line in enumerate(lines):
        if not line.startswith("    def __init__(self"):
            continue
        sig = ast.parse(line.strip() + "\n    pass").body[0].args
        required = len(sig.args) - len(sig.defaults)
        args = ["self"]
        for i, arg in enumerate(sig.args[1:], start=1):
            if arg.arg in defaults:
                args.append(f"{arg.arg}={defaults[arg.arg]}")
            elif i >= required:
                seg = ast.get_source_segment(line.strip(), sig.defaults[i - required])
                args.append(f"{arg.arg}={seg}")
            else:
                args.append(arg.arg)
        lines[k] = f"    def __init__({', '.join(args)}, *, trainable=False):"
        break
    return _docstring_defaults("\n".join(lines), {name: text for (name, _), text in texts.items()})


def _docstring_defaults(src: str, defaults: dict) -> str:
    import re
    out = []
    for line in src.split("\n"):
        m = re.match(r"^        (\S+) \(float or Tensor, [^)]*\): ", line)
        if m and m.group(1) in defaults and '"""' not in line:
            body = line[:line.rindex(" Default: ")] if " Default: " in line else line
            line = f"{body} Default: {defaults[m.group(1)]}."
        out.append(line)
    return "\n".join(out)


#: A positive-definite parameter may be off symmetric by this much of its largest entry,
#: or by ``SPD_SYMMETRY_ULPS`` machine epsilons of its dtype where that is more (a
#: float16/bfloat16 product is off by about one of its ulps, far above 1e-5).
SPD_SYMMETRY_RTOL = 1e-5
SPD_SYMMETRY_ULPS = 4


def _check_rank(cls, name, t, rank):
    """Raise ParameterError if ``t`` is not of ``rank`` (0 scalar, 1 vector, 2 matrix)."""
    if t.dim() != rank:
        kind = {0: "a scalar", 1: "a vector [K]", 2: "a matrix [K, M]"}[rank]
        raise ParameterError(f"Expected parameter {name} (Tensor of shape {tuple(t.shape)}) "
                             f"of {cls} to be {kind}")


def _check_constraint(cls, name, t, constraint, made_in=None):
    """Raise ParameterError if ``t`` violates ``constraint``; ``made_in``: the dtype the
    value was given in (default ``t.dtype``), whose rounding sets the symmetry tolerance
    of a positive-definite matrix."""
    if constraint == "real":
        return
    if constraint == "positive":
        if bool((t <= 0).any()):
            raise ParameterError(f"Expected parameter {name} of {cls} to be positive, "
                                 f"but found {t.detach().flatten()[:4].tolist()}")
        return
    if constraint in ("square", "positive_definite"):
        if t.dim() != 2 or t.shape[0] != t.shape[1]:
            raise ParameterError(
                f"Expected parameter {name} (Tensor of shape {tuple(t.shape)}) of {cls} to be a "
                f"square [n, n] matrix")
        if constraint == "positive_definite":
            td = t.detach().to(torch.float64)
            # the energy reads (S + S^T) / 2 (_runtime.symmetric): rounding-level asymmetry
            # (a float32 product, an optimiser step) is accepted, a different matrix is not
            asym, scale = float((td - td.mT).abs().max()), float(td.abs().max())
            made_in = t.dtype if made_in is None else made_in
            rtol = max(SPD_SYMMETRY_RTOL, SPD_SYMMETRY_ULPS * torch.finfo(made_in).eps
                       if made_in.is_floating_point else 0.0)
            if not asym <= rtol * scale:
                raise ParameterError(
                    f"Expected parameter {name} of {cls} to be symmetric positive definite, "
                    f"but it is not symmetric: max |S - S^T| = {asym:.3g}, "
                    f"{asym / scale if scale else float('inf'):.3g} of max |S| (at most "
                    f"{rtol:.3g} is read as rounding); pass (S + S.mT) / 2 for its "
                    f"symmetric part")
            _, info = torch.linalg.cholesky_ex(_rt.symmetric(td))
            if int(info) != 0:
                raise ParameterError(
                    f"Expected parameter {name} of {cls} to be symmetric positive definite, but "
                    f"it is singular or not positive definite (Cholesky failed at column "
                    f"{int(info)})")
        return
    raise ParameterError(f"unknown constraint {constraint!r} for parameter {name} of {cls}")
