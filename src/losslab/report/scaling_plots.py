"""Plots of scaling-law fits (matplotlib, Agg): loss vs compute per model size with the compute-optimal frontier."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_scaling_fit"]


def plot_scaling_fit(fit: Any, data: Any, *, n_curves: int = 6, title: str | None = None) -> Any:
    """Figure of a scaling-law fit against its data.

    For laws over ``(params, tokens)`` (Chinchilla, Kaplan L(N, D), over-training): loss against compute
    ``C = 6 N D`` on log-log axes, points coloured by model size, the fitted law along ``n_curves`` model sizes
    (quantiles of the data's sizes), and the compute-optimal frontier ``L(N*(C), D*(C))`` when the law defines
    one. For laws over one input (e.g. ``downstream_error``): the target against that input with the fitted curve.
    For other laws over several inputs (e.g. ``kaplan_ns``), where no single input orders the fit: observed vs
    predicted target, one point per run, with the line ``y = x`` (log axes when the values span a decade or more).

    Args:
        fit: a :class:`losslab.forecast.scaling.ScalingFit`.
        data: the :class:`losslab.forecast.scaling.ScalingData` it was fitted on (or a CSV path / mapping).
        n_curves: number of model sizes drawn as fitted curves.
        title: figure title (default: law name and parameters).

    Returns:
        A matplotlib ``Figure`` (Agg canvas; save it with ``fig.savefig(path)``).
    """
    from matplotlib.figure import Figure

    from losslab.forecast.scaling._data import as_data

    d = as_data(data)
    law = fit.law
    fig = Figure(figsize=(8.0, 5.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    target = law.target
    params = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
    if set(law.inputs) == {"params", "tokens"}:
        N, D, L = d["params"], d["tokens"], d[target]
        C = 6.0 * N * D
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        sc = ax.scatter(C, L, c=np.log10(N), cmap=cmap, s=14, alpha=0.8, edgecolors="none", label="runs")
        cb = fig.colorbar(sc, ax=ax)
        cb.set_label("log10 model size N")
        c_lo, c_hi = C.min() / 3, C.max() * 30
        for q in np.linspace(0, 1, n_curves):
            n = float(np.quantile(N, q))
            cc = np.geomspace(c_lo, c_hi, 200)
            pred = fit.predict(params=np.full(cc.size, n), tokens=cc / (6 * n))
            ax.plot(cc, pred, color=cmap(float(np.asarray(sc.norm(np.log10(n))))), lw=1.2, label=f"fit at N={n:.3g}")
        cc = np.geomspace(c_lo, c_hi, 200)
        try:
            opt = fit.optimal(cc)
        except Exception:  # laws without an allocation rule: no frontier
            opt = None
        if opt is not None:
            ax.plot(cc, opt["loss"], "k--", lw=1.6, label="compute-optimal frontier")
            if "loss_interval" in opt:
                ax.fill_between(cc, *opt["loss_interval"], color="k", alpha=0.12, lw=0, label="95 % interval")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(c_lo, c_hi)
        ax.set_ylim(0.95 * min(L.min(), float(np.min(opt["loss"])) if opt is not None else L.min()), 1.25 * L.max())
        ax.set_xlabel("compute C = 6 N D (FLOP)")
        ax.set_ylabel(target)
        ax.legend(loc="upper right", fontsize=7)
    elif len(law.inputs) > 1:
        y = d[target]
        pred = fit.predict({c: d[c] for c in law.inputs})
        ax.scatter(pred, y, s=16, label="runs")
        both = np.concatenate([pred, y])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        log = both.size > 0 and lo > 0 and hi >= 10 * lo
        pad = (hi / lo) ** 0.05 if log else 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)
        lim = (lo / pad, hi * pad) if log else (lo - pad, hi + pad)
        ax.plot(lim, lim, "k--", lw=1.0, label="y = x (perfect fit)")
        if log:
            from matplotlib.ticker import LogFormatter

            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # plain numbers ("3", "20") on the ticks: short, never overlapping
                axis.set_major_formatter(LogFormatter())
                axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.4)))
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"predicted {target} ({', '.join(law.inputs)})")
        ax.set_ylabel(f"observed {target}")
        ax.legend(fontsize=8)
    else:
        x_name = law.inputs[0]
        x, y = d[x_name], d[target]
        X = {c: d[c] for c in law.inputs}
        pred = fit.predict(X)
        ax.scatter(x, y, s=16, label="data")
        order = np.argsort(x)
        ax.plot(x[order], pred[order], "r-", lw=1.4, label="fit")
        if np.all(x > 0) and np.ptp(np.log10(x)) > 1:
            ax.set_xscale("log")
        ax.set_xlabel(x_name)
        ax.set_ylabel(target)
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(title or f"{law.name}: {params}", fontsize=8)
    fig.tight_layout()
    return fig
