"""Generated functions compiled by Inductor and called without TorchDynamo's per-call work.

``torch.compile`` runs a compiled function through a Python frame hook, guard
checks and AOTAutograd's runtime wrappers on every call: about ten eager
operations of overhead, as much as a 1 MB elementwise kernel on a CPU. The
generated functions of a ``CompiledEnergy`` are pure tensor code whose only
inputs are ``x`` (and ``v``), the layout, the parameter-only values and the
module's parameters and buffers, so they can be traced once per input
signature (shapes, strides, dtypes, device) with ``make_fx`` into an ATen graph,
compiled with Inductor's ``compile_fx_inner``, and Inductor's compiled module
called directly with a list of tensors (no AOTAutograd wrapper): the signature,
checked here by a dictionary lookup, plays the role of the guards, and repeated
calls replay a recorded entry after a few identity checks (:class:`DirectCalls`,
:class:`Replay`). Parameters and buffers are graph inputs (read at each call, so
in-place changes are seen); only Python values (ints in the layout) are baked
into the graph, and they are part of the signature.

Used only without autograd (no grad mode, or nothing requires grad) and outside
torch.func transforms and other compiled code; otherwise the caller uses its
``torch.compile`` function.
"""

from __future__ import annotations

import inspect
import threading
import types
import warnings

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

#: most compiled signatures kept per energy (each holds an Inductor kernel)
MAX_SIGNATURES = 32



class Bound:
    """``self`` of a method while it is traced: the attributes in ``values`` (the
    module's parameters and buffers as traced inputs) replace the module's; methods
    defined on the module's class are bound to this object (so that they read the
    same values); every other attribute is the module's."""

    def __init__(self, module, values):
        self.__dict__["_module"] = module
        self.__dict__.update(values)

    def __getattr__(self, name):
        module = self.__dict__["_module"]
        attr = inspect.getattr_static(type(module), name, None)
        if isinstance(attr, types.FunctionType):
            return types.MethodType(attr, self)
        return getattr(module, name)


def state(module):
    """``(names, tensors)`` of the module's own parameters and buffers."""
    items = [(k, v) for k, v in list(module._parameters.items()) + list(module._buffers.items())
             if v is not None]
    return tuple(k for k, _ in items), [v for _, v in items]


def signature(leaves):
    out = []
    for v in leaves:
        if isinstance(v, torch.Tensor):
            out.append((tuple(v.shape), v.stride(), v.dtype, v.device))
        else:
            out.append(v)
    return tuple(out)


_TENSOR = object()      # marks a tensor among a graph's output leaves


class Graph:
    """An Inductor graph called directly: ``graph(*tensors)`` -> the traced function's
    output. ``call`` is Inductor's own entry point (a list of input tensors in, the
    flat tuple of output tensors out; it empties the list it is given), ``compiled``
    the ``CompiledFxGraph`` that owns it (kept alive with it); the output is rebuilt
    from ``spec`` and ``consts`` (its non-tensor leaves, ``_TENSOR`` for tensors); ``single``:
    the output is one tensor (``call(...)[0]``)."""

    __slots__ = ("compiled", "call", "spec", "consts", "single", "flat_tuple")

    def __init__(self, compiled, spec, consts):
        self.compiled = compiled
        self.call = compiled.current_callable
        self.spec = spec
        self.consts = consts
        self.single = spec.is_leaf() and consts[0] is _TENSOR
        self.flat_tuple = spec.type is tuple and all(c.is_leaf() for c in spec.children_specs)

    def __call__(self, *inputs):
        out = self.call(list(inputs))
        if self.single:
            return out[0]
        it = iter(out)
        if self.flat_tuple:
            return tuple([next(it) if c is _TENSOR else c for c in self.consts])
        return tree_unflatten([next(it) if c is _TENSOR else c for c in self.consts], self.spec)


def compile_graph(fn, example):
    """``fn`` (pure tensor code of positional tensors) traced with ``make_fx`` on the
    tensors ``example`` (under no_grad; functionalised and decomposed as
    ``torch.compile`` does before Inductor) and compiled by Inductor's
    ``compile_fx_inner``: a :class:`Graph` taking tensors of the same shapes, strides,
    dtypes and devices, called without AOTAutograd's runtime wrappers; None if a step
    fails (the caller's ``torch.compile`` path then runs, and reports any error)."""
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx
    outputs = []

    def flat(*inputs):
        leaves, spec = tree_flatten(fn(*inputs))
        outputs[:] = [spec, [_TENSOR if isinstance(v, torch.Tensor) else v for v in leaves]]
        return tuple(v for v in leaves if isinstance(v, torch.Tensor))

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)     # torch-internal deprecations
            graph = make_fx(torch.func.functionalize(flat, remove="mutations"),
                            decomposition_table=select_decomp_table())(*example)
            return Graph(compile_fx_inner(graph, list(example)), *outputs)
    except Exception:        # noqa: BLE001 - reported by the torch.compile path
        return None


_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


class _Fast:
    """One compiled call replayed with a handful of Python operations: valid while the
    energy's fast-path :class:`~torchebm.core.base._Site` (the parameters it checked: same
    objects, storage, shape and device) and the ``lay`` and ``der`` objects are the ones
    it was made with. ``before`` (the module's parameters and buffers) and ``after`` (the
    tensors of ``lay`` and ``der``) are the graph's other inputs, around the call's own
    tensors (``x``, and ``v`` for Hessian-vector products)."""

    __slots__ = ("site", "lay", "der", "before", "after", "call", "graph")

    def __init__(self, site, lay, der, before, after, graph):
        self.site, self.lay, self.der = site, lay, der
        self.before, self.after = before, after
        self.graph = graph
        self.call = graph.call if graph.single else None


class DirectCalls:
    """Per-energy cache of directly called Inductor graphs, one per (method, signature).

    :meth:`call` returns ``NotImplemented`` when the direct path does not apply
    (gradients needed, a torch.func transform, a tensor subclass, an unhashable
    layout value, or a graph that failed to trace or compile); the caller then
    runs its ``torch.compile`` function.

    Two levels: the checked call flattens every argument and looks the graph up by
    the full signature (method, parameter and buffer names and signatures, the
    arguments' tree and signatures); it then records a :class:`_Fast` entry under
    ``(method, shape, stride, dtype and device of x (and v))``. A later call with
    such ``x`` replays it after three identity checks (the energy's site, ``lay``,
    ``der``): no flattening, no signature. A parameter written in place changes
    ``der`` (its content is compared by the runtime), a replaced or ``.data``-assigned
    one the site, so either sends the next call through the checked path, which
    refreshes the entry (and compiles only for a new signature). A tuple of Python
    numbers in ``v``'s place (the weights ``(a, c)`` of ``_parameter_gradient_sum``) is
    baked into the graph and joins the key instead of ``v``'s tensor signature.
    Inductor checks the sizes and strides of every input itself (an
    ``AssertionError`` drops the entry).
    """

    def __init__(self):
        self._graphs: dict = {}
        self._fast: dict = {}
        self._lock = threading.Lock()

    def call(self, module, name, args):
        x = args[0]
        if (type(x) is torch.Tensor and not _grad_enabled() and len(args) in (3, 4)
                and not _is_compiling()):
            v = args[1] if len(args) == 4 else None
            if type(v) is tuple:
                # Python numbers (the weights ``(a, c)`` of a summed parameter gradient) are
                # baked into the graph: the key holds them, and only x is passed
                key = ((name, x.shape, x.stride(), x.dtype, x.device, v) if all(
                    type(e) is float or type(e) is int for e in v) else None)
                v = None
            else:
                try:
                    key = (name, x.shape, x.stride(), x.dtype, x.device) if v is None else (
                        name, x.shape, x.stride(), x.dtype, x.device, type(v), v.shape,
                        v.stride(), v.dtype, v.device)
                except AttributeError:
                    key = None
            fast = self._fast.get(key)
            if (fast is not None and fast.der is args[-1] and fast.lay is args[-2]
                    and fast.site is module._sites.get((x.shape[-1], x.dtype, x.is_cpu))
                    and (_wrapped is None or not (_wrapped(x) or (v is not None and _wrapped(v))))):
                try:
                    if v is None:
                        if fast.call is not None:    # one tensor out: Inductor's call itself
                            return fast.call([*fast.before, x, *fast.after])[0]
                        return fast.graph(*fast.before, x, *fast.after)
                    return fast.graph(*fast.before, x, v, *fast.after)
                except AssertionError:        # an input of another size or stride
                    self._fast.pop(key, None)
        else:
            key = None
        return self._checked(module, name, args, key)

    def _checked(self, module, name, args, key):
        x = args[0]
        if type(x) is not torch.Tensor or _is_compiling():
            return NotImplemented
        names, states = state(module)
        if _grad_enabled() and (any(s.requires_grad for s in states) or any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return NotImplemented
        if _wrapped is not None and any(
                isinstance(a, torch.Tensor) and _wrapped(a) for a in args):
            return NotImplemented
        leaves, spec = tree_flatten(args)
        method = getattr(type(module), name)
        try:
            sig = (method, names, signature(states), spec, signature(leaves))
            entry = self._graphs.get(sig)
        except TypeError:           # an unhashable Python value in the layout
            return NotImplemented
        if entry is None:
            with self._lock:
                entry = self._graphs.get(sig)
                if entry is None:
                    entry = self._build(module, method, names, states, leaves, spec)
                    if len(self._graphs) >= MAX_SIGNATURES:
                        self._graphs.pop(next(iter(self._graphs)))
                    self._graphs[sig] = entry
        if entry is False:
            return NotImplemented
        compiled, positions = entry
        inputs = [leaves[i] for i in positions]
        if key is not None:
            self._remember(module, key, args, names, states, inputs, compiled)
        return compiled(*states, *inputs)

    def _remember(self, module, key, args, names, states, inputs, compiled):
        """Record the :class:`_Fast` entry for ``key`` when its checks cover every input:
        the energy's parameters and buffers are exactly those its site checks, and the
        call's own tensors lead the tensor arguments."""
        own = [a for a in args[:-2] if type(a) is not tuple]    # a tuple: numbers, in the key
        site = module._sites.get((args[0].shape[-1], args[0].dtype, args[0].is_cpu))
        if (site is None or not isinstance(args[-2], dict) or len(inputs) < len(own)
                or any(inputs[i] is not a for i, a in enumerate(own))
                or set(names) != {attr for _, attr, _ in module.param_specs}):
            return
        if len(self._fast) >= 4 * MAX_SIGNATURES:
            self._fast.clear()
        self._fast[key] = _Fast(site, args[-2], args[-1], list(states), inputs[len(own):],
                                compiled)

    @staticmethod
    def _build(module, method, names, states, leaves, spec):
        """``(compiled graph, positions of the tensor leaves)``, or False if it fails."""
        return compile_over_leaves(
            states, leaves, spec,
            lambda tensors, tree: method(Bound(module, dict(zip(names, tensors))), *tree))

    def clear(self):
        self._graphs.clear()
        self._fast.clear()

    def __len__(self):
        return len(self._graphs)


def compile_over_leaves(states, leaves, spec, body):
    """Compile ``body(state tensors, arguments)`` with the module's ``states`` and the
    tensor leaves of the flattened arguments (``leaves``, ``spec``) as graph inputs;
    the other leaves (Python values) are baked in. ``(compiled, positions of the tensor
    leaves)``, or False when it cannot be compiled."""
    positions = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
    count = len(states)

    def pure(*inputs):
        values = list(leaves)
        for i, t in zip(positions, inputs[count:]):
            values[i] = t
        return body(inputs[:count], tree_unflatten(values, spec))

    compiled = compile_graph(pure, [*states, *[leaves[i] for i in positions]])
    return False if compiled is None else (compiled, positions)


def quick_leaves(tree, out):
    """Append the leaves of ``tree`` (nested tuples and lists; anything else is a leaf)
    to ``out``: ``tree_flatten``'s leaves for such trees, without building a spec."""
    for v in tree:
        if type(v) is tuple or type(v) is list:
            quick_leaves(v, out)
        else:
            out.append(v)
    return out


class Replay:
    """Replays one compiled call on new arguments of the same structure with a few
    Python operations (the sampler's chunks of steps within one ``sample()`` call):
    the arguments' leaves (:func:`quick_leaves`) must number the same, the Python
    values among them must be equal and the tensors of the same dtypes and devices;
    Inductor itself checks every input's size and stride. ``tail``: the graph inputs
    after the arguments' tensors (fixed for the replay: the layout's and the derived
    values' tensors); ``before``: the module's parameters and buffers."""

    __slots__ = ("graph", "before", "count", "python", "kinds", "picks", "tail")

    def __init__(self, graph, before, arg_leaves, positions, tail):
        self.graph = graph
        self.before = list(before)
        self.count = len(arg_leaves)
        self.python = [(i, v) for i, v in enumerate(arg_leaves)
                       if not isinstance(v, torch.Tensor)]
        self.kinds = [(v.dtype, v.device) for v in arg_leaves if isinstance(v, torch.Tensor)]
        self.picks = positions
        self.tail = list(tail)

    def __call__(self, args):
        """The graph's output, or None when the arguments differ from the recorded ones."""
        leaves = quick_leaves(args, [])
        if len(leaves) != self.count:
            return None
        for i, v in self.python:
            w = leaves[i]
            if type(w) is not type(v) or w != v:
                return None
        tensors = [leaves[i] for i in self.picks]
        for t, kind in zip(tensors, self.kinds):
            if type(t) is not torch.Tensor or (t.dtype, t.device) != kind:
                return None
        try:
            return self.graph(*self.before, *tensors, *self.tail)
        except AssertionError:        # an input of another size or stride
            return None
