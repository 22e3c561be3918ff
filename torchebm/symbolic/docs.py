"""Docstrings and constructors of generated classes, made from the definition."""

from __future__ import annotations

import textwrap


from . import gate

_SHAPES = {0: "scalar", 1: "[K] vector", 2: "[K, M] matrix"}


def class_docstring(spec, latex: str | None = None) -> str:
    lines = [spec.summary or f"Energy ``{spec.formula}``.", ""]
    if spec.doc:
        lines += [spec.doc.strip(), ""]
    lines += ["Energy::", "", textwrap.indent(spec.formula.strip(), "    "), ""]
    if spec.params or spec.n_particles is not None or spec.dim is not None:
        lines.append("Args:")
        if spec.n_particles is not None:
            lines.append(f"    n_particles (int): number of particles N. Default: {spec.n_particles}.")
            lines.append(f"    dim (int): dimension of one particle; this class is generated for "
                         f"{spec.particles}.")
            lines.append(f"        Default: {spec.particles}.")
        elif spec.dim is not None:
            lines.append(f"    dim (int): dimension n of x. Default: {spec.dim}.")
        for p in spec.params:
            shape = p.shape or _SHAPES.get(p.rank, "")
            default = "" if p.default is None else f" Default: {p.default!r}."
            doc = p.doc or "parameter of the formula."
            constraint = "" if p.constraint == "real" else f" Must be {p.constraint.replace('_', ' ')}."
            lines.append(f"    {p.name} (float or Tensor, {shape}): {doc}{constraint}{default}")
        lines.append("    trainable (bool or collection of str): register these parameters (or")
        lines.append("        all, if True) as ``nn.Parameter`` instead of buffers.")
        lines.append("")
    lines += ["Shapes:",
              "    x: ``[..., n]`` -> energy ``[...]``, gradient ``[..., n]``; a 1-D ``x`` of",
              "    shape ``[n]`` is a batch of one (energy ``[1]``).", ""]
    if spec.particles:
        lines[-1:-1] = [f"    x holds N particles of {spec.particles} coordinates, particle i "
                        f"at x[..., {spec.particles}*i:{spec.particles}*i + {spec.particles}]",
                        f"    (``x.view(..., N, {spec.particles})``); n = N * {spec.particles}."]
    lines += ["Raises:",
              "    ParameterError (a ValueError): a parameter of the wrong shape or value.",
              "    ShapeError (a ValueError): x whose dimension does not fit the formula or the",
              "        parameters.",
              "    TypeError: x that is not a floating-point tensor.", ""]
    if spec.references:
        lines.append("References:")
        lines += [f"    {r}" for r in spec.references]
        lines.append("")
    return gate.docstring("\n".join(lines).rstrip()) + "\n"


def init_method(spec, em) -> str:
    required = [p for p in spec.params if p.default is None]
    optional = [p for p in spec.params if p.default is not None]
    args = ["self"] + [gate.identifier(em.params[p.name]) for p in required]
    body = ["super().__init__()"]
    if spec.n_particles is not None:
        args += [f"n_particles={gate.integer(spec.n_particles, 'n_particles')}",
                 f"dim={gate.integer(spec.particles, 'particles')}"]
        body.append("self._set_particles(n_particles, dim)")
    elif spec.dim is not None:
        args.append(f"dim={gate.integer(spec.dim, 'dim')}")
        body.append("self._set_dim(dim)")
    args += [f"{gate.identifier(em.params[p.name])}="
             f"{gate.literal(p.default, f'the default of parameter {p.name}')}" for p in optional]
    args += ["*", "trainable=False"]
    for p in spec.params:
        local = gate.identifier(em.params[p.name])
        body.append(f"self._set_param({gate.string(p.name)}, {gate.string(local)}, {local}, "
                    f"rank={gate.integer(p.rank)}, constraint={gate.string(p.constraint)}, "
                    f"trainable=trainable)")
    shapes = {p.name: tuple(d.strip() for d in p.shape.strip("[]").split(","))
              for p in spec.params if p.rank > 0 and p.shape}
    if len(shapes) > 1:
        body.append(f"self._check_shapes({gate.string_dict(shapes)})")
    for key, value in em.parsed.constants.items():
        body.append(f"self._set_constant({gate.string(em.params[key])}, "
                    f"{gate.literal(tuple(value), 'a constant vector')})")
    return (f"    def __init__({', '.join(args)}):\n"
            + textwrap.indent("\n".join(body), " " * 8) + "\n")
