"""Generated functions compiled by Inductor and called without TorchDynamo's per-call work.

``torch.compile`` runs a compiled function through a Python frame hook, guard
checks and AOTAutograd's runtime wrappers on every call: about ten eager
operations of overhead, as much as a 1 MB elementwise kernel on a CPU. The
generated functions of a ``CompiledEnergy`` are pure tensor code whose only
inputs are ``x`` (and ``v``), the layout, the parameter-only values and the
module's parameters and buffers, so they can be traced once per input
signature (shapes, strides, dtypes, device) with ``make_fx`` into an ATen graph,
compiled with ``torch._inductor.compile``, and the compiled graph called
directly: the signature, checked here by a dictionary lookup, plays the role
of the guards. Parameters and buffers are graph inputs (read at each call, so
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


def compile_graph(fn, example):
    """``fn`` (pure tensor code of positional tensors) traced with ``make_fx`` on the
    tensors ``example`` (under no_grad) and compiled by Inductor: a callable taking
    tensors of the same shapes, strides, dtypes and devices; None if either step fails
    (the caller's ``torch.compile`` path then runs, and reports any error)."""
    import torch._inductor
    from torch.fx.experimental.proxy_tensor import make_fx
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)     # torch-internal deprecations
            graph = make_fx(fn)(*example)
            return torch._inductor.compile(graph, list(example))
    except Exception:        # noqa: BLE001 - reported by the torch.compile path
        return None


class DirectCalls:
    """Per-energy cache of directly called Inductor graphs, one per (method, signature).

    :meth:`call` returns ``NotImplemented`` when the direct path does not apply
    (gradients needed, a torch.func transform, a tensor subclass, an unhashable
    layout value, or a graph that failed to trace or compile); the caller then
    runs its ``torch.compile`` function.
    """

    def __init__(self):
        self._graphs: dict = {}
        self._lock = threading.Lock()

    def call(self, module, name, args):
        x = args[0]
        if type(x) is not torch.Tensor or torch.compiler.is_compiling():
            return NotImplemented
        names, states = state(module)
        if torch.is_grad_enabled() and (any(s.requires_grad for s in states) or any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return NotImplemented
        wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
        if wrapped is not None and wrapped(x):
            return NotImplemented
        leaves, spec = tree_flatten(args)
        method = getattr(type(module), name)
        try:
            key = (method, names, signature(states), spec, signature(leaves))
            entry = self._graphs.get(key)
        except TypeError:           # an unhashable Python value in the layout
            return NotImplemented
        if entry is None:
            with self._lock:
                entry = self._graphs.get(key)
                if entry is None:
                    entry = self._build(module, method, names, states, leaves, spec)
                    if len(self._graphs) >= MAX_SIGNATURES:
                        self._graphs.pop(next(iter(self._graphs)))
                    self._graphs[key] = entry
        if entry is False:
            return NotImplemented
        compiled, positions = entry
        return compiled(*states, *[leaves[i] for i in positions])

    @staticmethod
    def _build(module, method, names, states, leaves, spec):
        """``(compiled graph, positions of the tensor leaves)``, or False if it fails."""
        return compile_over_leaves(
            states, leaves, spec,
            lambda tensors, tree: method(Bound(module, dict(zip(names, tensors))), *tree))

    def clear(self):
        self._graphs.clear()

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
