"""Plots of the diagnostics: Hessian spectral density, loss landscapes, interpolation barriers, sharpness.

Every function draws with matplotlib's Agg backend and returns a :class:`matplotlib.figure.Figure`; save it with
``fig.savefig("x.png", dpi=120)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from losslab._errors import DataError

__all__ = ["plot_interpolation", "plot_layerwise_barriers", "plot_loss_line", "plot_loss_plane",
           "plot_sample_size_change", "plot_sharpness", "plot_spectral_density"]


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _xy(func: str, arg: str, x: Any, y: Any, how: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float arrays of one shape with at least one finite point, or a DataError naming ``arg``."""
    try:
        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{func}: {arg} holds non-numeric values ({exc}); {how}") from exc
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise DataError(f"{func}: {arg} needs one y value per x; got shapes {xa.shape} and {ya.shape}; {how}")
    if not (np.isfinite(xa) & np.isfinite(ya)).any():
        what = "is empty" if xa.size == 0 else f"has no finite point among its {xa.size}"
        raise DataError(f"{func}: nothing to draw, {arg} {what}; {how}")
    return xa, ya


def plot_spectral_density(density: Any, *, eigenvalues: Sequence[float] | None = None, sigma: float | None = None,
                          log: bool = True, title: str = "Hessian spectral density (SLQ)") -> Any:
    """Smoothed SLQ density (log scale by default, as in Ghorbani et al.), with optional eigenvalue markers.

    Args:
        density: a :class:`losslab.diagnostics.SpectralDensity`.
        eigenvalues: values to mark with vertical lines (e.g. Lanczos top-k).
        sigma: Gaussian kernel width (default: 1 % of the node range).
        log: logarithmic density axis.
        title: axes title.

    Raises:
        DataError: the density is empty or has no finite value.
    """
    t, phi = density.density(sigma=sigma)
    t, phi = _xy("plot_spectral_density", "density.density() (nodes, values)", t, phi,
                 "pass a SpectralDensity from a finished SLQ run (finite Lanczos nodes and weights)")
    fig = _figure()
    ax = fig.add_subplot()
    floor = max(float(np.nanmax(np.where(np.isfinite(phi), phi, np.nan))) * 1e-8, 1e-300)
    ax.plot(t, np.maximum(phi, floor) if log else phi, color="C0", lw=1.5, label="density")
    if log:
        ax.set_yscale("log")
    for i, lam in enumerate(eigenvalues or []):
        ax.axvline(float(lam), color="C3", ls="--", lw=1, label="Lanczos eigenvalues" if i == 0 else None)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_loss_line(lines: Any, *, labels: Sequence[str] | None = None, log: bool = False,
                   title: str = "1-D loss landscape") -> Any:
    """One or several 1-D landscapes (:class:`losslab.diagnostics.LossLandscape` with ``betas=None``)."""
    items = list(lines) if isinstance(lines, (list, tuple)) else [lines]
    how = "pass a LossLandscape from losslab.diagnostics.loss_line with at least one finite loss"
    if not items:
        raise DataError(f"plot_loss_line: nothing to draw, `lines` is an empty sequence; {how}")
    if labels is not None and len(labels) != len(items):
        raise DataError(f"plot_loss_line: `labels` has {len(labels)} names for {len(items)} lines; give one per line")
    for i, ln in enumerate(items):
        _xy("plot_loss_line", "`lines`" if len(items) == 1 and not isinstance(lines, (list, tuple))
            else f"`lines[{i}]`", ln.alphas, ln.losses, how)
    fig = _figure()
    ax = fig.add_subplot()
    for i, ln in enumerate(items):
        ax.plot(ln.alphas, ln.losses, marker="o", ms=3, label=labels[i] if labels else None)
    if log:
        ax.set_yscale("log")
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(r"step $\alpha$ along the direction")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if labels:
        ax.legend(fontsize=8)
    return fig


def plot_loss_plane(plane: Any, *, levels: int = 30, log: bool = True, title: str = "2-D loss landscape") -> Any:
    """Filled contour plot of a 2-D landscape (log-spaced levels by default), the centre marked."""
    from matplotlib.colors import LogNorm

    how = "pass a 2-D LossLandscape (losses of shape (len(alphas), len(betas))) with at least one finite loss"
    try:
        losses = np.asarray(plane.losses, dtype=np.float64)
        alphas, betas = np.asarray(plane.alphas, dtype=np.float64), np.asarray(plane.betas, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"plot_loss_plane: `plane` holds non-numeric values ({exc}); {how}") from exc
    if losses.shape != (alphas.size, betas.size) or alphas.size < 2 or betas.size < 2:
        raise DataError(f"plot_loss_plane: `plane.losses` has shape {losses.shape} for {alphas.size} alphas and "
                        f"{betas.size} betas (at least 2 of each needed for a contour); {how}")
    z = np.where(np.isfinite(losses), losses, np.nan)
    if np.isnan(z).all():
        raise DataError(f"plot_loss_plane: nothing to draw, `plane.losses` has no finite value among its {z.size}; "
                        f"{how}")
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    flat = hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-300)
    if flat:
        warnings.warn(f"plot_loss_plane: the loss is {lo:.6g} at every point of the plane; the directions do not "
                      "change the model's output (zero directions, frozen parameters, or a model that ignores "
                      "them), so there is no landscape to see", RuntimeWarning, stacklevel=2)
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    positive = lo > 0
    if log and positive:
        lv = np.geomspace(np.nanmin(z), np.nanmax(z), levels) if np.nanmax(z) > np.nanmin(z) else levels
        cs = ax.contourf(A, B, z, levels=lv, norm=LogNorm(), cmap="viridis")
    else:
        cs = ax.contourf(A, B, z, levels=levels, cmap="viridis")
    ax.contour(A, B, z, levels=cs.levels, colors="k", linewidths=0.3)
    cbar = fig.colorbar(cs, ax=ax, label="loss")
    ticks = np.array([lo]) if flat else np.geomspace(lo, hi, 6) if (log and positive) else np.linspace(lo, hi, 6)
    cbar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    cbar.minorticks_off()
    if flat:
        ax.text(0.5, 0.92, f"flat: loss = {lo:.4g} everywhere", transform=ax.transAxes, ha="center",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.plot([0], [0], marker="*", color="red", ms=10)
    ax.set_xlabel(r"$\alpha$ (direction 1)")
    ax.set_ylabel(r"$\beta$ (direction 2)")
    ax.set_title(title)
    return fig


def plot_interpolation(interp: Any, *, title: str = "Linear interpolation between checkpoints") -> Any:
    """Loss along the path with the straight line between the end points and the barrier marked."""
    a, losses = _xy("plot_interpolation", "`interp` (alphas, losses)", interp.alphas, interp.losses,
                    "pass the result of losslab.diagnostics.linear_interpolation with at least one finite loss")
    i0, i1 = int(np.argmin(a)), int(np.argmax(a))
    t = (a - a[i0]) / (a[i1] - a[i0]) if a[i1] > a[i0] else np.zeros_like(a)
    chord = (1 - t) * losses[i0] + t * losses[i1]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(a, losses, marker="o", ms=3, label="loss")
    ax.plot(a, chord, ls="--", color="grey", label="chord")
    k = int(np.argmax(losses - chord))
    ax.annotate(f"barrier {interp.barrier:.3g}", (a[k], losses[k]), textcoords="offset points", xytext=(10, -14))
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_layerwise_barriers(barriers: Mapping[str, Any], *, title: str = "Layer-wise interpolation barriers") -> Any:
    """Bar chart of the barrier of each layer group (from :func:`losslab.diagnostics.layerwise_barriers`)."""
    names = list(barriers)
    vals = [float(barriers[n].barrier) for n in names]
    if not np.isfinite(vals).any():
        what = "is empty" if not names else f"has no finite barrier among its {len(names)} layers"
        raise DataError(f"plot_layerwise_barriers: nothing to draw, `barriers` {what}; pass the mapping returned by "
                        "losslab.diagnostics.layerwise_barriers for a model with at least one layer group")
    fig = _figure(max(4.0, 0.5 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), vals, color=["C3" if v > 0 else "C0" for v in vals])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("layer (parameters interpolated alone)")
    ax.set_ylabel("barrier")
    ax.set_title(title)
    return fig


def plot_sharpness(records: Sequence[Any], *, title: str = "Sharpness and the edge of stability") -> Any:
    """Sharpness (or Adam's preconditioned sharpness) per step with the stability threshold."""
    records = list(records)
    how = "pass SharpnessTracker.records after at least one measured step (every `every` steps)"
    if not records:
        raise DataError(f"plot_sharpness: nothing to draw, `records` is empty; {how}")
    steps = [r.step for r in records]
    adam = any(r.rule == "adam" for r in records)
    vals = [(r.preconditioned if adam else r.sharpness) for r in records]
    vals = [np.nan if v is None else v for v in vals]
    _xy("plot_sharpness", "`records` (step, " + ("preconditioned" if adam else "sharpness") + ")", steps, vals, how)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, vals, marker="o", ms=3,
            label=r"$\lambda_{\max}(P^{-1}H)$" if adam else r"$\lambda_{\max}(H)$")
    thr = [np.nan if r.threshold is None else r.threshold for r in records]
    if np.isfinite(thr).any():
        ax.plot(steps, thr, ls="--", color="C3", label="stability threshold")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_sample_size_change(result: Any, *, title: str = "Loss change when one sample is added") -> Any:
    r"""Log-log plot of :math:`\Delta_n` against :math:`n` with the fitted slope and a :math:`1/n` guide."""
    n, d = _xy("plot_sample_size_change", "`result` (n, delta)", result.n, result.delta,
               "pass the result of losslab.diagnostics.sample_size_loss_change")
    ok = np.isfinite(n) & np.isfinite(d) & (n > 0) & (d > 0)
    if not ok.any():
        raise DataError(f"plot_sample_size_change: nothing to draw on log-log axes, `result.delta` has no positive "
                        f"finite value at a positive n (got {d.size} values, max {np.nanmax(d):.3g}); the loss did "
                        "not change when a sample was added, so there is no slope to show")
    fig = _figure()
    ax = fig.add_subplot()
    ax.loglog(n[ok], d[ok], marker="o", ms=3, lw=1, label=rf"$\Delta_n$ (slope {result.slope:.2f})")
    if ok.any():
        ax.loglog(n[ok], d[ok][0] * n[ok][0] / n[ok], ls="--", color="grey", label=r"$\propto 1/n$")
    ax.set_xlabel("n (samples)")
    ax.set_ylabel(r"mean $|L_{n+1} - L_n|$")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
