"""Pictures of 2-D energies and of samples (matplotlib, an optional extra: ``pip install
torchebm[plot]``).

Every function draws into a given ``matplotlib.axes.Axes`` (or a new figure)
and returns the axes, so pictures compose.
"""

from __future__ import annotations

import itertools

import torch

from .errors import ShapeError


def _plt():
    try:
        import matplotlib
        if matplotlib.get_backend().lower() not in ("agg",) and not _interactive():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:   # pragma: no cover - depends on the installation
        raise ImportError("torchebm.plotting needs matplotlib: pip install 'torchebm[plot]'") \
            from None
    return plt


def _interactive():
    import sys
    return hasattr(sys, "ps1")


def energy_grid(energy, xlim=(-3, 3), ylim=(-3, 3), resolution=200):
    """The energy on a grid: ``(X [r, r], Y [r, r], E [r, r])`` as float64 tensors.

    The points are given to the energy in the dtype and on the device of its first
    floating-point parameter or buffer (a float32 network gets float32 points), float64
    on the CPU for an energy without any.

    Raises:
        ShapeError: the energy does not take 2-D points (it fixes another n).
    """
    xs = torch.linspace(*xlim, resolution, dtype=torch.float64)
    ys = torch.linspace(*ylim, resolution, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    if isinstance(energy, torch.nn.Module):
        ref = next((t for t in itertools.chain(energy.parameters(), energy.buffers())
                    if t.is_floating_point()), None)
        if ref is not None:
            pts = pts.to(dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        try:
            e = energy(pts).detach().cpu().to(torch.float64)
        except ShapeError as exc:
            raise ShapeError(
                f"the landscape plots draw 2-D energies only (x: [..., 2]), and this energy "
                f"does not take n = 2: {exc}. To look at a higher-dimensional energy, plot a "
                f"2-D slice: a formula with the other coordinates fixed, or samples' "
                f"histograms") from exc
    return gx, gy, e.reshape(resolution, resolution)


def _limits(samples, axis):
    """A window holding 99% of the samples, padded; (-3, 3) without samples."""
    if samples is None or len(samples) == 0:
        return (-3.0, 3.0)
    v = samples[:, axis].detach().cpu().to(torch.float64)
    lo, hi = float(torch.quantile(v, 0.005)), float(torch.quantile(v, 0.995))
    pad = 0.25 * max(hi - lo, 1e-3)
    return (lo - pad, hi + pad)


def plot_landscape(energy, xlim=None, ylim=None, *, density=False, samples=None,
                   ax=None, resolution=200, levels=30, title=None):
    """Contours of ``log(1 + E - min E)`` (or of ``exp(-E)``, ``density=True``) of a 2-D energy.

    Args:
        energy: an energy of 2-D samples ``[..., 2] -> [...]``.
        samples: optional points ``[m, 2]`` drawn over the contours.
        density: contour the unnormalised density ``exp(-(E - min E))``.
        xlim, ylim: the window; default: 99% of the samples, padded (or [-3, 3]).
        title: drawn above the plot, broken into lines that fit the figure's width.

    Raises:
        ShapeError (a ValueError): the energy does not take 2-D points (it fixes another
            n), or ``samples`` is not ``[m, 2]``: the picture is of 2-D energies only.
    """
    if samples is not None and (samples.dim() != 2 or samples.shape[-1] != 2):
        raise ShapeError(f"samples must be 2-D points [m, 2] to draw over a 2-D landscape, got "
                         f"shape {tuple(samples.shape)}; plot_landscape draws 2-D energies only")
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    xlim = tuple(xlim) if xlim is not None else _limits(samples, 0)
    ylim = tuple(ylim) if ylim is not None else _limits(samples, 1)
    gx, gy, e = energy_grid(energy, xlim, ylim, resolution)
    shifted = e - e[torch.isfinite(e)].min()
    # log(1 + E - min E): wells stay visible next to steep walls
    z = torch.exp(-shifted) if density else torch.log1p(shifted)
    cs = ax.contourf(gx.numpy(), gy.numpy(), z.numpy(), levels=levels,
                     cmap="viridis" if density else "viridis_r")
    ax.figure.colorbar(cs, ax=ax, label="exp(-(E - min E))" if density else "log(1 + E - min E)")
    if samples is not None:
        s = samples.detach().cpu().to(torch.float64)
        ax.scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=2, c="crimson", alpha=0.6, linewidths=0)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    if title:
        _set_wrapped_title(ax, title)
    return ax


def _set_wrapped_title(ax, title: str) -> None:
    """Set ``title`` broken into lines that fit the figure's width (a long formula would
    otherwise be clipped on both sides)."""
    import textwrap
    fig = ax.figure
    size = ax.title.get_fontsize()
    # an average glyph is ~0.6 em wide; keep a margin of one em on each side
    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * size)) - 4)
    ax.set_title(textwrap.fill(title, width=chars, break_on_hyphens=False),
                 fontsize=size if len(title) <= chars else size * 0.85)
    fig.tight_layout()


def plot_trace(trajectory, chains=(0,), dims=(0,), ax=None):
    """Trace plot of ``trajectory [chains, steps, dim]`` for some chains and dimensions."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    t = trajectory.detach().cpu().to(torch.float64)
    for c in chains:
        for d in dims:
            ax.plot(t[c, :, d].numpy(), lw=0.8, label=f"chain {c}, x[{d}]")
    ax.set_xlabel("kept step")
    ax.legend(loc="upper right", fontsize="small")
    return ax
