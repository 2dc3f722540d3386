"""Learning-rate sensitivity (Wortsman et al. 2023) and a parallel LR-sweep runner on any ``concurrent.futures`` executor."""

from __future__ import annotations

import math
import multiprocessing
import os
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from losslab._errors import ConfigError, DataError, require
from losslab._progress import progress
from losslab._provenance import provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LRSweepResult", "RayExecutor", "lr_sensitivity", "lr_sweep", "plot_lr_sweep"]

_REFERENCE = ("Wortsman et al., Small-scale proxies for large-scale Transformer training instabilities, "
              "arXiv:2309.14322, 2023")


def _check_init_loss(init_loss: Any) -> float:
    try:
        value = float(init_loss)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"init_loss must be a finite number (the loss at initialisation, ℓ0), got {init_loss!r}; "
                          f"evaluate the untrained model once and pass that loss")
    return value


def _clip(losses: np.ndarray, init_loss: float) -> np.ndarray:
    """min(ℓ, ℓ0) with non-finite runs counted as ℓ0."""
    return np.where(np.isfinite(losses), np.minimum(losses, init_loss), init_loss)


def lr_sensitivity(final_losses_by_lr: Mapping[float, float], init_loss: float) -> float:
    r"""Learning-rate sensitivity: mean excess of the clipped final loss over the best one across the LR grid.

    .. math:: \mathrm{LRsens} = \mathbb{E}_{\eta}\big[\min(\ell(\eta), \ell_0) - \ell^*\big],
              \qquad \ell^* = \min_\eta \min(\ell(\eta), \ell_0)

    where :math:`\ell(\eta)` is the final loss of the run with peak LR :math:`\eta`, :math:`\ell_0` the loss
    at initialisation, and the expectation is the plain mean over the grid given (the paper uses a log-spaced
    grid, 3e-4 to 3e-1). Runs that diverged (NaN/Inf) count as :math:`\ell_0`: "no progress".

    Args:
        final_losses_by_lr: ``{lr: final_loss}``; lr > 0; losses may be NaN/Inf.
        init_loss: :math:`\ell_0`, finite.

    Returns:
        The sensitivity, >= 0 (0 = every LR reached the best loss). A ``RuntimeWarning`` is issued when no run
        improved on :math:`\ell_0` (the value is then 0 and meaningless).

    Example:
        >>> lr_sensitivity({1e-3: 3.0, 1e-2: 2.0, 1e-1: float("nan")}, init_loss=5.0)  # mean(3,2,5) - 2
        1.3333333333333335

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities",
        arXiv:2309.14322, 2023 (§3.2).

    Notes:
        :math:`\ell^*` is taken after the clip, so a grid where every run ends above :math:`\ell_0` gives 0 rather
        than a negative number (a public re-implementation, ``mean(minimum(v, l0)) - v.min()``, goes negative
        there and propagates NaN, because ``numpy.minimum`` does).
    """
    if not isinstance(final_losses_by_lr, Mapping):
        raise ConfigError(f"final_losses_by_lr must be a mapping {{lr: final_loss}}, got "
                          f"{type(final_losses_by_lr).__name__}")
    if len(final_losses_by_lr) == 0:
        raise ConfigError("final_losses_by_lr is empty: the LR grid needs at least one learning rate")
    l0 = _check_init_loss(init_loss)
    lrs, losses = [], []
    for lr, loss in final_losses_by_lr.items():
        try:
            lr_f, loss_f = float(lr), float(loss)
        except (TypeError, ValueError) as exc:
            raise DataError(f"final_losses_by_lr must map numbers to numbers; got {lr!r}: {loss!r}") from exc
        if not math.isfinite(lr_f) or lr_f <= 0:
            raise ConfigError(f"final_losses_by_lr has a learning rate {lr!r}; learning rates must be finite and > 0")
        lrs.append(lr_f)
        losses.append(loss_f)
    clipped = _clip(np.asarray(losses, dtype=np.float64), l0)
    best = float(clipped.min())
    if best >= l0:
        warnings.warn("no run in the LR grid improved on the initial loss; LR sensitivity is 0 but meaningless "
                      "(train longer or widen the LR grid)", RuntimeWarning, stacklevel=2)
    return float(clipped.mean() - best)


@dataclass
class LRSweepResult:
    """The outcome of :func:`lr_sweep`.

    Attributes:
        lrs: the LR grid, ascending.
        final_losses: per setting, the final loss at each LR (NaN for diverged or failed runs).
        init_loss: per setting, :math:`\\ell_0`.
        sensitivity: per setting, :func:`lr_sensitivity`.
        errors: per setting, ``{lr: traceback text}`` of runs whose training function raised.
        provenance: versions, time and settings of the sweep.
    """

    lrs: np.ndarray
    final_losses: dict[str, np.ndarray]
    init_loss: dict[str, float]
    sensitivity: dict[str, float]
    errors: dict[str, dict[float, str]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def plot(self, title: str | None = None) -> Figure:
        """Final loss against LR per setting; see :func:`plot_lr_sweep`."""
        return plot_lr_sweep(self, title=title)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON-serialisable apart from NaN)."""
        return {"lrs": self.lrs.tolist(), "final_losses": {k: v.tolist() for k, v in self.final_losses.items()},
                "init_loss": dict(self.init_loss), "sensitivity": dict(self.sensitivity),
                "errors": {k: {str(lr): e for lr, e in v.items()} for k, v in self.errors.items()},
                "provenance": self.provenance}

    def summary(self) -> str:
        """One line per setting: sensitivity, best LR and best loss, failures."""
        lines = []
        for name, losses in self.final_losses.items():
            clipped = _clip(losses, self.init_loss[name])
            i = int(np.argmin(clipped))
            n_bad = int((~np.isfinite(losses) | (losses > self.init_loss[name])).sum())
            lines.append(f"{name}: LR sensitivity {self.sensitivity[name]:.4g}, best lr {self.lrs[i]:.3g} "
                         f"(loss {clipped[i]:.4g}), {n_bad}/{len(losses)} runs diverged or no better than init, "
                         f"{len(self.errors.get(name, {}))} raised")
        return "\n".join(lines)


def _call(train_fn: Callable[..., Any], lr: float, kwargs: Mapping[str, Any]) -> tuple[float, float, str]:
    """Run one training job; never raises (errors travel back as text)."""
    try:
        out = train_fn(lr, **kwargs)
        if isinstance(out, Mapping):
            return float(out["final_loss"]), float(out.get("init_loss", math.nan)), ""
        return float(out), math.nan, ""
    except Exception:
        return math.nan, math.nan, traceback.format_exc(limit=6)


def _limit_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is optional for a sweep
        pass


class RayExecutor(Executor):
    """A ``concurrent.futures.Executor`` running each call as a Ray task (``ray.remote(fn).remote(...).future()``).

    Ray ships no ``Executor``; this adapter is all :func:`lr_sweep` needs to run a sweep on a Ray cluster.
    It connects with ``ray.init(**ray_init)`` unless Ray is already initialised, and disconnects on
    ``shutdown`` only if it connected.

    Args:
        num_cpus: CPUs reserved per task (``ray.remote(num_cpus=...)``).
        num_gpus: GPUs reserved per task.
        ray_init: keyword arguments of ``ray.init`` (e.g. ``address="auto"``).

    Example:
        >>> with RayExecutor(num_cpus=1, ray_init={"num_cpus": 2}) as ex:  # doctest: +SKIP
        ...     result = lr_sweep(train, [1e-3, 1e-2], executor=ex)

    References:
        Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", arXiv:1712.05889, 2018.
    """

    def __init__(self, num_cpus: float = 1, num_gpus: float = 0, ray_init: Mapping[str, Any] | None = None) -> None:
        ray: Any = require("ray", "ray", "RayExecutor")
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(**dict(ray_init or {}))
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a Ray task and return its ``concurrent.futures.Future``."""
        task = self._ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(fn)
        return task.remote(*args, **kwargs).future()  # type: ignore[no-any-return]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Disconnect from Ray if this executor connected."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


def lr_sweep(train_fn: Callable[..., Any], lrs: Sequence[float], *,
             settings: Mapping[str, Mapping[str, Any]] | None = None,
             init_loss: float | Mapping[str, float] | None = None, executor: Executor | None = None,
             max_workers: int | None = None, quiet: bool | None = None) -> LRSweepResult:
    """Train ``train_fn`` at every LR of a grid (per setting, e.g. with and without z-loss) and measure LR sensitivity.

    Every job is ``train_fn(lr, **settings[name])`` and returns the final loss (a float), or a mapping with
    ``"final_loss"`` and optionally ``"init_loss"``. The jobs are submitted to ``executor``: by default a local
    ``ProcessPoolExecutor`` (spawn start method, ``max_workers`` processes, torch threads split among them).
    Pass any ``concurrent.futures.Executor`` to run elsewhere: a ``ThreadPoolExecutor``, :class:`RayExecutor`
    (Ray tasks) or Dask's ``distributed.Client(...).get_executor()``.
    With a process-based executor ``train_fn`` must be picklable (a module-level function) and the calling
    script needs an ``if __name__ == "__main__":`` guard.

    Args:
        train_fn: ``train_fn(lr, **kwargs) -> final_loss | {"final_loss": ..., "init_loss": ...}``. Diverged
            runs should return NaN/Inf (or any loss: runs above ℓ0 count as ℓ0). Exceptions are caught, recorded in
            :attr:`LRSweepResult.errors` and counted as diverged (with a warning).
        lrs: the LR grid (each > 0). Wortsman et al. use half-decade steps from 3e-4 to 3e-1.
        settings: ``{name: kwargs}``; default ``{"baseline": {}}``. E.g. ``{"baseline": {}, "z-loss":
            {"z_loss": 1e-4}, "qk-layernorm": {"qk_norm": True}}`` for the paper's interventions.
        init_loss: ℓ0, one number or one per setting; default: the median ``"init_loss"`` the runs returned.
        executor: where to run; the caller keeps ownership of an executor it passes (it is not shut down).
        max_workers: processes of the default executor (default: min(#jobs, #CPUs)).
        quiet: progress bar control (see :func:`losslab._progress.progress`).

    Returns:
        An :class:`LRSweepResult`; ``result.plot()`` draws loss against LR.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(2) as ex:
        ...     r = lr_sweep(lambda lr: (lr - 0.01) ** 2 if lr < 0.5 else float("nan"), [1e-3, 1e-2, 1.0],
        ...                  init_loss=1.0, executor=ex, quiet=True)
        >>> round(r.sensitivity["baseline"], 5)
        0.33336

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities",
        arXiv:2309.14322, 2023.

    Notes:
        The paper gives no code; this runner only schedules the grid and evaluates the published formula.
    """
    if not callable(train_fn):
        raise ConfigError(f"train_fn must be callable as train_fn(lr, **kwargs), got {type(train_fn).__name__}")
    try:
        grid = np.asarray(list(lrs), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"lrs must be a sequence of numbers: {exc}") from exc
    if grid.ndim != 1 or grid.size == 0:
        raise ConfigError("lrs is empty: give at least one learning rate, e.g. np.geomspace(3e-4, 3e-1, 7)")
    if not np.all(np.isfinite(grid) & (grid > 0)):
        raise ConfigError(f"lrs must all be finite and > 0, got {grid.tolist()}")
    if len(np.unique(grid)) != grid.size:
        raise ConfigError(f"lrs has duplicates: {grid.tolist()}; each learning rate must appear once")
    grid = np.sort(grid)
    settings = {"baseline": {}} if settings is None else dict(settings)
    if not settings or not all(isinstance(v, Mapping) for v in settings.values()):
        raise ConfigError("settings must be a non-empty mapping {name: kwargs dict}, e.g. {'baseline': {}}")
    if isinstance(init_loss, Mapping):
        missing = sorted(set(settings) - set(init_loss))
        if missing:
            raise ConfigError(f"init_loss has no value for settings {missing}")
        l0_given: dict[str, float] | None = {k: _check_init_loss(init_loss[k]) for k in settings}
    elif init_loss is not None:
        l0_given = dict.fromkeys(settings, _check_init_loss(init_loss))
    else:
        l0_given = None
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")

    jobs = [(name, float(lr)) for name in settings for lr in grid]
    own = executor is None
    if executor is None:
        workers = max_workers or max(1, min(len(jobs), os.cpu_count() or 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_limit_threads, initargs=(threads,))
    results: dict[tuple[str, float], tuple[float, float, str]] = {}
    try:
        futures: dict[Future[Any], tuple[str, float]] = {
            executor.submit(_call, train_fn, lr, settings[name]): (name, lr) for name, lr in jobs}
        for fut in progress(as_completed(futures), total=len(futures), desc="lr sweep", quiet=quiet):
            try:
                results[futures[fut]] = fut.result()
            except Exception as exc:  # the executor itself failed (train_fn itself never raises through _call)
                raise ConfigError(
                    f"the executor could not run train_fn ({type(exc).__name__}: {exc}); with a process or "
                    f"cluster executor train_fn and its settings must be picklable (a module-level function, "
                    f"not a lambda or a local function)") from exc
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)

    final: dict[str, np.ndarray] = {}
    l0: dict[str, float] = {}
    errors: dict[str, dict[float, str]] = {}
    for name in settings:
        rows = [results[(name, float(lr))] for lr in grid]
        final[name] = np.array([r[0] for r in rows])
        errs = {float(lr): r[2] for lr, r in zip(grid, rows) if r[2]}
        if errs:
            errors[name] = errs
            first = next(iter(errs.values())).strip().splitlines()[-1]
            warnings.warn(f"lr_sweep: {len(errs)} run(s) of setting {name!r} raised and count as diverged; "
                          f"see result.errors (last line: {first})", RuntimeWarning, stacklevel=2)
        if l0_given is not None:
            l0[name] = l0_given[name]
        else:
            reported = np.array([r[1] for r in rows])
            reported = reported[np.isfinite(reported)]
            if reported.size == 0:
                raise ConfigError(f"no init_loss for setting {name!r}: pass init_loss= or return "
                                  f"{{'final_loss': ..., 'init_loss': ...}} from train_fn")
            l0[name] = float(np.median(reported))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sens = {name: lr_sensitivity(dict(zip(grid.tolist(), final[name].tolist())), l0[name]) for name in settings}
    prov = provenance(lrs=grid.tolist(), settings={k: dict(v) for k, v in settings.items()},
                      executor=type(executor).__name__, reference=_REFERENCE)
    return LRSweepResult(lrs=grid, final_losses=final, init_loss=l0, sensitivity=sens, errors=errors,
                         provenance=prov)


def plot_lr_sweep(result: LRSweepResult, title: str | None = None) -> Figure:
    """Final loss against learning rate (log x) per setting, with ℓ0 and the LR sensitivity in the legend.

    Diverged runs (NaN/Inf or worse than ℓ0) are drawn as crosses at ℓ0, the value the sensitivity counts.

    Example:
        >>> r = LRSweepResult(np.array([1e-3, 1e-2]), {"baseline": np.array([2.0, np.nan])}, {"baseline": 3.0},
        ...                   {"baseline": 0.5})
        >>> len(plot_lr_sweep(r).axes)
        1

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities",
        arXiv:2309.14322, 2023 (Figure 1 style).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), constrained_layout=True)
    ax = fig.add_subplot()
    l0_values = set()
    any_bad = False
    for i, (name, losses) in enumerate(result.final_losses.items()):
        color = f"C{i}"
        l0 = result.init_loss[name]
        l0_values.add(l0)
        clipped = _clip(losses, l0)
        bad = ~np.isfinite(losses) | (losses > l0)
        any_bad = any_bad or bool(bad.any())
        ax.plot(result.lrs, clipped, "-", color=color, alpha=0.8,
                label=f"{name} (LR sensitivity {result.sensitivity[name]:.3g})")
        ax.plot(result.lrs[~bad], clipped[~bad], "o", color=color)
        if bad.any():
            ax.plot(result.lrs[bad], clipped[bad], "x", color=color, markersize=9, mew=2)
    for j, l0 in enumerate(sorted(l0_values)):
        ax.axhline(l0, color="0.5", ls="--", lw=1, label="loss at init ℓ0" if j == 0 else None)
    if any_bad:
        ax.plot([], [], "x", color="0.3", markersize=9, mew=2, label="diverged (counted as ℓ0)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final loss (clipped at ℓ0)")
    ax.set_title(title or "Learning-rate sensitivity")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return fig
