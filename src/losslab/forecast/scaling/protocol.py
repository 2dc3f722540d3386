"""Estimation protocol of "A Hitchhiker's Guide to Scaling Law Estimation" (Choshen, Zhang, Andreas 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from losslab._errors import ConfigError, DataError
from losslab.forecast.scaling._data import ScalingData, as_data
from losslab.forecast.scaling._fit import fit_scaling_law
from losslab.forecast.scaling._result import ScalingFit

__all__ = ["absolute_relative_error", "hitchhiker_evaluate", "select_checkpoints"]

HITCHHIKER_REF = ("Choshen, Zhang, Andreas, A Hitchhiker's Guide to Scaling Law Estimation, arXiv:2410.11840, 2024")


def _run_ids(d: ScalingData, run_column: str | None) -> np.ndarray:
    if run_column is None:
        return d["params"]
    if run_column in d.labels:
        return np.asarray(d.labels[run_column], dtype=object)
    return d[run_column]


def select_checkpoints(data: ScalingData | Mapping[str, Any] | str, *, min_tokens: float = 1e10,
                       final_only: bool = False, run_column: str | None = None) -> ScalingData:
    """Rows kept for fitting: drop checkpoints with ``tokens <= min_tokens``; optionally keep only final ones.

    The guide's code drops every checkpoint with at most 1e10 tokens (``cut_beginning = 10**10``) and finds that
    fitting intermediate checkpoints (``final_only=False``) beats fitting final losses only.

    Args:
        data: runs with a ``tokens`` column (one row per checkpoint).
        min_tokens: checkpoints at or below this many tokens are dropped (0 keeps all).
        final_only: keep only the last checkpoint (most tokens) of each run.
        run_column: column (numeric or label) that identifies a run; default: ``params``.

    Returns:
        The selected rows.

    Example:
        >>> d = ScalingData.from_columns({"N": [1e8] * 3, "D": [5e9, 2e10, 4e10], "loss": [3.5, 3.2, 3.1]})
        >>> select_checkpoints(d).n, select_checkpoints(d, final_only=True).n
        (2, 1)

    References:
        Choshen, Zhang, Andreas, A Hitchhiker's Guide to Scaling Law Estimation, arXiv:2410.11840, 2024.
    """
    d = as_data(data)
    d.require(["tokens"], positive=["tokens"])
    if not min_tokens >= 0:
        raise ConfigError(f"min_tokens={min_tokens!r} must be >= 0")
    keep = d["tokens"] > min_tokens
    if final_only:
        ids = _run_ids(d, run_column)
        last = np.zeros(d.n, dtype=bool)
        for rid in dict.fromkeys(ids.tolist()):
            rows = np.flatnonzero(ids == rid)
            last[rows[np.argmax(d["tokens"][rows])]] = True
        keep &= last
    if not keep.any():
        raise DataError(f"{d.source}: no checkpoint left after min_tokens={min_tokens:g}"
                        f"{' and final_only' if final_only else ''}; lower min_tokens")
    return d.subset(keep)


def absolute_relative_error(fit: ScalingFit, data: ScalingData | Mapping[str, Any] | str) -> float:
    """ARE = mean over rows of ``|L - L_hat| / L`` (the guide's ``mean_normalized_distance``)."""
    d = as_data(data)
    d.require([*fit.law.inputs, fit.law.target], law=fit.law.name)
    y = d[fit.law.target]
    return float(np.mean(np.abs(y - fit.predict({c: d[c] for c in fit.law.inputs})) / np.abs(y)))


def hitchhiker_evaluate(data: ScalingData | Mapping[str, Any] | str, law: str = "chinchilla", *,
                        target_params: float | None = None, min_tokens: float = 1e10, final_only: bool = False,
                        last_fraction: float = 0.3, max_train_params: float | None = None,
                        run_column: str | None = None, **fit_kw: Any) -> dict[str, Any]:
    """Fit a law on smaller models and score it by ARE on the target model's last ``last_fraction`` of training.

    Protocol (the guide's code): the target is the largest model (or ``target_params``); its checkpoints with
    ``tokens >= (1 - last_fraction) * its final tokens`` are the test set (``test_percentage = 0.7``). The fit uses
    the other models (optionally only those with ``params <= max_train_params``), after :func:`select_checkpoints`.

    Returns:
        ``{"are", "fit", "n_train", "n_test", "target_params"}``.

    Example:
        >>> N = np.repeat([1e8, 3e8, 1e9, 3e9], 8); D = np.tile(np.geomspace(2e10, 2e11, 8), 4)
        >>> out = hitchhiker_evaluate({"N": N, "D": D, "loss": 1.8 + 480 / N**0.35 + 2100 / D**0.37},
        ...                           starts="coarse", quiet=True)
        >>> out["n_test"], out["are"] < 1e-3
        (2, True)

    References:
        Choshen, Zhang, Andreas, A Hitchhiker's Guide to Scaling Law Estimation, arXiv:2410.11840, 2024.
    """
    d = as_data(data)
    d.require(["params", "tokens"], positive=["params", "tokens"])
    if not 0 < last_fraction <= 1:
        raise ConfigError(f"last_fraction={last_fraction!r} must be in (0, 1]")
    target = float(np.max(d["params"])) if target_params is None else float(target_params)
    is_target = d["params"] == target
    if not is_target.any():
        raise DataError(f"{d.source}: no run with params == {target:g}; target_params must be one of the sizes")
    t_tok = d["tokens"][is_target]
    test = d.subset(is_target & (d["tokens"] >= (1 - last_fraction) * t_tok.max()))
    train_mask = ~is_target
    if max_train_params is not None:
        train_mask &= d["params"] <= max_train_params
    if not train_mask.any():
        raise DataError(f"{d.source}: no training runs besides the target model")
    train = select_checkpoints(d.subset(train_mask), min_tokens=min_tokens, final_only=final_only,
                               run_column=run_column)
    fit = fit_scaling_law(train, law, **fit_kw)
    return {"are": absolute_relative_error(fit, test), "fit": fit, "n_train": train.n, "n_test": test.n,
            "target_params": target}
