"""Stage 6, load: generated source -> a live class, with the source kept.

The text is compiled under a unique file name registered in ``linecache``
(as SymPy's lambdify and torch.fx do), so tracebacks and ``inspect`` show
the generated lines. The source executed here is only ever the compiler's
own output: user text reaches it as ``repr`` strings and escaped docstrings.
"""

from __future__ import annotations

import itertools
import linecache
import weakref

from .ir import GeneratedSource

_counter = itertools.count()


def load_class(gen: GeneratedSource):
    """Compile and execute the module text; return the class it defines."""
    k = next(_counter)
    filename = f"<torchebm-generated:{gen.class_name}-{k}>"
    code = compile(gen.source, filename, "exec")
    linecache.cache[filename] = (len(gen.source), None, gen.source.splitlines(True), filename)
    namespace = {"__name__": f"torchebm.generated.{gen.class_name}_{k}"}
    exec(code, namespace)  # the compiler's output, not user text
    cls = namespace[gen.class_name]
    cls._source = gen.source
    weakref.finalize(cls, linecache.cache.pop, filename, None)
    return cls
