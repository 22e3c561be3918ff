"""Stage 6, load: generated source -> a live class, with the source kept.

The text is compiled under a unique file name registered in ``linecache``
(as SymPy's lambdify and torch.fx do), so tracebacks and ``inspect`` show
the generated lines, and it runs as a real module in ``sys.modules`` so
that tools which import a function's module (``torch.compile``) find it.
The source executed here is only ever the compiler's own output: user text
reaches it as ``repr`` strings and escaped docstrings.
"""

from __future__ import annotations

import itertools
import linecache
import sys
import types

from .ir import GeneratedSource

_counter = itertools.count()
PACKAGE = "torchebm.generated"


def load_class(gen: GeneratedSource):
    """Compile and execute the module text; return the class it defines."""
    k = next(_counter)
    name = f"{PACKAGE}.{gen.class_name}_{k}"
    filename = f"<torchebm-generated:{gen.class_name}-{k}>"
    code = compile(gen.source, filename, "exec")
    linecache.cache[filename] = (len(gen.source), None, gen.source.splitlines(True), filename)
    module = types.ModuleType(name, f"Generated from {gen.origin}")
    module.__file__ = filename
    exec(code, module.__dict__)  # the compiler's output, not user text
    sys.modules[name] = module
    cls = getattr(module, gen.class_name)
    cls._source = gen.source
    return cls


def unload_class(cls) -> None:
    """Forget a generated class's module and source lines (when the cache evicts it)."""
    for c in (cls, *cls.__dict__.get("_companions", ())):   # deferred second-order modules
        module = sys.modules.pop(c.__module__, None)
        if module is not None:
            linecache.cache.pop(getattr(module, "__file__", ""), None)
